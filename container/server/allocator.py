"""What each worker asks of jemalloc, the allocator `serve` preloads.

jemalloc gives freed pages back to the kernel about 10 s after they were freed
(its decay), but only when the process next allocates, or from a background
thread. A forked process does not inherit its parent's background thread, so a
worker starts its own: an idle worker then gives back what its last busy
moment kept (about one batch's activations, 50 MiB at batch 8 for ResNet50).
Without this, a worker that stopped getting requests kept them for ever.
"""

from __future__ import annotations

import ctypes


def start_background_purging() -> bool:
    """True when jemalloc is in this process and its background thread now runs."""
    try:
        mallctl = ctypes.CDLL(None).mallctl  # the preloaded library's symbol, if any
    except (OSError, AttributeError):
        return False  # glibc's malloc: it trims the heap on its own
    enabled = ctypes.c_bool(True)
    return mallctl(b"background_thread", None, None, ctypes.byref(enabled), ctypes.sizeof(enabled)) == 0
