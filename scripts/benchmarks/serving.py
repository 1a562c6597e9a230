#!/usr/bin/env python3
"""Serving benchmark: our server against a seed-style Flask app and AWS's own stack, on this machine.

    .venv/bin/python scripts/bench.py serving [--quick] [--skip-torchserve] [--cell-seconds 40]

Three servers, each a subprocess (its own process group, stopped as a whole
at the end, on Ctrl-C or on any error) on a free port of 127.0.0.1. They start
one at a time, so each cold start is measured alone, then stay up together:
every cell (image size x concurrency) runs against the three back to back, so
load from a neighbour on a shared machine hits all three alike.

  ours  container/serve (gunicorn + Flask + dynamic batching), default settings
  (a)   scripts/benchmarks/baselines/seed_flask_app.py: one process, Flask's built-in server
        (threaded=False), PIL + torchvision transforms, fp32 (the seeds' style)
  (b)   TorchServe through AWS's sagemaker-pytorch-inference toolkit, with
        benchmarks/baselines/torchserve_inference.py as code/inference.py; needs
        build/bench-venv (see --bench-venv), which holds torch, torchvision,
        torchserve, torch-model-archiver, sagemaker-pytorch-inference,
        sagemaker-inference and pyyaml (torchserve's workers import yaml but
        the wheel does not require it):
            python3 -m venv build/bench-venv && build/bench-venv/bin/pip install \\
              torch==2.14.1 torchvision==0.29.2 torchserve torch-model-archiver \\
              sagemaker-pytorch-inference sagemaker-inference pyyaml

All three serve the same ResNet50 with a 256-unit head and 133 classes, with
seeded random weights (no weights can be downloaded here), on synthetic
photo-like JPEGs at 500x375 and 1600x1200 (no real photos offline). Per server
and image size: requests/s and p50/p90/p99 latency at concurrency 1, 4, 16
(a bounded number of requests per cell, each cell capped in time); cold start
(process start to the first 200 on /ping and to the first answered
/invocations); resident memory of the server's process tree after the load.
In-process: the model's forward time at batch 1 (the floor) and the JPEG
decode + preprocess time per size, measured around each size's cells and, for
the p50 target, paired with every concurrency-1 request (run_paired_cell: on a
shared machine the floor drifts too much to compare numbers taken minutes
apart). Our server's probabilities are checked
against the model run in-process with contract.preprocess.eval_transform.
Prints markdown tables and a verdict against the targets.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import container_path  # noqa: F401  (first: container/ on the import path)
from benchmarks.harness.comparison import fmt, report
from benchmarks.harness.floor import InProcess, decode_ms, forward_floor_ms, run_paired_cell
from benchmarks.harness.loadgen import invoke, run_cell
from benchmarks.harness.servers import (
    Server,
    seed_probabilities,
    start_ours,
    start_seed_flask,
    start_torchserve,
    torchserve_problem,
)
from benchmarks.harness.workload import make_images, make_model_dir
from contract import artifact
from contract.preprocess import decode_image, eval_transform

ROOT = Path(__file__).resolve().parents[2]

CONCURRENCY = (1, 4, 16)


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def bring_up(server: Server, images: dict[str, list[bytes]], cell_seconds: float, results: dict, check=None) -> None:
    """Cold start, the correctness check, and a warm-up that every worker sees each size in."""
    ping_s, first_s = server.cold_start(images["500x375"][0])
    print(
        f"  {server.name}: /ping 200 after {ping_s:.1f} s, first /invocations answered after {first_s:.1f} s",
        flush=True,
    )
    record = results.setdefault(server.name, {"cells": {}})
    record.update(ping_s=ping_s, first_s=first_s)
    if check:
        record["max_abs_diff"] = check(server)
    for payloads in images.values():
        run_cell(server.port, payloads, 2, 4, cell_seconds)


def interrupted(signum, frame):
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests and shorter caps (~4 minutes)")
    parser.add_argument("--cell-seconds", type=float, default=None, help="time cap per cell (default 40, quick 15)")
    parser.add_argument("--skip-torchserve", action="store_true")
    parser.add_argument("--bench-venv", type=Path, default=ROOT / "build" / "bench-venv")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs) and print its path")
    args = parser.parse_args()
    counts = {1: 10, 4: 20, 16: 20} if args.quick else {1: 40, 4: 80, 16: 80}
    cell_seconds = args.cell_seconds or (15.0 if args.quick else 40.0)
    repeats = 8 if args.quick else 20

    # Ctrl-C raises KeyboardInterrupt; SIGTERM does the same, so `finally` stops every server.
    signal.signal(signal.SIGTERM, interrupted)
    load_before = loadavg()
    began = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench_serving."))
    results: dict = {}
    notes: list[str] = []
    servers: list[Server] = []
    try:
        print(
            f"load average before: {load_before}; CPU x{len(os.sched_getaffinity(0))}, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads)",
            flush=True,
        )
        images = make_images()
        model_dir = make_model_dir(work / "model", images["500x375"][:2])
        model, config = artifact.load(model_dir)
        prep = artifact.preprocessing(config)

        def probabilities(data: bytes) -> np.ndarray:  # in this process, as the reference
            with torch.inference_mode():
                x = torch.from_numpy(eval_transform(decode_image(data, prep), prep))[None]
                return torch.softmax(model(x), 1)[0].numpy()

        def check_ours(server: Server) -> float:
            """Largest |p_server - p_in_process| over every image (full probability rows, as .npy)."""
            worst = 0.0
            for name, datas in images.items():
                for data in datas:
                    status, body = invoke(server.port, data, accept="application/x-npy")
                    if status != 200:
                        raise RuntimeError(f"ours answered {status} for a {name} image: {body[:200]!r}")
                    served = np.load(io.BytesIO(body), allow_pickle=False).reshape(-1)
                    worst = max(worst, float(np.abs(served - probabilities(data)).max()))
            print(f"  ours: max |p - p_in_process| = {worst:.2e}", flush=True)
            return worst

        def check_seed(server: Server) -> float:
            """Informational: the seeds' preprocessing differs (full decode, torchvision)."""
            worst = 0.0
            for datas in images.values():
                served = seed_probabilities(server.port, datas[0])
                if served is not None:
                    worst = max(worst, float(np.abs(served - probabilities(datas[0])).max()))
            return worst

        # Servers start one at a time (cold starts measured alone) and then all
        # stay up, idle but for their turn: each cell runs against every server
        # back to back, so a neighbour's load on this shared CPU hits all alike.
        servers.append(start_ours(model_dir, work))
        bring_up(servers[-1], images, cell_seconds, results, check_ours)
        servers.append(start_seed_flask(model_dir, work))
        bring_up(servers[-1], images, cell_seconds, results, check_seed)
        ts_problem = "skipped (--skip-torchserve)" if args.skip_torchserve else torchserve_problem(args.bench_venv)
        if ts_problem is None:
            torchserve = start_torchserve(args.bench_venv, model_dir, work)
            servers.append(torchserve)
            try:
                bring_up(torchserve, images, cell_seconds, results)
            except RuntimeError as exc:
                ts_problem = f"TorchServe failed to start: {str(exc).splitlines()[0]}"
                print(f"  {ts_problem}\n{torchserve.log_tail()}", flush=True)
                results.pop(torchserve.name, None)
                servers.remove(torchserve)
                torchserve.stop()
        if ts_problem:
            notes.append(f"(b) TorchServe not benchmarked: {ts_problem}")

        floor: dict[str, dict[str, float]] = {}
        decode: dict[str, dict[str, float]] = {}
        in_process = InProcess(model_dir, prep)
        turn = 0
        for name, payloads in images.items():
            # For the table: the floor right before and after this size's cells, with
            # every server idle; the smaller of the two. (The p50 verdict uses the
            # floor measured with each concurrency-1 request instead.)
            floor[name] = forward_floor_ms(model_dir, repeats)
            decode[name] = decode_ms({name: payloads}, prep, repeats)[name]
            for concurrency in CONCURRENCY:
                for i in range(len(servers)):
                    server = servers[(turn + i) % len(servers)]  # rotate who goes first
                    if concurrency == 1:
                        cell = run_paired_cell(server.port, payloads, counts[1], cell_seconds, in_process)
                    else:
                        cell = run_cell(server.port, payloads, concurrency, counts[concurrency], cell_seconds)
                    results[server.name]["cells"][(name, concurrency)] = cell
                    print(
                        f"  {server.name} {name} c={concurrency}: {cell['ok']} ok, {cell['errors']} errors, "
                        f"{cell['rps']:.2f} req/s, p50 {fmt(cell['p50'])} ms"
                        + (f" (first error: {cell['first_error']})" if cell["errors"] else "")
                        + (" (time cap reached)" if cell["capped"] else "")
                        + f" [load {loadavg()}]",
                        flush=True,
                    )
                turn += 1
            after = forward_floor_ms(model_dir, repeats)
            floor[name] = {key: min(value, after[key]) for key, value in floor[name].items()}
            print(f"  in-process {name}: forward {floor[name]}, decode {decode[name]}", flush=True)
        for server in servers:
            rss, processes = server.rss()
            results[server.name].update(rss_mb=rss / 2**20, processes=processes)
            if not server.alive():
                notes.append(f"{server.name} exited during the load: {server.log_tail(3)}")
        for server in list(servers):
            server.stop()
        report(results, floor, decode, images, notes, counts, cell_seconds)
    except KeyboardInterrupt:
        print("interrupted: stopping servers", file=sys.stderr)
        return 130
    finally:
        for server in list(Server.running):
            server.stop()
        if args.keep:
            print(f"work folder (logs): {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
        print(
            f"\nload average before: {load_before}; after: {loadavg()}; wall time {time.perf_counter() - began:.0f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
