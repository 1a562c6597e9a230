"""Disk room for asynchronous requests' spooled bodies, shared by every worker of the server.

Each body in flight holds a ticket: an empty file in <run dir>/spool-room named after its worker's
pid and the bytes the body may grow to (its Content-Length, else the payload limit). Before a worker
writes a byte of a body it counts every ticket against the disk's free space, under an exclusive
lock, so that two workers cannot both take the last room; the ticket goes with the body. Counted in
one worker's memory instead, as it first was, each worker saw only its own bodies, and N workers
could promise the same free gigabyte N times.

A worker that dies holding tickets does not keep their room: the master removes a reaped worker's
tickets (gunicorn's child_exit), and a ticket whose process is gone is not counted.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import uuid
from pathlib import Path

from server.errors import Overloaded

FOLDER = "spool-room"
# Disk kept free beside the spooled bodies: the model registry and the metric files live in the run
# folder too, and a full disk fails them all.
DISK_HEADROOM_BYTES = 256 << 20


class SpoolRoom:
    def __init__(self, run_dir: str | os.PathLike):
        self.folder = Path(run_dir) / FOLDER

    def take(self, size: int) -> Path:
        """A ticket for `size` bytes; Overloaded (503, retry later) when the disk cannot hold them beside
        every body in flight in any worker."""
        self.folder.mkdir(exist_ok=True)
        with open(self.folder / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            held = sum(_size_if_live(ticket) for ticket in self.folder.glob("t-*"))
            if shutil.disk_usage(self.folder).free - held - DISK_HEADROOM_BYTES < size:
                raise Overloaded(
                    f"no room for a {size}-byte request body now (other requests' bodies hold the disk); retry later"
                )
            ticket = self.folder / f"t-{os.getpid()}-{uuid.uuid4().hex}-{size}"
            ticket.touch()
        return ticket

    @staticmethod
    def give_back(ticket: Path) -> None:
        ticket.unlink(missing_ok=True)


def forget_worker(run_dir: str | os.PathLike, pid: int) -> None:
    """A reaped worker's tickets removed: its pid may be another process's later."""
    for ticket in (Path(run_dir) / FOLDER).glob(f"t-{pid}-*"):
        ticket.unlink(missing_ok=True)


def _size_if_live(ticket: Path) -> int:
    """The ticket's bytes, or 0 (and the ticket removed) when the process that took it is gone."""
    try:
        _, pid, _, size = ticket.name.split("-")
        os.kill(int(pid), 0)
    except ProcessLookupError:
        ticket.unlink(missing_ok=True)
        return 0
    except PermissionError:  # alive, another user's
        pass
    except ValueError:  # not a ticket of ours
        return 0
    return int(size)
