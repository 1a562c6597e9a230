"""Tiny local tuning studies for the tests (tests/process/test_tune_local.py, test_shared_tuning.py).

Trials are tiny (resnet18 with a frozen, randomly initialised backbone, 64 px, 2 epochs of 4 steps):
a few seconds each, yet their validation losses differ with the learning rate, which is what the
sampler and the pruner need.
"""

from __future__ import annotations

from helpers.training import FAST_HPS

TINY = {
    **{k: v for k, v in FAST_HPS.items() if k != "lr"},
    "trainable-layers": 0,
    "epochs": 2,
    "max-steps-per-epoch": 4,
}
SPACE = {
    "parameters": [
        {"name": "lr", "type": "continuous", "low": 1e-4, "high": 1e-2, "scaling": "log"},
        {"name": "dropout", "type": "continuous", "low": 0.0, "high": 0.5},
    ]
}
HOPELESS_LR = 5.0  # validation loss in the hundreds at epoch 1: the median pruner stops it
