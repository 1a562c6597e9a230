"""How big the proof runs: the GPU setting (within 8 minutes on one GPU) and --tiny (CI on a CPU,
in well under 3 minutes on a busy 2-core machine, every code path but the GPU's own)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    name: str
    backbone: str
    image_size: int
    batch_size: int  # training
    classes: int  # of the generated data set (scripts/make_sample_data.py)
    per_class: int  # training images per class (about: generated in shards); validation and test a quarter each
    epochs: int
    num_workers: int  # the trainer's loader processes (-1: its own default, one per core up to 8)
    serve_batch: int  # SAGEMAKER_BATCH_SIZE: dynamic batching up to it
    concurrency: int  # clients of the load cell
    loadgen_processes: int  # the clients spread over this many processes (one Python's GIL is not a limit)
    cell_seconds: float
    limit_seconds: float  # each in-process limit runs about this long
    # (precision, gunicorn workers or 0 for the server's own default: one per GPU)
    serving: tuple[tuple[str, int], ...]
    budget_s: float  # servers not started once this much of the run has passed (each a failed row)
    trainer_timeout_s: float  # each of the two trainer runs


GPU = Profile(
    name="gpu",
    backbone="resnet50",
    image_size=224,
    batch_size=128,
    classes=6,
    per_class=500,
    epochs=3,
    num_workers=-1,
    serve_batch=64,
    concurrency=128,
    loadgen_processes=8,
    cell_seconds=10.0,
    limit_seconds=3.0,
    serving=(("fp16", 0), ("bf16", 0), ("bf16", 4)),
    budget_s=420.0,
    trainer_timeout_s=150.0,
)

TINY = Profile(
    name="tiny",
    backbone="resnet18",
    image_size=32,  # layer4 sees 1x1: no training batch may hold one image (45 here: 5 x 8 + 5)
    batch_size=8,
    classes=4,
    per_class=11,
    epochs=2,  # the stop is in the middle of the last: the first is whole, for the throughput
    num_workers=0,
    serve_batch=8,
    concurrency=4,
    loadgen_processes=2,
    cell_seconds=2.0,
    limit_seconds=0.3,
    serving=(("bf16", 1),),  # fp16 is GPU only: on a CPU it would prove the same fallback again
    budget_s=600.0,
    trainer_timeout_s=300.0,  # a busy 2-core CI machine
)
