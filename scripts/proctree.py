"""Process trees from /proc (Linux), for the scripts and tests that must leave no process behind."""

from __future__ import annotations

import ctypes
import os
from contextlib import contextmanager
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


def _stat_fields(pid: int | str) -> list[str]:
    """/proc/PID/stat after the command name (which may hold spaces and parentheses)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def live_parents() -> dict[int, int]:
    """{pid: parent pid} of every process not yet dead (zombies, dead but not reaped, left out)."""
    table = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            state, parent = _stat_fields(proc.name)[:2]
        except (OSError, ValueError):
            continue  # gone meanwhile
        if state not in ("Z", "X"):
            table[int(proc.name)] = int(parent)
    return table


def descendants(pid: int) -> set[int]:
    """Live processes below `pid`: children, grandchildren, ..."""
    parents, found, frontier = live_parents(), set[int](), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) that `pid` and its live descendants have used so far."""
    ticks = 0
    for member in {pid} | descendants(pid):
        try:
            fields = _stat_fields(member)
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    return ticks / os.sysconf("SC_CLK_TCK")


def running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        return _stat_fields(pid)[0] not in ("Z", "X")
    except (OSError, ValueError, IndexError):
        return False


def start_ticks(pid: int) -> int | None:
    """When `pid` started, in clock ticks since boot; None once it is gone (reaped). A pid alone does not
    name a process: the kernel hands it out again (pid_max may be 32768: a busy machine wraps round in
    about a minute), and /proc/PID also answers for a thread of another process. (pid, start_ticks) does."""
    try:
        return int(_stat_fields(pid)[19])
    except (OSError, ValueError, IndexError):
        return None


def exists(pid: int, ticks: int | None) -> bool:
    """The process that started at `ticks` as `pid` is still in the process table (running or a zombie)."""
    return ticks is not None and start_ticks(pid) == ticks


@contextmanager
def adopting_orphans():
    """While the block runs, this process is a child subreaper (prctl PR_SET_CHILD_SUBREAPER): a process
    below it whose parent exits becomes its child, and stays in the process table (a zombie once it
    exits) until this process reaps it, instead of going to PID 1, which may reap it at once. So a test
    sees a process a server left behind, however briefly it lived on."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    try:
        yield
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def reap(pid: int) -> None:
    """Reap `pid` if it became this process's child (adopting_orphans) and has exited; else nothing."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
