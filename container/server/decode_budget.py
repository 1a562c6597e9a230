"""The pixels one worker's request threads may decode at once
(SAGEMAKER_DECODE_PIXELS_PER_WORKER).

Each request alone is bounded (SAGEMAKER_MAX_PIXELS_PER_REQUEST), the worker
is not: it runs SAGEMAKER_MODEL_SERVER_THREADS requests at once, and sixteen
8000x8000 RGBA PNGs of a few hundred KB each decode to ~8 GB together, which
ends the worker and every request in it. So a decode takes its pixels from
this budget before it allocates them and gives them back once its image is
cropped (handlers.py), its freed pages returned to the kernel. A thread that finds the budget spent waits, at most
`wait_s`, then gets 503 with Retry-After; an image larger than the whole
budget is refused at once (413): waiting would not help it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from server import allocator
from server.errors import Overloaded, TooLarge

# A decode this large gives its freed pages back to the kernel when it ends
# (allocator.py: otherwise they stay in its thread's arena for ~10 s).
PURGE_ABOVE_PIXELS = 4_000_000


class DecodeBudget:
    def __init__(self, pixels: int, wait_s: float):
        self.pixels = pixels
        self.wait_s = wait_s
        self._free = pixels
        self._cond = threading.Condition()

    @contextmanager
    def reserve(self, pixels: int) -> Iterator[None]:
        """Holds `pixels` of the budget for the block's duration, waiting for them if need be."""
        if pixels > self.pixels:
            raise TooLarge(
                f"image too large: it decodes to {pixels} pixels, more than this server decodes at once "
                f"({self.pixels}, SAGEMAKER_DECODE_PIXELS_PER_WORKER)"
            )
        with self._cond:
            if not self._cond.wait_for(lambda: self._free >= pixels, timeout=self.wait_s):
                raise Overloaded(
                    f"the server is busy decoding other images: retry later (waited {self.wait_s:g} s "
                    "for SAGEMAKER_DECODE_PIXELS_PER_WORKER)"
                )
            self._free -= pixels
        try:
            yield
        finally:
            if pixels >= PURGE_ABOVE_PIXELS:
                allocator.purge_freed_pages()  # before others may allocate what this decode freed
            with self._cond:
                self._free += pixels
                self._cond.notify_all()

    def free(self) -> int:
        with self._cond:
            return self._free


_worker_budget: DecodeBudget | None = None
_worker_budget_lock = threading.Lock()


def worker_budget(pixels: int, wait_s: float) -> DecodeBudget:
    """This process's budget, shared by every model it serves (multi-model workers hold several).
    Made on first use, in the worker: gunicorn's master never decodes."""
    global _worker_budget
    with _worker_budget_lock:
        if _worker_budget is None:
            _worker_budget = DecodeBudget(pixels, wait_s)
        return _worker_budget
