"""Loopback helpers for the scripts and tests that start servers on 127.0.0.1. Standard library only."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float = 30) -> None:
    """Poll `url` until it answers (any status), or raise TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except Exception:
            time.sleep(0.2)
    raise TimeoutError(url)


def wait_healthy(
    url: str,
    timeout_s: float = 240,
    interval_s: float = 0.5,
    check: Callable[[], None] | None = None,
    path: str = "/ping",
) -> float:
    """Poll `url` + `path` until it answers 200 (a serving container's /ping, an MLflow server's /health);
    the seconds it took.

    TimeoutError after `timeout_s`. `check` runs between tries: it raises to stop waiting early,
    e.g. when the server's process or container has exited."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if check is not None:
            check()
        try:
            with urllib.request.urlopen(f"{url}{path}", timeout=min(5.0, timeout_s)) as response:
                if response.status == 200:
                    return time.monotonic() - start
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass  # not listening yet, or not ready (urlopen raises HTTPError for a 5xx)
        time.sleep(interval_s)
    raise TimeoutError(f"{url}{path} did not answer 200 within {timeout_s:.0f} s")
