"""Every rank through the same collectives in every training step, whatever its batch holds.

Under DDP the forward pass broadcasts rank 0's buffers and the backward pass all-reduces the
gradients: a rank that skipped them (its batch was all unreadable images, or one image, which
BatchNorm cannot train on at some image sizes) would meet the others in another collective: a hang.
So the ranks first agree how many of them have a batch to train on: none, and every rank skips the
step; some, and a rank without one runs a stand-in pass of zeros whose loss is multiplied by 0 (its
gradient is zero, its BatchNorm statistics are put back), while the others' losses are scaled by
world / ready, so the averaged gradient is the mean over the ranks that had images.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn

# BatchNorm in training mode needs more than one value per channel: one image at 32 px reaches
# ResNet's last stage as 1x1 ("Expected more than 1 value per channel when training")
MIN_IMAGES = 2


def trainable(images: torch.Tensor | None, min_images: int) -> bool:
    """A batch to train on: readable images, at least `min_images` of them (see fewest_images)."""
    return images is not None and len(images) >= min_images


def fewest_images(model: nn.Module, shape: tuple[int, ...], device: torch.device) -> int:
    """1 if `model` (in its training modes) trains on a batch of one image of `shape`, else MIN_IMAGES:
    a trial pass, its buffers and random streams put back, no collectives (not the DDP wrapper)."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), buffers_kept(model), torch.no_grad():
        try:
            model(torch.zeros((1, *shape), device=device))
        except ValueError as exc:  # BatchNorm's "Expected more than 1 value per channel when training"
            if "more than 1 value per channel" not in str(exc):
                raise
            return MIN_IMAGES
    return 1


def ranks_ready(ready: bool, device: torch.device) -> int:
    """How many ranks have a batch to train on this step (without DDP: this process's 0 or 1)."""
    if not dist.is_initialized():
        return int(ready)
    count = torch.tensor([1.0 if ready else 0.0], device=device)
    dist.all_reduce(count)
    return int(count.item())


def sample_shape(dataset) -> tuple[int, ...]:
    """One input's shape: a feature cache's features, or an image's channels and pixels."""
    features = getattr(dataset, "features", None)
    if features is not None:
        return tuple(next(f for f in features if f is not None).shape)
    return (3, dataset.prep.image_size, dataset.prep.image_size)


def stand_in(dataset, device: torch.device, memory_format: torch.memory_format) -> torch.Tensor:
    """Zeros shaped like a batch of MIN_IMAGES inputs: what a rank without a batch feeds."""
    images = torch.zeros((MIN_IMAGES, *sample_shape(dataset)), device=device)
    return images.contiguous(memory_format=memory_format) if images.dim() == 4 else images


@contextlib.contextmanager
def buffers_kept(model: nn.Module) -> Iterator[None]:
    """Put the buffers (BatchNorm's running statistics and batch counts) back after the block."""
    saved = [buffer.detach().clone() for buffer in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(model.buffers(), saved, strict=True):
                buffer.copy_(value)
