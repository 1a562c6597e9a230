"""One pass over the data: `train_one_epoch` and `evaluate`, as plain functions.

A `Loop` holds what setup.build made once (model, optimiser, schedule, the
hooks); a TrainingState (checkpoint.py) holds where the job is. Results leave
through `loop.reporter` only: one call per optimizer step, one per epoch.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from contract.spec.hyperparameters import Hyperparameters
from trainer import data, debugger, distributed, lockstep, profiler, runtime
from trainer.checkpoint import RunningTotals, TrainingState, rng_state, set_rng_state
from trainer.loaders import loader


def autocast(device: torch.device, amp: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Mixed precision in `amp` (None: full precision) on `device`'s kind."""
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=amp)


@dataclass
class Loop:
    hp: Hyperparameters
    dist: distributed.Distributed
    device: torch.device
    model: nn.Module  # the whole classifier: what checkpoints and the artifact keep
    frozen: list  # modules that do not train (their BatchNorm statistics stay as loaded)
    forward_model: nn.Module  # what the passes feed: the model, or its head over cached features
    train_model: nn.Module  # the same, under DDP wrapped so that gradients are averaged over ranks
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Any  # stepped once per optimizer step
    scaler: torch.amp.GradScaler
    steps_per_epoch: int
    class_names: list
    reporter: Any  # reporting.Reporter
    amp: torch.dtype | None = None  # autocast dtype; None: full precision
    input_format: torch.memory_format = torch.contiguous_format
    debugger: debugger.NullDebugger = field(default_factory=debugger.NullDebugger)
    profiler: profiler.NullProfiler = field(default_factory=profiler.NullProfiler)
    stop: runtime.StopFlag = field(default_factory=runtime.StopFlag)  # SIGTERM's handler
    skips: data.SkipTracker = field(default_factory=data.SkipTracker)
    frozen_keys: set = field(default_factory=set)  # state-dict keys of the frozen modules
    frozen_digest: str = ""  # checkpoint.state_digest of the frozen weights
    data_digest: str = ""  # checkpoint.data_digest of the splits
    arch: Any = None  # contract.model.Architecture
    # smaller training batches are not trained on: 2 where BatchNorm cannot train on one image (lockstep.py)
    min_batch_images: int = 1

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.amp)

    def trainable_state(self) -> dict:
        """The model's state without the frozen stages: what checkpoints and best_state keep."""
        return {k: v for k, v in self.model.state_dict().items() if k not in self.frozen_keys}

    def merge_skips(self) -> None:
        """Every rank's unreadable images, on every rank: what checkpoints and the report keep."""
        if self.dist.world_size > 1:
            self.skips.paths = distributed.union_over_ranks(self.skips.paths)


@dataclass
class EpochResult:
    """One training epoch over all ranks."""

    loss: float
    accuracy: float
    images_per_sec: float  # over the slowest rank's time
    images: int
    # the sums behind it, as TrainingState.partial keeps them: what a stop during validation saves,
    # so that a restart redoes only the validation
    partial: RunningTotals = field(default_factory=RunningTotals)


def set_train_mode(model: nn.Module, frozen: list[nn.Module]) -> None:
    # Frozen stages keep their BatchNorm statistics: train() would update them
    # from every batch even though no weight of theirs is trained.
    model.train()
    for module in frozen:
        module.eval()


def train_one_epoch(loop: Loop, dataset, epoch: int, state: TrainingState) -> EpochResult | None:
    """Train epoch `epoch` from batch `state.step` on (a resumed job: the rest of it).

    None when a stop was requested part-way; `state` then holds where, and the sums so far."""
    hp, dist_info, device = loop.hp, loop.dist, loop.device
    set_train_mode(loop.model, loop.frozen)
    loop.debugger.train()
    first = state.step
    if hasattr(dataset, "set_epoch"):  # augmentation seeds (cached features have none)
        dataset.set_epoch(epoch)
    batches = loader(dataset, hp, dist_info, train=True, epoch=epoch, first_batch=first)
    torch.manual_seed(hp.seed + epoch)  # dropout's stream per epoch
    batch_iterator = iter(batches)  # draws the loader's base seed from that stream
    if first:  # go on with the streams as the stopped job left them
        assert state.rng is not None, "a mid-epoch position is saved with its random streams"
        set_rng_state(state.rng[dist_info.rank], device)
    # rank 0 carries the stopped part's sums (already over all ranks); the epoch's all_sum adds the rest
    carried = state.partial if dist_info.is_main else RunningTotals()
    loss_sum, correct, seen = carried.loss_sum, carried.correct, carried.seen
    start = time.perf_counter() - state.partial.seconds
    unreadable = alone = stand_ins = 0
    for step, (images, labels, bad) in enumerate(loop.profiler.timed(batch_iterator, epoch, first), start=first):
        if step >= loop.steps_per_epoch:
            break
        loop.skips.add("train", dataset, bad)
        unreadable += len(bad)
        usable = lockstep.trainable(images, loop.min_batch_images)
        alone += 0 if usable or images is None else len(images)
        ready = lockstep.ranks_ready(usable, device)  # every rank, every step: the same collectives follow
        if usable:
            images = images.to(device, non_blocking=True, memory_format=loop.input_format)
            labels = labels.to(device, non_blocking=True)
            loss, logits = backward(loop, images, labels, dist_info.world_size / ready, epoch, step)
        elif ready:
            stand_in_backward(loop, dataset)
            stand_ins += 1
        if ready:
            lr = optimizer_step(loop)
            state.global_step += 1
        if usable:
            loss_value, n = loss.item(), labels.numel()
            loop.reporter.report_step(state.global_step, lr=lr, loss=loss_value, epoch=epoch)
            loss_sum += loss_value * n
            correct += (logits.argmax(1) == labels).sum().item()
            seen += n
        loop.stop.step_done(state.global_step, dist_info.rank)
        if loop.stop.agreed(device):
            state.step = step + 1
            loss_all, correct_all, seen_all = distributed.all_sum([loss_sum, correct, seen], device)
            state.partial = RunningTotals(loss_all, correct_all, seen_all, time.perf_counter() - start)
            state.rng = distributed.all_gather(rng_state(device))
            return None
    if dist_info.world_size > 1:  # every rank's share, in its own host's log
        distributed.rank_says(
            dist_info,
            f"epoch {epoch}: trained on {int(seen)} images, skipped {unreadable} unreadable, "
            f"{alone} alone in a batch (BatchNorm needed two); {stand_ins} step(s) with a stand-in pass "
            "(no batch of its own)",
        )
    # global: every rank's sums; the speed over the slowest rank's time
    elapsed = distributed.all_max(time.perf_counter() - start, device)
    loss_sum, correct, seen = distributed.all_sum([loss_sum, correct, seen], device)
    return EpochResult(
        loss_sum / max(seen, 1),
        correct / max(seen, 1),
        seen / max(elapsed, 1e-9),
        int(seen),
        RunningTotals(loss_sum, correct, seen, elapsed),
    )


