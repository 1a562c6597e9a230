"""The worker-wide decode budget (server/decode_budget.py), with real threads."""

from __future__ import annotations

import threading
import time

import pytest

from server.decode_budget import DecodeBudget
from server.errors import Overloaded, TooLarge


def test_a_decode_waits_until_others_give_their_pixels_back():
    budget = DecodeBudget(100, wait_s=10)
    held, release = threading.Event(), threading.Event()

    def hold_most():
        with budget.reserve(80):
            held.set()
            release.wait(timeout=10)

    holder = threading.Thread(target=hold_most)
    holder.start()
    held.wait(timeout=10)
    with budget.reserve(20):  # fits beside it: no wait
        assert budget.free() == 0
    threading.Timer(0.5, release.set).start()
    started = time.monotonic()
    with budget.reserve(50):
        assert time.monotonic() - started >= 0.4  # waited for the holder
        assert budget.free() == 50
    holder.join(timeout=10)
    assert budget.free() == 100


def test_a_decode_that_waits_too_long_is_refused_and_takes_nothing():
    budget = DecodeBudget(100, wait_s=0.5)
    with budget.reserve(60):
        started = time.monotonic()
        with pytest.raises(Overloaded, match="SAGEMAKER_DECODE_PIXELS_PER_WORKER"):
            with budget.reserve(60):
                pass
        assert 0.4 < time.monotonic() - started < 3
    assert budget.free() == 100


def test_an_image_larger_than_the_whole_budget_is_refused_at_once():
    budget = DecodeBudget(100, wait_s=30)
    started = time.monotonic()
    with pytest.raises(TooLarge, match="SAGEMAKER_DECODE_PIXELS_PER_WORKER"):
        with budget.reserve(101):
            pass
    assert time.monotonic() - started < 1
    assert budget.free() == 100


def test_pixels_are_given_back_when_the_decode_fails():
    budget = DecodeBudget(100, wait_s=0)
    with pytest.raises(ValueError), budget.reserve(100):
        raise ValueError("not a readable image")
    with budget.reserve(100):
        pass
