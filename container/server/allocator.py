"""What each worker asks of jemalloc, the allocator `serve` preloads.

jemalloc gives freed pages back to the kernel about 10 s after they were freed
(its decay), but only when the process next allocates, or from a background
thread. A forked process does not inherit its parent's background thread, so a
worker starts its own: an idle worker then gives back what its last busy
moment kept (about one batch's activations, 50 MiB at batch 8 for ResNet50).
Without this, a worker that stopped getting requests kept them for ever.

A decoded image is another matter: hundreds of MB freed by one request
thread stay in that thread's arena until the decay, where another thread's
decode cannot reuse them, so a burst of decodes would hold several images'
worth at once. The decode budget (decode_budget.py) purges them at once.
"""

from __future__ import annotations

import ctypes
import functools

MALLCTL_ARENAS_ALL = 4096  # jemalloc's index for "every arena"


def start_background_purging() -> bool:
    """True when jemalloc is in this process and its background thread now runs."""
    mallctl = _mallctl()
    if mallctl is None:
        return False  # glibc's malloc: it trims the heap on its own
    enabled = ctypes.c_bool(True)
    return mallctl(b"background_thread", None, None, ctypes.byref(enabled), ctypes.sizeof(enabled)) == 0


def purge_freed_pages() -> None:
    """Every arena's freed pages back to the kernel now (jemalloc only; glibc
    unmaps allocations this large as soon as they are freed)."""
    mallctl = _mallctl()
    if mallctl is not None:
        mallctl(f"arena.{MALLCTL_ARENAS_ALL}.purge".encode(), None, None, None, 0)


@functools.cache
def _mallctl():
    try:
        return ctypes.CDLL(None).mallctl  # the preloaded library's symbol, if any
    except (OSError, AttributeError):
        return None
