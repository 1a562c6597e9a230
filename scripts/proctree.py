"""Process trees from /proc (Linux), for the scripts and tests that must leave no process behind."""

from __future__ import annotations

from pathlib import Path


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
    parents, found, frontier = live_parents(), set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        return _stat_fields(pid)[0] not in ("Z", "X")
    except (OSError, ValueError, IndexError):
        return False
