"""smdebug trials with exactly the losses a test chooses, written by smdebug's own PyTorch hook."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn


def _logits_for(loss: float) -> torch.Tensor:
    # two classes, logits (0, z) for class 0: the cross-entropy is log(1 + e^z), which is z
    # itself (in float32) from z = 20 on, where e^z would overflow for the losses of thousands
    return torch.tensor([[0.0, float(loss if loss > 20 else np.log(np.expm1(loss)))]])


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


# The mean training loss before each validation pass and the pass's loss, of test_rules.py's
# from-scratch run (resnet18, 64 px, 10 epochs of 3 steps, lr 0.003, unaugmented) with seeds 0-3,
# recorded 2026-11-30. The validation losses start in the hundreds or thousands (BatchNorm's running
# statistics not settled) and move 2x from pass to pass: which way they move first differs by seed,
# and by CPU for one seed.
FROM_SCRATCH = {
    0: (
        [2.257, 2.426, 0.522, 0.251, 0.161, 0.162, 0.062, 0.08, 0.058, 0.062],
        [416.081, 1056.577, 70.519, 31.128, 11.38, 3.758, 0.997, 0.105, 0.027, 0.025],
    ),
    1: (
        [2.397, 0.803, 0.752, 0.173, 0.116, 0.035, 0.025, 0.039, 0.045, 0.07],
        [3078.88, 3632.26, 175.668, 36.461, 13.742, 6.278, 2.851, 1.012, 0.321, 0.13],
    ),
    2: (
        [4.613, 0.956, 0.552, 0.319, 0.257, 0.223, 0.133, 0.132, 0.145, 0.124],
        [350.102, 527.542, 236.853, 84.121, 26.683, 4.311, 0.213, 0.126, 0.126, 0.127],
    ),
    3: (
        [1.562, 0.79, 0.164, 0.072, 0.023, 0.055, 0.095, 0.04, 0.021, 0.023],
        [223.961, 522.702, 302.442, 107.005, 35.059, 10.13, 2.604, 0.443, 0.096, 0.051],
    ),
}


def from_scratch_epochs(seed: int) -> list[tuple[list[float], list[float]]]:
    """FROM_SCRATCH[seed] as write_trial's epochs: three TRAIN steps at the epoch's mean, one EVAL step."""
    train, validation = FROM_SCRATCH[seed]
    return [([t] * 3, [v]) for t, v in zip(train, validation, strict=True)]
