"""Unit-tier fixtures."""

from __future__ import annotations

import pytest

from helpers.tiny_loop import blobs, hp_for, make_loop


@pytest.fixture
def tiny():
    """(hyperparameters, loop, training set, validation set) of a 2-class problem a linear head learns."""
    hp = hp_for()
    return hp, make_loop(hp), blobs(48, seed=0), blobs(16, seed=1)
