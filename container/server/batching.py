"""Dynamic batching: concurrent requests of one worker share forward passes.

Request threads decode and preprocess their own images and `submit` the
tensors; a model thread runs the forward passes (one, unless the model can run
several at once: `model_threads` below). It takes the oldest queued
request and waits up to `max_wait_ms` (counted from that request's arrival)
for others to fill `max_batch_size` images, but only while another request of
this worker has announced itself with `upcoming()` and not yet submitted.
So a lone request never waits: batching costs latency only when there is
someone to batch with. max_wait_ms=0 never waits, yet still batches whatever
queued up while the previous forward pass ran.

Each request thread can read how many images shared its last forward pass
(`last_batch_size`); the server reports it in a response header, and
`forward_passes` / `images` count what this worker's model has run; each
forward pass's size and each request's wait go to /metrics (metrics.py).
`close` ends the model thread once the queue is empty (a multi-model worker
unloading a model).

A model that can run several forward passes at once without slowing each other
(OpenVINO's single-threaded streams, served.py) gets as many model threads
(`model_threads`): one forms its batch while another's pass runs, so a stream
that finishes early takes the next batch instead of idling until its sibling
finishes. They form batches one at a time.

Nothing a request sends ends the model thread: only inputs of one shape
share a forward pass (a user input_fn may return any size), and a failing
forward pass fails its batch's requests alone. A request waits for its
result at most `timeout_s` (queue included), then gets 503; a job still
queued by then is dropped, not computed.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from server.errors import Overloaded
from server.metrics import FORWARD_BATCH_SIZE, QUEUE_WAIT_SECONDS


@dataclass
class _Job:
    inputs: torch.Tensor
    queued_at: float = field(default_factory=time.monotonic)
    future: Future = field(default_factory=Future)
    batch_size: int = 0  # images in the forward pass that computed this job


class DynamicBatcher:
    def __init__(
        self,
        forward: Callable[[torch.Tensor], torch.Tensor],
        max_batch_size: int,
        max_wait_ms: float,
        timeout_s: float | None = None,
        model_threads: int = 1,
    ):
        self._forward = forward
        self.max_batch_size = max_batch_size
        self._max_wait_s = max_wait_ms / 1000.0
        self.timeout_s = timeout_s
        self._cond = threading.Condition()
        self._forming = threading.Lock()  # one model thread forms a batch at a time
        self._queue: deque[_Job] = deque()
        self._upcoming = 0
        self._closed = False
        self.observed = True  # forward passes and waits go to /metrics
        # gthread runs a request start to end in one thread, so the announcement
        # made in upcoming() is found again by that thread's submit().
        self._announced = threading.local()
        self.forward_passes = 0
        self.images = 0
        self.model_threads = [
            threading.Thread(target=self._run, name=f"model-{index}", daemon=True)
            for index in range(max(1, model_threads))
        ]
        for thread in self.model_threads:
            thread.start()

    @contextmanager
    def upcoming(self):
        """Announce that this thread will submit soon, so batches may wait for it."""
        with self._cond:
            self._upcoming += 1
        self._announced.pending = True
        self._announced.batch_size = None
        try:
            yield
        finally:
            if self._announced.pending:  # left without submitting (e.g. a bad request)
                with self._cond:
                    self._withdraw_announcement()

    def _withdraw_announcement(self) -> None:
        self._announced.pending = False
        self._upcoming -= 1
        self._cond.notify()

    def submit(self, inputs: torch.Tensor) -> torch.Tensor:
        """forward(inputs), computed in batches of at most max_batch_size; blocks until done."""
        if len(inputs) == 0:
            raise ValueError("nothing to predict: an empty batch")
        jobs = [_Job(chunk) for chunk in inputs.split(self.max_batch_size)]
        with self._cond:
            self._queue.extend(jobs)
            if getattr(self._announced, "pending", False):
                self._withdraw_announcement()
            self._cond.notify()
        outputs = self._results(jobs)
        self._announced.batch_size = max(job.batch_size for job in jobs)
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)

    def _results(self, jobs: list[_Job]) -> list[torch.Tensor]:
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        try:
            return [job.future.result(deadline and max(0.0, deadline - time.monotonic())) for job in jobs]
        except FutureTimeout:
            for job in jobs:
                job.future.cancel()  # a job not started yet is skipped by the model thread
            raise Overloaded(
                f"no prediction within {self.timeout_s:g} s (SAGEMAKER_PREDICT_TIMEOUT_S): the model is busy"
            ) from None

    def close(self) -> None:
        """End the model threads after the jobs already queued; no submit may follow."""
        with self._cond:
            self._closed = True
            self._cond.notify()

    def last_batch_size(self) -> int | None:
        """Images in the (largest) forward pass of this thread's last submit
        since it announced itself with upcoming(); None if it submitted nothing."""
        return getattr(self._announced, "batch_size", None)

    def _run(self) -> None:
        while jobs := self._next_batch():
            # a job whose request gave up waiting is cancelled: skip it
            jobs = [job for job in jobs if job.future.set_running_or_notify_cancel()]
            if not jobs:
                continue
            try:
                self._forward_batch(jobs)
            except Exception as exc:  # the requests fail, the model thread lives on
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)

    def _forward_batch(self, jobs: list[_Job]) -> None:
        inputs = jobs[0].inputs if len(jobs) == 1 else torch.cat([job.inputs for job in jobs])
        with self._cond:
            self.forward_passes += 1
            self.images += len(inputs)
        started = time.monotonic()
        for job in jobs:
            job.batch_size = len(inputs)
            if self.observed:
                QUEUE_WAIT_SECONDS.observe(started - job.queued_at)
        if self.observed:
            FORWARD_BATCH_SIZE.observe(len(inputs))
        outputs = self._forward(inputs)
        for job, output in zip(jobs, outputs.split([len(job.inputs) for job in jobs]), strict=True):
            job.future.set_result(output)

    def _queued_images(self) -> int:
        return sum(len(job.inputs) for job in self._queue)

    def _next_batch(self) -> list[_Job]:
        """The next forward pass's jobs; [] once closed and drained."""
        with self._forming, self._cond:
            self._cond.wait_for(lambda: self._queue or self._closed)
            if not self._queue:
                return []
            deadline = self._queue[0].queued_at + self._max_wait_s
            while self._upcoming and self._queued_images() < self.max_batch_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch = [self._queue.popleft()]
            size, shape = len(batch[0].inputs), batch[0].inputs.shape[1:]
            # every queued job of the oldest one's shape that fits, oldest first; the others keep their
            # order for the next pass. (Taking only the run of that shape at the queue's head, requests of
            # two sizes that arrived alternately never shared a pass.)
            others: deque[_Job] = deque()
            while self._queue and size < self.max_batch_size:
                job = self._queue.popleft()
                if job.inputs.shape[1:] == shape and size + len(job.inputs) <= self.max_batch_size:
                    batch.append(job)
                    size += len(job.inputs)
                else:
                    others.append(job)
            self._queue.extendleft(reversed(others))
            return batch
