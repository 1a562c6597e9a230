"""Helper processes of gunicorn's master (runtimes' converter) that must not outlive it.

Outside a container nothing reaps what the master leaves behind: a converter orphaned by a
stop during loading would go on converting (cores, files in the scratch folder) for a minute.
Two halves, both needed:

    the master   keeps each child it starts here; stopped while loading (preload.py), it
                 kills and reaps them before it exits (kill_all): its own exit is orderly
    the child    asks the kernel for SIGKILL when its parent dies (die_with_parent): the
                 master killed outright (SIGKILL, the OOM killer), which runs no code

Standard library only: the master's stop path imports this without torch.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading

PR_SET_PDEATHSIG = 1  # linux/prctl.h
REAP_TIMEOUT_S = 5.0

_lock = threading.Lock()
_running: set[subprocess.Popen] = set()
_closed = False


def start(command: list[str], **popen_args) -> subprocess.Popen:
    """subprocess.Popen(command), kept until finished(); killed at once when kill_all ran before."""
    with _lock:
        process = subprocess.Popen(command, **popen_args)
        if not _closed:
            _running.add(process)
            return process
    process.kill()  # the master is stopping: this one came too late to be kept
    process.wait(timeout=REAP_TIMEOUT_S)
    return process


def finished(process: subprocess.Popen) -> None:
    with _lock:
        _running.discard(process)


def kill_all() -> None:
    """SIGKILL every child kept here and reap it (bounded); later start()s are killed too."""
    global _closed
    with _lock:
        _closed = True
        processes = list(_running)
        _running.clear()
    for process in processes:
        process.kill()
    for process in processes:
        try:
            process.wait(timeout=REAP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass  # in the kernel's hands (uninterruptible I/O); SIGKILL ends it when that returns


def die_with_parent(parent_pid: int) -> None:
    """In a child, first thing: SIGKILL when the parent that started it exits (Linux; elsewhere nothing).

    The parent may have died before this ran (the child was importing): the child then has another
    parent already (init, a subreaper), which prctl cannot catch, so it exits here. prctl's signal
    comes when the *thread* that started the child exits: the master starts converters from its
    loading thread, which waits for them."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent_pid:
        os._exit(1)  # orphaned before prctl took effect: nobody waits for this verdict
