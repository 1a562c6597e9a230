"""Checkpoints in /opt/ml/checkpoints, which SageMaker syncs with checkpoint_s3_uri.

Written atomically after every epoch and on SIGTERM; read back on start, so a
managed-spot job that is interrupted and restarted continues where it was:
mid-epoch too, with the rest of that epoch's batches in the same order, the
same random streams and the same optimizer step count, so its learning-rate
schedule ends where an uninterrupted job's ends. Everything in the file is
tensors and plain values: it loads with torch.load(weights_only=True).

Only what trains is saved: the head and the unfrozen stages, with their
buffers. The frozen stages are rebuilt from the pretrained weights at start,
before the restore, and a digest of them in the fingerprint makes sure they
are the ones the checkpoint was trained on. For a frozen ResNet50 with 133
classes that is about 4 MB per epoch (head weights, best weights, AdamW's two
moments) instead of 200 MB, which matters for short tuning trials.

A checkpoint this job cannot use (another job's: other classes, batch size,
...; or unreadable) is moved aside, not overwritten at the first epoch's end:
renamed to `checkpoint.pt.<why>-<UTC time>` in the same folder, with a one-line
warning naming it. Failing instead would stop every job that reuses a
checkpoint_s3_uri on purpose; overwriting loses another job's only copy. The
folder is synced to S3, so the moved file stays there too, where its owner can
find it (and delete it: it is never read again).
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import nn

from contract.artifact import atomic_torch_save
from trainer import distributed

FILE_NAME = "checkpoint.pt"
# what `save` writes and `restore` reads: a file without one of them is set aside, not half-read
SAVED_KEYS = frozenset(
    {"fingerprint", "model", "optimizer", "schedule", "scaler", "epoch", "best_loss", "best_epoch", "best_state"}
    | {"history", "global_step", "step", "partial", "rng", "skipped"}
)


def frozen_keys(model: nn.Module, frozen: list[nn.Module]) -> set[str]:
    """State-dict keys (parameters and buffers) that belong to frozen modules."""
    frozen_ids = {id(module) for module in frozen}
    keys: set[str] = set()
    for name, module in model.named_modules():
        if id(module) in frozen_ids:
            keys.update(module.state_dict(prefix=f"{name}." if name else "").keys())
    return keys


def state_digest(state: dict) -> str:
    """A digest of tensors' names, dtypes, shapes and bytes."""
    h = hashlib.sha1()
    for name, tensor in sorted(state.items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def rng_state(device: torch.device) -> dict:
    """Python's, numpy's and torch's random streams (CPU and this process's GPU) as tensors and plain values."""
    version, internal, gauss = random.getstate()
    # legacy=True (the default): the tuple form, which numpy's stub types together with the dict form
    kind, keys, pos, has_gauss, cached = cast("tuple[str, np.ndarray, int, int, float]", np.random.get_state())
    state = {
        "python": [version, torch.tensor(internal, dtype=torch.int64), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal.tolist()), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


@dataclass
class RunningTotals:
    """An epoch's sums so far, over all ranks: what its metric line needs, and what a stop part-way keeps.
    On disk a list [loss_sum, correct, seen, seconds], as checkpoints have always stored it."""

    loss_sum: float = 0.0  # the loss times the images, summed
    correct: float = 0.0
    seen: float = 0.0  # images
    seconds: float = 0.0  # training time (the slowest rank's, once the epoch is over)

    def to_list(self) -> list[float]:
        return [self.loss_sum, self.correct, self.seen, self.seconds]

    @classmethod
    def from_list(cls, values: list[float]) -> RunningTotals:
        loss_sum, correct, seen, seconds = values
        return cls(loss_sum, correct, seen, seconds)


@dataclass
class TrainingState:
    """Where the job is. At an epoch boundary the random streams need no saving: each epoch seeds its own."""

    epoch: int = 0  # last completed epoch
    best_loss: float = float("inf")
    best_epoch: int = 0  # early stopping counts the epochs since
    best_state: dict | None = None  # trainable part only, like the checkpoint
    history: list = field(default_factory=list)
    global_step: int = 0  # optimizer steps taken: TensorBoard's and the profiler's step axis
    # a stop part-way through epoch `epoch + 1`: the batches done (0: none), the
    # sums its metric line needs (all ranks) and the random streams to go on with
    step: int = 0
    partial: RunningTotals = field(default_factory=RunningTotals)
    rng: list | None = None  # rng_state() of every rank, by rank (their batches differ, so do their streams)


# Hyperparameters that change how a job runs or what it records, not what it has learnt so far: a restart
# may differ in them (more epochs, a feature cache moved, more loader workers, the debugger off) and resume.
NOT_LEARNT = frozenset(
    {
        "epochs",  # a restart with more epochs goes on from the last one: training longer is a use of resuming
        "feature_cache",
        "num_workers",
        "processes_per_host",  # the world size is in the fingerprint itself
        "collective_timeout",
        "debugger",
        "debugger_collections",
        "debugger_save_interval",
        "debugger_dir",
        "profiler",
        "profiler_interval_ms",
        "profiler_trace_steps",
    }
)


def data_digest(splits: dict[str, list[tuple[Path, int]]]) -> str:
    """A digest of each split's images as (label, file name, bytes), in a stable order: the same data
    unpacked anywhere gives the same digest, and a file added, removed, relabelled or changed in size
    another."""
    h = hashlib.sha1()
    for split, samples in sorted(splits.items()):
        h.update(split.encode())
        for name, label, size in sorted((Path(path).name, label, _size(path)) for path, label in samples):
            h.update(f"{label}/{name}/{size}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _size(path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:  # unreadable now: it will be skipped as such, and counted the same way on a restart
        return -1


class Checkpointer:
    def __init__(self, directory: Path, writer: bool):
        self.path = Path(directory) / FILE_NAME
        self.writer = writer  # only rank 0 writes

    @staticmethod
    def fingerprint(loop) -> dict:
        """What must match for a checkpoint to be this job's (and for a mid-epoch position to mean the same
        batches): the network, the frozen weights, the data, and every hyperparameter that shapes what is
        learnt. With only some of them, a second job given the same checkpoint folder (one URI for every job,
        as a copied example has it) and other data or learning rate resumed the first one's finished state
        and wrote its weights under its own settings, as a success."""
        hp = loop.hp
        return {
            "architecture": loop.arch.to_dict(),
            "class_names": loop.class_names,
            "frozen_weights": loop.frozen_digest,
            "data": loop.data_digest,
            "hyperparameters": {k: v for k, v in hp.as_dict().items() if k not in NOT_LEARNT},
            "world_size": loop.dist.world_size,
        }

    def save(self, loop, state: TrainingState) -> None:
        if not self.writer:
            return
        atomic_torch_save(
            {
                "fingerprint": self.fingerprint(loop),
                "model": loop.trainable_state(),
                "optimizer": loop.optimizer.state_dict(),
                "schedule": loop.schedule.state_dict(),
                "scaler": loop.scaler.state_dict(),
                "epoch": state.epoch,
                "best_loss": state.best_loss,
                "best_epoch": state.best_epoch,
                "best_state": state.best_state,
                "history": state.history,
                "global_step": state.global_step,
                "step": state.step,
                "partial": state.partial.to_list(),  # a list: the form older checkpoints have
                "rng": state.rng,
                "skipped": loop.skips.summary(),
            },
            self.path,
        )

    def restore(self, loop) -> TrainingState:
        """Where to go on from: rank 0 decides and sends every rank what it read, so that hosts whose
        checkpoint folders differ (each host syncs its own) still start at the same step."""
        saved = distributed.broadcast_from_main(self.read(loop) if self.writer else None)
        if saved is None:
            return TrainingState()
        loop.model.load_state_dict(saved["model"], strict=False)
        loop.optimizer.load_state_dict(saved["optimizer"])
        loop.schedule.load_state_dict(saved["schedule"])
        loop.scaler.load_state_dict(saved["scaler"])
        best = saved["best_state"]
        state = TrainingState(
            saved["epoch"],
            saved["best_loss"],
            saved["best_epoch"],
            {k: v.cpu() for k, v in best.items()} if best else None,
            saved["history"],
            saved["global_step"],
            saved["step"],
            RunningTotals.from_list(saved["partial"]),
            saved["rng"],
        )
        loop.skips.paths = {split: set(paths) for split, paths in saved["skipped"].items()}
        if loop.dist.is_main:
            where = (
                f"in epoch {state.epoch + 1} after step {state.step}" if state.step else f"after epoch {state.epoch}"
            )
            print(f"resuming from checkpoint {where} (optimizer step {state.global_step})", flush=True)
        return state

    def read(self, loop) -> dict | None:
        """This host's checkpoint, if it is this job's (on the CPU); None if there is none or (set aside) none usable."""
        self.remove_partial_writes()
        if not self.path.is_file():
            return None
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:
            self.set_aside("unreadable", f"it is unreadable ({(str(exc).splitlines() or [type(exc).__name__])[0]})")
            return None
        if not isinstance(saved, dict) or saved.get("fingerprint") != self.fingerprint(loop):
            self.set_aside("mismatch", "it was written by a job with other data or settings")
            return None
        missing = sorted(SAVED_KEYS - set(saved))
        if missing:  # a file cut short by hand or by another tool: rank 0 would fail before telling the others
            self.set_aside("mismatch", f"it lacks {', '.join(missing)}")
            return None
        if not isinstance(saved["model"], dict) or set(saved["model"]) != set(loop.trainable_state()):
            self.set_aside("mismatch", "it holds other parameters than this job trains")
            return None
        return saved

    def remove_partial_writes(self) -> None:
        """The temporaries of saves a kill cut short (atomic_torch_save's `.checkpoint.pt.*`): never read,
        but in the folder SageMaker syncs to S3 and back on every restart, one more per kill."""
        for partial in self.path.parent.glob(f".{self.path.name}.*"):
            partial.unlink(missing_ok=True)
            print(f"removed {partial.name}, a checkpoint write that was cut short", flush=True)

    def set_aside(self, kind: str, why: str) -> None:
        """Rename the checkpoint out of the way (rank 0; the others only read), with a one-line warning."""
        if not self.writer:
            return
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = self.path.with_name(f"{self.path.name}.{kind}-{stamp}")
        for n in range(2, 100):  # two in one second: keep both
            if not aside.exists():
                break
            aside = self.path.with_name(f"{self.path.name}.{kind}-{stamp}-{n}")
        try:
            self.path.rename(aside)
        except FileNotFoundError:
            return
        print(f"WARNING: not resuming from checkpoint {self.path}: {why}; moved it to {aside}", flush=True)
