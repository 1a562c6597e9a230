#!/usr/bin/env python3
"""Asynchronous inference: one large request (a zip of photo-like JPEGs) per size, through our server
with SAGEMAKER_ASYNC_INFERENCE=true; per size the request's megabytes, seconds to the last line,
images per second, and the worker's peak RSS (VmHWM) before and after, to show memory against
request size (docs/async-inference.md).

The model is the serving benchmark's (harness/workload.py: ResNet50, 224 px), one worker.

    .venv/bin/python scripts/bench.py async-request                       # 500, 2000 and 8000 images
    .venv/bin/python scripts/bench.py async-request --counts 20,40 --tiny # a check that it runs
"""

from __future__ import annotations

import argparse
import http.client
import io
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

import container_path  # noqa: F401  (first: container/ on the import path)
from benchmarks.harness.servers import CONTAINER, Server, process_tree, server_env
from benchmarks.harness.workload import make_model_dir, synth_photo
from localnet import free_port, wait_healthy

POOL = 64  # distinct JPEGs, repeated under new names to make any count


def photo_pool(width: int, height: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    pool = []
    for _ in range(POOL):
        buffer = io.BytesIO()
        synth_photo(rng, width, height).save(buffer, format="JPEG", quality=90)
        pool.append(buffer.getvalue())
    return pool


def write_zip(path: Path, pool: list[bytes], count: int) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:  # JPEGs do not deflate
        for i in range(count):
            archive.writestr(f"photos/{i:06d}.jpg", pool[i % len(pool)])
    return path


def tiny_model_dir(path: Path) -> Path:
    import torch

    from contract import artifact
    from contract.model import Architecture, build_classifier
    from contract.preprocess import Preprocessing

    torch.manual_seed(0)
    arch = Architecture(backbone="resnet18", num_classes=4)
    artifact.save(path, build_classifier(arch).state_dict(), arch, Preprocessing.for_image_size(64), list("abcd"))
    return path


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def send(port: int, path: Path, timeout: float) -> tuple[int, int, int]:
    """-> (status, answered lines, error lines); the body streamed from the file."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    with open(path, "rb") as body:
        connection.request("POST", "/invocations", body, {"Content-Type": "application/zip"})
        response = connection.getresponse()
        lines = errors = 0
        for line in response:
            lines += 1
            errors += b'"error"' in line
    connection.close()
    return response.status, lines, errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="500,2000,8000", help="images per request, comma-separated")
    parser.add_argument("--photo", default="640x480", help="each JPEG's size, WIDTHxHEIGHT")
    parser.add_argument("--tiny", action="store_true", help="ResNet18 at 64 px and 64x48 photos: a quick check")
    parser.add_argument("--timeout-s", type=float, default=3600)
    args = parser.parse_args()
    width, height = (64, 48) if args.tiny else (int(x) for x in args.photo.split("x"))
    counts = [int(x) for x in args.counts.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-async-") as folder:
        work = Path(folder)
        pool = photo_pool(width, height)
        model_dir = tiny_model_dir(work / "model") if args.tiny else make_model_dir(work / "model", pool[:8])
        port = free_port()
        env = server_env(
            SM_MODEL_DIR=str(model_dir),
            SAGEMAKER_BIND_HOST="127.0.0.1",
            SAGEMAKER_BIND_TO_PORT=str(port),
            SAGEMAKER_MODEL_SERVER_WORKERS="1",
            SAGEMAKER_ASYNC_INFERENCE="true",
            SAGEMAKER_SERVER_RUN_DIR=str(work / "run"),
        )
        server = Server("async", [sys.executable, str(CONTAINER / "serve")], port, env, work / "server.log")
        try:
            wait_healthy(f"http://127.0.0.1:{port}", 300, interval_s=0.2)
            worker = process_tree(server.process.pid)[1]
            print("| images | request MB | seconds | images/s | worker peak RSS before, MB | after, MB |")
            print("|---|---|---|---|---|---|")
            for count in counts:
                request = write_zip(work / f"{count}.zip", pool, count)
                before = peak_rss_mb(worker)
                started = time.perf_counter()
                status, lines, errors = send(port, request, args.timeout_s)
                seconds = time.perf_counter() - started
                if status != 200 or lines != count or errors:
                    print(f"{count} images: status {status}, {lines} lines, {errors} errors:\n{server.log_tail()}")
                    return 1
                size = request.stat().st_size / (1 << 20)
                print(
                    f"| {count} | {size:.0f} | {seconds:.1f} | {count / seconds:.1f} "
                    f"| {before:.0f} | {peak_rss_mb(worker):.0f} |"
                )
                request.unlink()
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
