"""Each trial's share of the machine: threads, data loader workers, a GPU."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class Slot:
    """One trial's share of the machine."""

    index: int
    threads: int  # OMP_NUM_THREADS
    workers: int  # the trainer's num-workers (data loader processes)
    gpu: str | None = None


def detect_gpus() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return []
        if out.returncode == 0:
            return [str(i) for i, _ in enumerate(line for line in out.stdout.splitlines() if line.startswith("GPU "))]
    return []


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def default_parallel(requested: int | None, gpus: int, cores: int) -> int:
    """max(1, min(GPUs or cores // 2, requested)): trials in parallel."""
    bound = gpus or max(1, cores // 2)
    return max(1, min(bound, requested or bound))


def make_slots(parallel: int, gpus: list[str], cores: int) -> list[Slot]:
    share = max(1, cores // parallel)
    slots = []
    for i in range(parallel):
        if gpus:  # the GPU computes; the cores decode images
            workers = min(8, max(1, share - 1))
            slots.append(Slot(i, max(1, share - workers), workers, gpus[i % len(gpus)]))
        else:  # the cores compute; a quarter of them decode
            workers = share // 4
            slots.append(Slot(i, max(1, share - workers), workers))
    return slots
