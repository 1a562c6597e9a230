"""One run, per precision: the in-process forward limit and the endpoint under load, on one machine.

Servers start one at a time (container/serve, default settings but for
SAGEMAKER_MODEL_PRECISION) on a free port of 127.0.0.1 and are stopped as a
whole; the limit is measured right before each precision's cells, on the
model exactly as the server's model_fn prepares it."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from contract import artifact
from contract.preprocess import decode_image, eval_transform
from localnet import free_port
from server.settings import Settings
from serving_bench import limits
from serving_bench.loadgen import invoke, request, run_cell

CONTAINER = Path(__file__).resolve().parents[2] / "container"
CONCURRENCY = (1, 4, 16)
START_TIMEOUT = 300.0


def start_server(model_dir: Path, precision: str, log_path: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "SAGEMAKER_"))}
    env.update(
        SM_MODEL_DIR=str(model_dir),
        SAGEMAKER_BIND_HOST="127.0.0.1",
        SAGEMAKER_BIND_TO_PORT=str(port),
        SAGEMAKER_MODEL_PRECISION=precision,
    )
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, str(CONTAINER / "serve")],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + START_TIMEOUT
    while request(port, "GET", "/ping", timeout=5)[0] != 200:
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process)
            raise RuntimeError(f"{precision} server not ready: {log_path.read_text()[-2000:]}")
        time.sleep(0.5)
    return process, port


def stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)


def fp32_top1(model_dir: Path, images: list[bytes]) -> np.ndarray:
    model, config = artifact.load(model_dir)
    prep = artifact.preprocessing(config)
    batch = torch.from_numpy(np.stack([eval_transform(decode_image(data, prep), prep) for data in images]))
    with torch.inference_mode():
        return model(batch).argmax(1).numpy()


def served_top1(port: int, images: list[bytes]) -> np.ndarray:
    rows = []
    for data in images:
        status, body = invoke(port, data, accept="application/x-npy")
        if status != 200:
            raise RuntimeError(f"{status}: {body[:200]!r}")
        rows.append(np.load(io.BytesIO(body)).reshape(-1))
    return np.stack(rows).argmax(1)


def run(
    model_dir: Path,
    images: list[bytes],
    precisions: list[str],
    counts: dict[int, int],
    cell_seconds: float,
    limit_seconds: float,
    work: Path,
) -> list[dict]:
    base = Settings.from_env({"SM_MODEL_DIR": str(model_dir), "SAGEMAKER_MODEL_SERVER_WORKERS": "1"})
    image_size = artifact.preprocessing(artifact.read_config(model_dir)).image_size
    reference = fp32_top1(model_dir, images)
    rows = []
    for name in precisions:
        process, port = start_server(model_dir, name, work / f"{name}.log")
        try:
            in_effect = next(
                (
                    line.split("precision ", 1)[1].split(" in effect")[0]
                    for line in (work / f"{name}.log").read_text().splitlines()
                    if " in effect" in line
                ),
                "fp32 (fallback)",
            )
            agreement = float((served_top1(port, images) == reference).mean())
            torch.set_num_threads(base.torch_threads * base.workers)
            model = limits.served_model(model_dir, replace(base, precision=name))
            limit, batch = limits.forward_limit(model, image_size, limit_seconds)
            del model
            cells = {c: run_cell(port, images, c, counts[c], cell_seconds) for c in CONCURRENCY}
        finally:
            stop(process)
        rows.append(
            {
                "precision": name,
                "in_effect": in_effect,
                "limit": limit,
                "batch": batch,
                "agreement": agreement,
                "cells": cells,
            }
        )
        print(
            f"  {name}: in effect {in_effect}; limit {limit:.1f} img/s (batch {batch}); "
            + ", ".join(
                f"c={c} {cell['rps']:.1f} req/s p50 {cell['p50']:.0f} p99 {cell['p99']:.0f} ms"
                for c, cell in cells.items()
            )
            + f"; agreement {agreement:.1%}",
            flush=True,
        )
    return rows
