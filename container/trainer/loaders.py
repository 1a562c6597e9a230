"""The data loaders: each training epoch's order from the seed alone, evaluation sharded without padding."""

from __future__ import annotations

import itertools

import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from trainer import data, runtime


class EvalShard(torch.utils.data.Sampler):
    """Every `world`-th sample from `rank`: no padding, so DDP metrics are exact."""

    def __init__(self, length, rank, world):
        self.indices = list(range(rank, length, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


class SkipFirst(torch.utils.data.Sampler):
    """A sampler's order without its first `count` indices: the rest of an epoch a stopped job began."""

    def __init__(self, sampler, count: int):
        self.sampler, self.count = sampler, count

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.count, None)

    def __len__(self):
        return max(len(self.sampler) - self.count, 0)


def loader(dataset, hp, dist_info, train: bool, epoch: int = 0, first_batch: int = 0) -> DataLoader:
    """Evaluation: this rank's share in order. Training: epoch `epoch`'s order, a function of the seed
    and the epoch alone, from batch `first_batch` on."""
    sampler: Sampler
    if train and dist_info.world_size > 1:
        sampler = DistributedSampler(dataset, dist_info.world_size, dist_info.rank, shuffle=True, seed=hp.seed)
        sampler.set_epoch(epoch)
    elif train:
        sampler = torch.utils.data.RandomSampler(dataset, generator=torch.Generator().manual_seed(hp.seed + epoch))
    else:
        sampler = EvalShard(len(dataset), dist_info.rank, dist_info.world_size)
    if first_batch:
        sampler = SkipFirst(sampler, first_batch * hp.batch_size)
    # worker processes pay off for decoding images; for tensors already in memory their start-up is all cost
    workers = 0 if getattr(dataset, "in_memory", False) else data.worker_count(hp.num_workers)
    return DataLoader(
        dataset,
        batch_size=hp.batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=data.collate,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=runtime.ignore_sigterm_in_worker,
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
    )
