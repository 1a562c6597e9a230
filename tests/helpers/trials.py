"""smdebug trials with exactly the losses a test chooses, written by smdebug's own PyTorch hook."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn


def _logits_for(loss: float) -> torch.Tensor:
    # two classes, logits (0, z) for class 0: the cross-entropy is log(1 + e^z)
    return torch.tensor([[0.0, float(np.log(np.expm1(loss)))]])


def write_trial(folder: Path, epochs: list[tuple[list[float], list[float]]]) -> str:
    """Per epoch: its TRAIN steps' losses, then its validation pass's EVAL losses (none: no pass), and
    the epoch's mean losses as the trainer's scalars (scalar/train_loss, scalar/validation_loss)."""
    import smdebug.pytorch as smd
    from smdebug import modes

    hook = smd.Hook(out_dir=str(folder), save_config=smd.SaveConfig(save_interval=1), include_collections=["losses"])
    model, criterion = nn.Linear(1, 1), nn.CrossEntropyLoss()
    hook.register_module(model)
    hook.register_loss(criterion)
    for train, validation in epochs:
        hook.set_mode(modes.TRAIN)
        for value in train:
            model(torch.zeros(1, 1))  # a step
            criterion(_logits_for(value), torch.tensor([0]))
        if validation:
            hook.set_mode(modes.EVAL)
            for value in validation:
                model(torch.zeros(1, 1))
                criterion(_logits_for(value), torch.tensor([0]))
            hook.save_scalar("train_loss", float(np.mean(train)))
            hook.save_scalar("validation_loss", float(np.mean(validation)))
            hook._write_scalars()  # as trainer/debugger.py does: every epoch's value kept
    hook.close()
    return str(folder)


def loss_trial(folder: Path, losses) -> str:
    """A trial with exactly these TRAIN losses, one per step, and no validation."""
    return write_trial(folder, [(list(losses), [])])


def overfitting_epochs(epochs: int = 8, best: int = 3) -> list[tuple[list[float], list[float]]]:
    """Training loss falling every epoch (3 steps each); validation loss falling to its best at epoch
    `best`, then rising 20% an epoch: a run that learns its training set by heart."""
    curve = []
    for epoch in range(1, epochs + 1):
        train = [1.2 * 0.6 ** (epoch - 1 + step / 3) + 0.01 for step in range(3)]
        validation = 1.0 * 0.7 ** min(epoch, best) * 1.2 ** max(epoch - best, 0)
        curve.append((train, [validation]))
    return curve
