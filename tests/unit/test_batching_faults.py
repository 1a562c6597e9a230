"""The dynamic batcher under faults: mixed input shapes, failing or slow forward passes.
Whatever a request sends, the model thread serves on, and no request waits without bound."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from server.batching import DynamicBatcher
from server.errors import Overloaded


class GatedForward:
    """A real forward function (summing each image) that waits for `gate` before its first
    pass, so that every later submit queues up behind it and they batch together."""

    def __init__(self):
        self.gate = threading.Event()
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        self.gate.wait(timeout=30)
        self.shapes.append(tuple(inputs.shape))
        return inputs.flatten(1).sum(1, keepdim=True)


def within(seconds: float, function, *args):
    """function(*args) in a thread, given `seconds` to return or raise: a hung model thread
    fails the test instead of hanging the run."""
    outcome: list = []

    def call() -> None:
        try:
            outcome.append((True, function(*args)))
        except Exception as exc:
            outcome.append((False, exc))

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(timeout=seconds)
    assert outcome, f"no answer within {seconds} s"
    returned, value = outcome[0]
    if not returned:
        raise value
    return value


def submit_in_threads(batcher: DynamicBatcher, inputs: list[torch.Tensor]) -> list:
    """Each tensor submitted from its own thread; -> its result or the exception it raised."""
    results: list = [None] * len(inputs)

    def request(i: int) -> None:
        try:
            results[i] = batcher.submit(inputs[i])
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=request, args=(i,), daemon=True) for i in range(len(inputs))]
    for thread in threads:
        thread.start()
        time.sleep(0.05)  # queued in this order
    return results, threads


def test_inputs_of_different_sizes_queued_together_each_get_their_answer():
    """A user input_fn may return any size: (1,3,64,64) and (1,3,80,80) in one queue
    used to end the model thread in torch.cat, and every later request waited for ever.
    Queued alternately, each size shares one pass: a pass used to take only the run of
    its shape at the queue's head, so alternating sizes never shared one."""
    forward = GatedForward()
    batcher = DynamicBatcher(forward, max_batch_size=8, max_wait_ms=0, timeout_s=20)
    first = threading.Thread(target=batcher.submit, args=(torch.zeros(1, 3, 8, 8),), daemon=True)
    first.start()  # the model thread now waits in the gated pass
    time.sleep(0.2)
    inputs = [torch.ones(1, 3, size, size) for size in (64, 80, 64, 80)]
    results, threads = submit_in_threads(batcher, inputs)
    forward.gate.set()
    for thread in [first, *threads]:
        thread.join(timeout=10)
    assert [float(result) for result in results] == [3 * size * size for size in (64, 80, 64, 80)]
    assert forward.shapes[1:] == [(2, 3, 64, 64), (2, 3, 80, 80)]  # never cat across sizes
    assert float(within(10, batcher.submit, torch.ones(1, 1))) == 1.0  # and it serves on


def test_a_forward_pass_whose_output_does_not_split_fails_its_batch_only():
    batcher = DynamicBatcher(lambda inputs: inputs[:1], max_batch_size=8, max_wait_ms=0, timeout_s=10)
    with pytest.raises(RuntimeError):
        within(10, batcher.submit, torch.ones(3, 2))  # one output row for three images
    assert torch.equal(within(10, batcher.submit, torch.ones(1, 2)), torch.ones(1, 2))


def test_a_request_waits_for_its_forward_pass_at_most_the_timeout():
    forward = GatedForward()
    batcher = DynamicBatcher(forward, max_batch_size=1, max_wait_ms=0, timeout_s=1)
    with pytest.raises(Overloaded, match="SAGEMAKER_PREDICT_TIMEOUT_S"):
        within(3, batcher.submit, torch.ones(1, 2))  # its pass hangs on the gate
    with pytest.raises(Overloaded):
        within(3, batcher.submit, torch.full((1, 2), 7.0))  # queued behind it: gives up, and is dropped
    forward.gate.set()
    assert float(within(10, batcher.submit, torch.ones(1, 2))) == 2.0
    assert forward.shapes == [(1, 2), (1, 2)]  # the dropped job never reached the model
