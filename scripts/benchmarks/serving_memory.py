#!/usr/bin/env python3
"""The serving image's production checks, as tables (README, Benchmarks):

    readiness  seconds from start to the first /ping 200, and to the first
               burst of concurrent requests (fresh connections, so they
               spread over the workers) that all answer 200; non-200s seen
               after /ping said 200
    memory     RSS and PSS (/proc/PID/smaps_rollup) of master + workers at
               1, 2 and 4 workers, after a short warm load
    soak       whole-server RSS and PSS at request 500 vs 5,000 (2 workers,
               bounded in time), read between load phases, none in flight, allocator settled;
               PSS split into anonymous (heap, tensors: where a leak shows)
               and file-backed (mapped libraries paged in from the page cache)
    bounds     what each JSON / NPY body gets back (status, reason, time)

The model is the serving benchmark's (scripts/benchmarks/harness/workload.py): ResNet50, 256-unit head, 133 classes.

    .venv/bin/python scripts/bench.py serving-memory                  # all sections
    .venv/bin/python scripts/bench.py serving-memory --sections soak --env MALLOC_ARENA_MAX=0
    .venv/bin/python scripts/bench.py serving-memory --container /tmp/old/container --sections readiness,memory
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TypedDict

import numpy as np
from PIL import Image

import container_path  # noqa: F401  (first: container/ on the import path)
from benchmarks.harness.loadgen import REQUEST_TIMEOUT, request
from benchmarks.harness.servers import CONTAINER, Server, process_tree, server_env
from benchmarks.harness.workload import make_images, make_model_dir
from crafted_png import decompression_bomb_png
from localnet import free_port

SECTIONS = ("readiness", "memory", "soak", "bounds")
START_TIMEOUT = 300.0
SOAK_MARKS = (500, 1000, 2000, 3000, 4000, 5000)
# jemalloc gives a worker's freed pages back about 10 s after they were freed
# (server/allocator.py), so each sample waits that out: every sample then holds
# only what the server keeps, not the last batch's activations.
SETTLE_S = 11.0


def start(model_dir: Path, work: Path, container: Path, workers: int, **env: str) -> Server:
    port = free_port()
    env_of_server = server_env(
        SM_MODEL_DIR=str(model_dir),
        SAGEMAKER_BIND_HOST="127.0.0.1",
        SAGEMAKER_BIND_TO_PORT=str(port),
        SAGEMAKER_MODEL_SERVER_WORKERS=str(workers),
        **env,
    )
    return Server(
        f"serve-{workers}w",
        [sys.executable, str(container / "serve")],
        port,
        env_of_server,
        work / f"serve-{workers}w-{port}.log",
    )


def memory_of(server: Server) -> dict:
    """Whole-server RSS and PSS (MiB; PSS also split into anonymous and file-backed pages)
    and the process count, from smaps_rollup."""
    totals = {"Rss": 0, "Pss": 0, "Pss_Anon": 0, "Pss_File": 0}
    pids = process_tree(server.process.pid)
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                key, _, rest = line.partition(":")
                if key in totals:
                    totals[key] += int(rest.split()[0])
        except OSError:
            pass
    return {
        "rss": totals["Rss"] / 1024,
        "pss": totals["Pss"] / 1024,
        "pss_anon": totals["Pss_Anon"] / 1024,
        "pss_file": totals["Pss_File"] / 1024,
        "processes": len(pids),
    }


def burst(port: int, body: bytes, count: int) -> list[int]:
    """`count` concurrent requests, each on its own connection; their statuses."""
    statuses = [0] * count
    go = threading.Barrier(count)

    def one(i: int) -> None:
        go.wait(timeout=30)
        statuses[i] = request(port, "POST", "/invocations", body, {"Content-Type": "image/jpeg"})[0]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(REQUEST_TIMEOUT + 30)
    return statuses


def readiness(server: Server, probe: bytes, workers: int) -> dict:
    """First /ping 200, then bursts until one answers all 200 (bounded in time)."""
    deadline = server.started + START_TIMEOUT
    first_ping = None
    while first_ping is None:
        if time.perf_counter() > deadline or not server.alive():
            raise RuntimeError(f"{server.name}: no /ping 200:\n{server.log_tail()}")
        if request(server.port, "GET", "/ping", timeout=5)[0] == 200:
            first_ping = time.perf_counter() - server.started
        else:
            time.sleep(0.05)
    failures = 0
    while time.perf_counter() < deadline:
        statuses = burst(server.port, probe, 4 * workers)
        failures += sum(status != 200 for status in statuses)
        if all(status == 200 for status in statuses):
            return {"ping": first_ping, "all": time.perf_counter() - server.started, "failures": failures}
        time.sleep(0.1)
    raise RuntimeError(f"{server.name}: no burst all 200 within {START_TIMEOUT:.0f} s:\n{server.log_tail()}")


class Tally(TypedDict):
    issued: int
    done: int
    errors: int
    first_error: str


def load(port: int, payloads: list[bytes], count: int, concurrency: int, time_cap: float) -> Tally:
    """`count` requests from `concurrency` threads, none started after `time_cap` seconds."""
    lock = threading.Lock()
    state: Tally = {"issued": 0, "done": 0, "errors": 0, "first_error": ""}
    deadline = time.perf_counter() + time_cap

    def client() -> None:
        while True:
            with lock:
                if state["issued"] >= count or time.perf_counter() >= deadline:
                    return
                index = state["issued"]
                state["issued"] += 1
            status, body = request(
                port, "POST", "/invocations", payloads[index % len(payloads)], {"Content-Type": "image/jpeg"}
            )
            with lock:
                state["done"] += 1
                if status != 200:
                    state["errors"] += 1
                    state["first_error"] = state["first_error"] or f"{status} {body[:120]!r}"

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline + REQUEST_TIMEOUT + 5 - time.perf_counter()))
    return state


def soak(server: Server, payloads: list[bytes], total: int, concurrency: int, time_cap: float) -> tuple[dict, dict]:
    """Load in phases up to each mark; memory is read between phases, with no request in
    flight (a forward pass's activations would otherwise swing a sample by +-50 MiB),
    after the allocator has settled (SETTLE_S)."""
    samples, done, errors, first_error = {}, 0, 0, ""
    deadline = time.perf_counter() + time_cap
    for mark in [m for m in SOAK_MARKS if m <= total]:
        state = load(server.port, payloads, mark - done, concurrency, max(0.0, deadline - time.perf_counter()))
        done, errors = done + state["done"], errors + state["errors"]
        first_error = first_error or state["first_error"]
        if done < mark:
            break  # out of time
        time.sleep(SETTLE_S)
        samples[mark] = memory_of(server)
    return samples, {"done": done, "errors": errors, "first_error": first_error}


# ---------------------------------------------------------------- bounds


def png(width: int, height: int, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height)).save(buffer, "PNG")
    return buffer.getvalue()


def json_of(images: list[bytes]) -> bytes:
    return json.dumps({"instances": [{"b64": base64.b64encode(image).decode()} for image in images]}).encode()


def npy_of(shape: tuple) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(shape, np.float32))
    return buffer.getvalue()


def bound_cases(photo: bytes) -> list[tuple[str, bytes, str]]:
    tiny = png(8, 8)
    six_mb_of_tiny = json_of([tiny] * ((6 * 1024 * 1024 - 100) // (len(base64.b64encode(tiny)) + 12)))
    return [
        ("JSON, 6 MB of tiny base64 PNGs (the user's body)", six_mb_of_tiny, "application/json"),
        ("JSON, 64 tiny PNGs (the default image limit)", json_of([tiny] * 64), "application/json"),
        ("JSON, 65 tiny PNGs", json_of([tiny] * 65), "application/json"),
        ("JSON, 8 photos of 500x375", json_of([photo] * 8), "application/json"),
        ("JSON, 5 PNGs of 4000x4000 (80 M pixels together)", json_of([png(4000, 4000, "L")] * 5), "application/json"),
        ("PNG decompression bomb (30000x30000, 113 KB)", decompression_bomb_png(), "image/png"),
        ("PNG strip of 1x60000 (resized: 256x15 M)", png(1, 60_000, "L"), "image/png"),
        ("NPY (8,3,224,224)", npy_of((8, 3, 224, 224)), "application/x-npy"),
        ("NPY (65,3,224,224), 39 MB under a 100 MB payload limit", npy_of((65, 3, 224, 224)), "application/x-npy"),
    ]


def run_bounds(server: Server, photo: bytes) -> list[dict]:
    rows = []
    for name, body, content_type in bound_cases(photo):
        began = time.perf_counter()
        status, answer = request(server.port, "POST", "/invocations", body, {"Content-Type": content_type})
        elapsed = (time.perf_counter() - began) * 1000
        try:
            reason = json.loads(answer).get("error", "") if status != 200 else "predictions"
        except (ValueError, AttributeError):
            reason = answer[:80].decode(errors="replace")
        rows.append(
            {
                "body": name,
                "bytes": len(body),
                "status": status,
                "ms": elapsed,
                "reason": reason,
                "alive": server.alive(),
            }
        )
    return rows


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--container", type=Path, default=CONTAINER, help="the container/ folder whose serve runs")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server (repeatable)")
    parser.add_argument("--soak-requests", type=int, default=5000)
    parser.add_argument("--soak-seconds", type=float, default=900.0)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    sections = args.sections.split(",")
    extra_env = dict(item.split("=", 1) for item in args.env)
    images = make_images()
    small, large = images["500x375"], images["1600x1200"]
    mixed = small * 3 + large[:1]  # one large photo in 13 requests
    with tempfile.TemporaryDirectory(prefix="bench-serving-memory-") as tmp:
        work = Path(tmp)
        model_dir = make_model_dir(work / "model", small)
        print(f"container: {args.container}; server env: {extra_env or 'defaults'}")
        try:
            if "readiness" in sections or "memory" in sections:
                print(
                    "\n| workers | /ping 200 after | every worker answers after | non-200 after /ping 200 "
                    "| RSS, MiB | PSS, MiB | processes |"
                )
                print("|---|---|---|---|---|---|---|")
                for workers in (1, 2, 4):
                    server = start(model_dir, work, args.container, workers, **extra_env)
                    ready = readiness(server, small[0], workers)
                    load(server.port, mixed, 80, 4, 120.0)
                    memory = memory_of(server)
                    print(
                        f"| {workers} | {ready['ping']:.1f} s | {ready['all']:.1f} s | {ready['failures']} "
                        f"| {memory['rss']:,.0f} | {memory['pss']:,.0f} | {memory['processes']} |",
                        flush=True,
                    )
                    server.stop()
            if "soak" in sections:
                server = start(model_dir, work, args.container, 2, **extra_env)
                readiness(server, small[0], 2)
                began = time.perf_counter()
                samples, state = soak(server, mixed, args.soak_requests, args.concurrency, args.soak_seconds)
                wall = time.perf_counter() - began
                print(
                    f"\nsoak: {state['done']} requests in {wall:.0f} s, {state['errors']} errors "
                    f"{state['first_error']}; 2 workers, concurrency {args.concurrency}"
                )
                print(
                    "\n| after request | RSS, MiB | PSS, MiB | vs request 500 | anonymous PSS, MiB | vs request 500 "
                    "| file-backed PSS, MiB |"
                )
                print("|---|---|---|---|---|---|---|")
                base = samples.get(SOAK_MARKS[0])
                for mark, memory in sorted(samples.items()):
                    growth = f"{100 * (memory['pss'] / base['pss'] - 1):+.1f}%" if base else "-"
                    anon = f"{100 * (memory['pss_anon'] / base['pss_anon'] - 1):+.1f}%" if base else "-"
                    print(
                        f"| {mark:,} | {memory['rss']:,.0f} | {memory['pss']:,.0f} | {growth} "
                        f"| {memory['pss_anon']:,.0f} | {anon} | {memory['pss_file']:,.0f} |"
                    )
                server.stop()
            if "bounds" in sections:
                server = start(model_dir, work, args.container, 2, SAGEMAKER_MAX_PAYLOAD_IN_MB="100", **extra_env)
                readiness(server, small[0], 2)
                print("\nbounds (defaults: 64 images and 64,000,000 pixels per request; payload limit 100 MB here)")
                print("\n| body | bytes | status | ms | answer |")
                print("|---|---|---|---|---|")
                for row in run_bounds(server, small[0]):
                    print(
                        f"| {row['body']} | {row['bytes']:,} | {row['status']} | {row['ms']:,.0f} "
                        f"| {row['reason'][:110]}{'' if row['alive'] else ' (server died)'} |"
                    )
                right_after = memory_of(server)["pss"]
                time.sleep(SETTLE_S)
                print(
                    f"\nafter the bounds: whole server {right_after:,.0f} MiB PSS, "
                    f"{memory_of(server)['pss']:,.0f} MiB {SETTLE_S:.0f} s later"
                )
                server.stop()
        finally:
            for server in list(Server.running):
                server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
