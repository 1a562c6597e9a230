"""The load generator: HTTP requests on fresh connections to 127.0.0.1, cells of
`count` requests from `concurrency` threads, and their latency summary."""

from __future__ import annotations

import http.client
import threading
import time

import numpy as np

REQUEST_TIMEOUT = 60.0  # seconds for any one HTTP request


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict | None = None,
    timeout: float = REQUEST_TIMEOUT,
) -> tuple[int, bytes]:
    """One request on a fresh connection to 127.0.0.1; (0, reason) when none could be made."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException) as exc:
        return 0, f"{type(exc).__name__}: {exc}".encode()
    finally:
        conn.close()


def invoke(port: int, data: bytes, accept: str | None = None) -> tuple[int, bytes]:
    headers = {"Content-Type": "image/jpeg"}
    if accept:
        headers["Accept"] = accept
    return request(port, "POST", "/invocations", data, headers)


def run_cell(port: int, payloads: list[bytes], concurrency: int, count: int, time_cap: float) -> dict:
    """`count` requests from `concurrency` threads, none started after `time_cap` seconds."""
    lock = threading.Lock()
    issued = [0]
    latencies: list[float] = []
    errors: list[str] = []
    start = time.perf_counter()
    deadline = start + time_cap

    def client() -> None:
        while True:
            with lock:
                if issued[0] >= count or time.perf_counter() >= deadline:
                    return
                index = issued[0]
                issued[0] += 1
            began = time.perf_counter()
            status, body = invoke(port, payloads[index % len(payloads)])
            elapsed = time.perf_counter() - began
            with lock:
                if status == 200:
                    latencies.append(elapsed)
                else:
                    errors.append(f"{status} {body[:120]!r}")

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:  # bounded: a request ends within REQUEST_TIMEOUT
        thread.join(max(0.0, deadline + REQUEST_TIMEOUT + 5 - time.perf_counter()))
    wall = time.perf_counter() - start
    with lock:
        return cell_summary(list(latencies), list(errors), wall, count)


def cell_summary(latencies: list[float], errors: list[str], wall: float, count: int) -> dict:
    """A cell's table row: successes, errors, req/s over `wall` seconds, latency percentiles (ms)."""
    ms = np.asarray(latencies) * 1000
    return {
        "ok": len(latencies),
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
        "rps": len(latencies) / wall if wall > 0 else 0.0,
        "p50": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
        "p90": float(np.percentile(ms, 90)) if len(ms) else float("nan"),
        "p99": float(np.percentile(ms, 99)) if len(ms) else float("nan"),
        "capped": len(latencies) + len(errors) < count,
    }
