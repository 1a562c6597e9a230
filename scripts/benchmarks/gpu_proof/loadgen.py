"""One load-generating process of the proof's serving cell (standard library only, so it starts in
a blink): THREADS clients post the files of FOLDER in turn to 127.0.0.1:PORT/invocations, each on a
fresh connection, from START (a time.time() shared by all processes of the cell) for SECONDS; one
request per client before START warms the server up and is not counted. Prints one JSON line:
{"ok": n, "errors": n, "first_error": "...", "latencies": [seconds, ...], "finished": time.time()}.

    python3 loadgen.py PORT FOLDER THREADS START SECONDS
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
from pathlib import Path

REQUEST_TIMEOUT_S = 60.0


def post(port: int, body: bytes) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
    try:
        conn.request("POST", "/invocations", body=body, headers={"Content-Type": "application/x-image"})
        response = conn.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException) as exc:
        return 0, f"{type(exc).__name__}: {exc}".encode()
    finally:
        conn.close()


def main(argv: list[str]) -> int:
    port, folder, threads, start, seconds = int(argv[0]), Path(argv[1]), int(argv[2]), float(argv[3]), float(argv[4])
    payloads = [path.read_bytes() for path in sorted(folder.iterdir())]
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    end = start + seconds

    def client(offset: int) -> None:
        post(port, payloads[offset % len(payloads)])  # warm-up, not counted
        time.sleep(max(0.0, start - time.time()))
        index = offset
        while time.time() < end:
            began = time.perf_counter()
            status, body = post(port, payloads[index % len(payloads)])
            elapsed = time.perf_counter() - began
            index += threads
            with lock:
                if status == 200:
                    latencies.append(elapsed)
                else:
                    errors.append(f"{status} {body[:160]!r}")

    workers = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:  # bounded: each request ends within REQUEST_TIMEOUT_S
        worker.join(max(0.0, end + REQUEST_TIMEOUT_S + 5 - time.time()))
    finished = time.time()  # the last request started before END is counted: the cell lasted until now
    with lock:
        result = {"ok": len(latencies), "errors": len(errors), "first_error": (errors or [""])[0]}
        print(json.dumps(dict(result, latencies=latencies, finished=finished)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
