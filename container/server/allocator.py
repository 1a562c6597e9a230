"""The server's memory allocator, jemalloc, from start to end.

`serve` (before gunicorn's master exists): `preload_env` chooses the allocator, which the
master and its workers get through the environment (LD_PRELOAD takes effect when a
program starts, so `serve` puts it there and then execs the master). With glibc's
malloc a worker kept an arena per request thread and the server's memory grew under
load; jemalloc held it a third lower (docs/benchmarks.md).

Each worker (after the fork): jemalloc gives freed pages back to the kernel about 10 s
after they were freed (its decay), but only when the process next allocates, or from a
background thread. A forked process does not inherit its parent's background thread, so
a worker starts its own (`start_background_purging`): an idle worker then gives back what
its last busy moment kept (about one batch's activations, 50 MiB at batch 8 for
ResNet50). Without this, a worker that stopped getting requests kept them for ever.

A decoded image is another matter: hundreds of MB freed by one request thread stay in
that thread's arena until the decay, where another thread's decode cannot reuse them, so
a burst of decodes would hold several images' worth at once. The decode budget
(decode_budget.py) purges them at once (`purge_freed_pages`).
"""

from __future__ import annotations

import ctypes
import functools
import glob
from collections.abc import Mapping

from server.settings import VARIABLE

# Debian's libjemalloc2, installed in the serving image.
JEMALLOC_GLOB = "/usr/lib/*-linux-gnu/libjemalloc.so.2"
# jemalloc serves allocations of 8 MiB and more (every activation of a ResNet50
# forward pass at batch 8) from an arena that returns pages to the kernel at
# once, so each forward pass faulted them back in: 2.7 M page faults and a
# quarter of the CPU in the kernel, fp32 15.5 img/s instead of 21.6. Turning
# that arena off keeps jemalloc's normal decay (unused pages go back after
# about 10 s), so an idle server still shrinks.
JEMALLOC_CONF = "oversize_threshold:0"
# The variables that choose an allocator: a caller who set one chose it.
CHOICE_VARIABLES = ("LD_PRELOAD", "MALLOC_CONF", "MALLOC_ARENA_MAX")
MALLCTL_ARENAS_ALL = 4096  # jemalloc's index for "every arena"
# Runtimes that abort under a preloaded jemalloc: OpenVINO 2026.4's CPU plugin frees memory
# that jemalloc gave out with glibc's free ("munmap_chunk(): invalid pointer", SIGABRT, at
# compile_model), so its servers (and converter children) keep glibc's malloc.
NO_JEMALLOC_RUNTIMES = ("openvino",)


def preload_env(env: Mapping[str, str]) -> dict[str, str]:
    """jemalloc preloaded where installed (with JEMALLOC_CONF unless MALLOC_CONF
    is set), else glibc's malloc with 2 arenas; nothing where the caller chose
    an allocator (LD_PRELOAD, MALLOC_ARENA_MAX); glibc's for NO_JEMALLOC_RUNTIMES."""
    if env.get("LD_PRELOAD") or env.get("MALLOC_ARENA_MAX"):
        return {}
    jemalloc = sorted(glob.glob(JEMALLOC_GLOB))
    runtime = env.get(VARIABLE["runtime"].name, "").strip().lower()
    if not jemalloc or runtime in NO_JEMALLOC_RUNTIMES:
        return {"MALLOC_ARENA_MAX": "2"}
    return {"LD_PRELOAD": jemalloc[0], "MALLOC_CONF": env.get("MALLOC_CONF") or JEMALLOC_CONF}


def described(env: Mapping[str, str]) -> str:
    """The allocator this process was started with, for the master's start-up line."""
    chosen = " ".join(f"{name}={env[name]}" for name in CHOICE_VARIABLES if env.get(name))
    return chosen or "glibc's malloc, its defaults"


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
