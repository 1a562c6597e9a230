"""What one copy of this server reserves as a SageMaker inference component, worked out with the
same numbers the server sizes itself by (settings.py), and the environment that holds the copy to it.

An inference component declares its cores and memory (ComputeResourceRequirements); SageMaker packs
copies onto an instance by them. The server sizes itself from what it sees: the CPUs of its affinity
mask and cgroup quota, the memory of its cgroup limit, else the host's. So that a copy stays inside
its reservation whether or not the container's cgroup says it, the component's environment names the
sizing outright: workers, torch threads and decode budget derived from the reservation.

    reservation(cores, weights)   the workers a server on `cores` runs (settings.cpu_workers: two or
                                  more torch threads each), and the memory they need: each worker's
                                  base and weights as settings counts them, plus room to decode
                                  COMPONENT_DECODE_PIXELS at once
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from server.settings import (
    DECODE_BYTES_PER_PIXEL,
    VARIABLE,
    WEIGHTS_FACTOR,
    WORKER_BASE_BYTES,
    cpu_workers,
    decode_pixels_per_worker,
)

# Pixels each worker may decode at once: a full default batch (8) of 1600x1200 photographs, or one
# 16-megapixel photograph. The settings' budget is 3/4 of a worker's spare memory, 12 bytes a pixel.
COMPONENT_DECODE_PIXELS = 16_000_000
MIB = 1 << 20


@dataclass(frozen=True)
class Reservation:
    cores: int
    workers: int
    memory_bytes: int
    decode_pixels_per_worker: int
    gpus: int = 0

    @property
    def memory_mb(self) -> int:
        """MinMemoryRequiredInMb: whole MiB, rounded up."""
        return math.ceil(self.memory_bytes / MIB)

    @property
    def torch_threads(self) -> int:
        return max(1, self.cores // self.workers)

    def environment(self) -> dict[str, str]:
        """The server's variables that hold a copy to this reservation (settings.VARIABLES' names)."""
        return {
            VARIABLE["workers"].name: str(self.workers),
            VARIABLE["torch_threads"].name: str(self.torch_threads),
            VARIABLE["decode_pixels_per_worker"].name: str(self.decode_pixels_per_worker),
        }


def worker_bytes(weights: int) -> int:
    """One worker's memory: its base and weights as settings.cpu_workers counts them, and its decode
    room (the inverse of settings.decode_pixels_per_worker for COMPONENT_DECODE_PIXELS)."""
    decode_room = math.ceil(COMPONENT_DECODE_PIXELS * DECODE_BYTES_PER_PIXEL * 4 / 3)
    return WORKER_BASE_BYTES + WEIGHTS_FACTOR * weights + decode_room


def reservation(cores: int, weights: int, gpus: int = 0) -> Reservation:
    """A copy on `cores` CPU cores (and `gpus` GPUs) serving a model of `weights` bytes (its model.pt,
    settings.model_bytes). The master process is not counted apart: it shares the weights' pages with
    the workers, and a worker's base (512 MiB) is about what the measured master and one worker hold
    together. With GPUs, one worker per GPU, as the server runs on its own."""
    if cores < 1 or weights < 0 or gpus < 0:
        raise ValueError(f"cores must be 1 or more, weights and GPUs 0 or more, got {cores}, {weights}, {gpus}")
    workers = gpus or cpu_workers(cores, memory=1 << 62, weights=weights)  # as many as the cores take
    memory = workers * worker_bytes(weights)
    return Reservation(cores, workers, memory, decode_pixels_per_worker(workers, weights, memory), gpus)
