"""One training step on two gloo ranks, rank 1 without a batch: what tests/process/test_ddp_lockstep.py spawns."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from helpers.tiny_loop import blobs, hp_for, make_loop
from trainer import distributed, lockstep, loop

IMAGES = 4  # rank 0's batch: the first IMAGES items of blobs()


def classifier() -> nn.Module:
    """A model with BatchNorm (whose buffers a stand-in pass must leave alone), seeded alike everywhere."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))


def rank_0_batch() -> tuple[torch.Tensor, torch.Tensor]:
    dataset = blobs(8)
    return torch.stack(dataset.features[:IMAGES]), torch.tensor([dataset.samples[i][1] for i in range(IMAGES)])


def one_step(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60))
    model = classifier()
    step = make_loop(hp_for("--batch-size", str(IMAGES)), model)
    step.dist = distributed.Distributed(rank, 2, rank)
    step.train_model = nn.parallel.DistributedDataParallel(model)
    before = [b.clone() for b in model.buffers()]
    ready = lockstep.ranks_ready(rank == 0, torch.device("cpu"))
    if rank == 0:
        images, labels = rank_0_batch()
        loop.backward(step, images, labels, weight=2 / ready, epoch=1, step=0)
    else:
        loop.stand_in_backward(step, blobs(8))
    result = {
        "ready": ready,
        "grads": [p.grad.clone() for p in model.parameters()],
        "buffers_before": before,
        "buffers_after": [b.clone() for b in model.buffers()],
    }
    torch.save(result, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()
