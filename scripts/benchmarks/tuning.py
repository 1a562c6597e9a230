#!/usr/bin/env python3
"""Local tuning throughput: trials per hour with and without the trainer's feature cache.

    .venv/bin/python scripts/bench.py tuning [--trials 4] [--image-size 224] [--per-class 24] [--epochs 5] [--space seed2]

Two local studies (scripts/launch/local_tuning.py, runner "process") of the
same random search over the sample data: a frozen ResNet50 (trainable-layers 0,
as the seeds tuned it; pretrained none: same speed as ImageNet weights, no
download), `--epochs` epochs per trial, no pruning (a pruned trial would count
as a cheap one). The second study passes `--hp feature-cache=DIR`, one
directory for all its trials: its first trial computes the backbone's
features, the others reuse them. Where the trainer has no `feature-cache`
hyperparameter yet, that column says so.

Prints, per study: trials per hour (finished trials over the study's wall
time, trainer start-up included), the time to the first finished trial and
the mean trial time; and the settings.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import container_path  # noqa: F401  (first: container/ on the import path)
import make_sample_data
from contract.spec import hyperparameters
from launch import local_tuning

ROOT = Path(__file__).resolve().parents[2]

CACHE_HP = "feature-cache"


def study(name: str, args, data: Path, workdir: Path, overrides: dict) -> dict:
    print(f"{name}: {args.trials} trials in {workdir}", flush=True)
    start = time.time()
    result = local_tuning.run_study(
        args.space,
        data,
        workdir,
        args.trials,
        sampler="random",
        parallel=args.parallel,
        fixed_overrides=overrides,
        seed=args.seed,
        pruner="none",
        log=lambda line: print(f"  {line}", flush=True),
    )
    wall = time.time() - start
    finished = [row for row in result.rows if row.state in ("COMPLETE", "PRUNED")]
    first = min((row.finished for row in finished if row.finished), default=None)
    durations = [row.duration_s for row in finished if row.duration_s]
    failed = [row for row in result.rows if row.state == "FAIL"]
    if failed:
        print(f"  {len(failed)} trial(s) failed: {failed[0].note}", flush=True)
    return {
        "trials": len(finished),
        "wall": wall,
        "per_hour": 3600 * len(finished) / wall,
        "first": None if first is None else first - start,
        "mean": sum(durations) / len(durations) if durations else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=4, help="trials per study")
    parser.add_argument("--image-size", type=int, default=224, help="pixels (224: what the seeds trained on)")
    parser.add_argument(
        "--per-class", type=int, default=24, help="training images per class of the sample set (4 classes)"
    )
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument(
        "--space", default="seed2", help="search space (default seed2: lr, eps, weight decay, batch size)"
    )
    parser.add_argument("--parallel", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workdir",
        type=Path,
        help="keep the studies here (default: a temporary folder; an existing one is resumed, not re-timed)",
    )
    args = parser.parse_args()

    overrides = {
        "backbone": "resnet50",
        "pretrained": "none",
        "trainable-layers": 0,
        "image-size": args.image_size,
        "epochs": args.epochs,
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = (args.workdir or Path(tmp)).resolve()
        data = make_sample_data.make(root / "sample-data" / "dogImages", per_class=args.per_class)
        images = sum(1 for p in data.rglob("*") if p.is_file())
        rows: dict[str, dict | None] = {"no cache": study("no cache", args, data, root / "plain", overrides)}
        if CACHE_HP in hyperparameters.BY_NAME:
            cached = {**overrides, CACHE_HP: str(root / "feature-cache")}
            rows["feature cache"] = study("feature cache", args, data, root / "cached", cached)
        else:
            print(f"feature cache not available: the trainer has no '{CACHE_HP}' hyperparameter", flush=True)
            rows["feature cache"] = None

    cores, gpus = local_tuning.cpu_count(), local_tuning.detect_gpus()
    device = f"{len(gpus)} GPU(s)" if gpus else f"CPU x{cores}"
    parallel = local_tuning.default_parallel(args.parallel, len(gpus), cores)
    print(
        f"\nLocal tuning, {args.space} random search, {args.trials} trials per study, {parallel} at a time: "
        f"frozen ResNet50, {args.image_size} px, {args.epochs} epochs per trial, sample data "
        f"({images} images, 4 classes), no pruning, {device}, load average {os.getloadavg()[0]:.1f}"
    )
    print("| | trials per hour | first trial finished after (s) | mean trial (s) | study wall time (s) |")
    print("|---|---|---|---|---|")
    for name, row in rows.items():
        if row is None:
            print(f"| {name} | feature cache not available | | | |")
            continue
        first = "" if row["first"] is None else f"{row['first']:.0f}"
        mean = "" if row["mean"] is None else f"{row['mean']:.0f}"
        print(f"| {name} | {row['per_hour']:.0f} | {first} | {mean} | {row['wall']:.0f} |")


if __name__ == "__main__":
    main()
