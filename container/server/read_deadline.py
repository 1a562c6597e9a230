"""Read deadlines: a request's body must arrive within SAGEMAKER_BODY_READ_TIMEOUT_S.

gunicorn's gthread worker has no deadline for a body (its worker timeout
only watches the worker's main loop), and it reads one with recv calls in a
loop until the size asked for has come, so a socket timeout, which bounds
each recv alone, never fires for a client that sends a byte a second. So one
thread per worker watches every body being read and shuts the reading side
of a socket whose deadline passed: the blocked recv returns at once with
nothing, and transport.read_body answers 408. The connection then closes: gunicorn
finds nothing more to read on it.

A request's headers have no deadline in gthread either (it waits 5 s for a
first byte, not for the rest): bound_header_reads puts gunicorn's parser,
in this worker, under the same watch, and a client still sending headers
at the deadline is disconnected.
"""

from __future__ import annotations

import heapq
import itertools
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class Watch:
    deadline: float
    connection: socket.socket
    done: bool = False
    expired: bool = False  # the deadline passed first: the connection is shut for reading


class ReadDeadlines:
    def __init__(self):
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Watch]] = []
        self._order = itertools.count()
        self._pid = None  # the process whose thread runs: a forked child starts its own

    @contextmanager
    def watching(self, connection: socket.socket, seconds: float) -> Iterator[Watch]:
        """While the block runs, `connection` is shut for reading once `seconds` have passed."""
        watch = Watch(time.monotonic() + seconds, connection)
        with self._cond:
            if self._pid != os.getpid():
                self._pid, self._heap = os.getpid(), []
                threading.Thread(target=self._run, name="read-deadlines", daemon=True).start()
            heapq.heappush(self._heap, (watch.deadline, next(self._order), watch))
            self._cond.notify()
        try:
            yield watch
        finally:
            with self._cond:  # under the lock: never shut a connection after its read ended
                watch.done = True

    def _run(self) -> None:
        with self._cond:
            while True:
                while self._heap and self._heap[0][2].done:  # ended in time: forget it
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                remaining = self._heap[0][0] - time.monotonic()
                if remaining > 0:
                    self._cond.wait(remaining)
                    continue
                watch = heapq.heappop(self._heap)[2]
                watch.expired = True
                try:
                    watch.connection.shutdown(socket.SHUT_RD)
                except OSError:  # the client is gone already
                    pass


READ_DEADLINES = ReadDeadlines()


def bound_header_reads(seconds: float) -> None:
    """Each request's headers must arrive within `seconds` (gunicorn_config.post_worker_init)."""
    from gunicorn.http.parser import Parser

    read_next = Parser.__next__
    if getattr(read_next, "bounded", False):
        return

    def next_within(parser: Parser):
        connection = getattr(parser.unreader, "sock", None)
        if not isinstance(connection, socket.socket):
            return read_next(parser)
        with READ_DEADLINES.watching(connection, seconds):
            return read_next(parser)

    next_within.bounded = True  # type: ignore[attr-defined]  # a marker on the function: patched once
    Parser.__next__ = next_within