def backward(loop: Loop, images, labels, weight: float, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's forward and backward pass; `weight` scales the gradient (world / ranks with a batch)."""
    with loop.autocast():
        logits = loop.train_model(images)
    loss = loop.criterion(logits.float(), labels)
    if not torch.isfinite(loss):
        raise runtime.TrainingFailure(
            f"loss became {loss.item()} at epoch {epoch} step {step}: lower the learning rate "
            f"(lr={loop.hp.lr}) or add warm-up"
        )
    loop.optimizer.zero_grad(set_to_none=True)
    loop.scaler.scale(loss * weight if weight != 1 else loss).backward()
    return loss, logits


def stand_in_backward(loop: Loop, dataset) -> None:
    """The collectives of a pass, without its effects: a rank with no batch while others have one."""
    images = lockstep.stand_in(dataset, loop.device, loop.input_format)
    with lockstep.buffers_kept(loop.model):  # after the backward pass, which BatchNorm's buffers take part in
        with loop.autocast():
            logits = loop.train_model(images)
        loop.optimizer.zero_grad(set_to_none=True)
        loop.scaler.scale(logits.float().sum() * 0.0).backward()


def optimizer_step(loop: Loop) -> float:
    """Step the optimiser (every rank, on the averaged gradient) and the schedule; the lr it used."""
    lr = loop.optimizer.param_groups[0]["lr"]
    loop.scaler.step(loop.optimizer)
    loop.scaler.update()
    loop.schedule.step()
    return lr


def batches_on_every_rank(dataset, hp, dist_info: distributed.Distributed) -> int:
    """How many evaluation batches every rank has: the last rank's share (EvalShard) is the smallest."""
    smallest = len(range(dist_info.world_size - 1, len(dataset), dist_info.world_size))
    return -(-smallest // hp.batch_size)


@torch.no_grad()
def evaluate(loop: Loop, dataset, split: str, final: bool = False) -> tuple[float, float, np.ndarray] | None:
    """(mean loss, accuracy, confusion matrix: rows true, columns predicted) over every rank's share;
    None when a stop (SIGTERM) was requested part-way: a long pass must not outlast SageMaker's 30 s.

    The ranks agree on the stop after each batch that every rank has (their shares differ by at most
    one batch), so they leave at the same batch and their collectives stay lined up.
    `final`: the one scoring at the end, kept apart from validation in the debugger's trial."""
    device, n_classes = loop.device, len(loop.class_names)
    if torch.distributed.is_initialized():
        # DDP gives every rank rank 0's buffers (BatchNorm statistics) before each training forward,
        # which each rank's own batch then moves: score rank 0's, the ones checkpoints and the artifact
        # keep, so that a restart from a checkpoint scores what the stopped job would have
        for buffer in loop.model.buffers():
            torch.distributed.broadcast(buffer, src=0)
    loop.model.eval()
    (loop.debugger.predict if final else loop.debugger.eval)()
    confusion = torch.zeros(n_classes * n_classes, dtype=torch.float64, device=device)
    loss_sum = torch.zeros(1, dtype=torch.float64, device=device)
    unreadable = 0
    shared = batches_on_every_rank(dataset, loop.hp, loop.dist)
    for batch, (images, labels, bad) in enumerate(loader(dataset, loop.hp, loop.dist, train=False), start=1):
        loop.skips.add(split, dataset, bad)
        unreadable += len(bad)
        if images is not None:
            images = images.to(device, non_blocking=True, memory_format=loop.input_format)
            labels = labels.to(device, non_blocking=True)
            with loop.autocast():
                logits = loop.forward_model(images)
            loop.debugger.eval_loss(logits, labels)
            loss_sum += nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
            confusion += torch.bincount(labels * n_classes + logits.argmax(1), minlength=n_classes**2)
        loop.stop.eval_batch_done(split, loop.dist.rank)
        if batch <= shared and loop.stop.agreed(device):
            return None
    if torch.distributed.is_initialized():
        distributed.rank_says(
            loop.dist, f"{split}: scored {int(confusion.sum().item())} images, skipped {unreadable} unreadable"
        )
        torch.distributed.all_reduce(confusion)
        torch.distributed.all_reduce(loss_sum)
    matrix = confusion.view(n_classes, n_classes).cpu().numpy()
    total = matrix.sum()
    return float(loss_sum.item() / max(total, 1)), float(np.trace(matrix) / max(total, 1)), matrix
