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

from benchmarks.harness import limits
from benchmarks.harness.loadgen import invoke, request, run_cell
from contract import artifact
from contract.preprocess import decode_image, eval_transform
from localnet import free_port
from server.settings import Settings

CONTAINER = Path(__file__).resolve().parents[3] / "container"
CONCURRENCY = (1, 4, 16)
START_TIMEOUT = 300.0
WARMUP_ROUNDS = 2  # requests per client thread before a cell is measured


def start_server(model_dir: Path, precision: str, log_path: Path, **extra: str) -> tuple[subprocess.Popen, int]:
    """container/serve with SAGEMAKER_MODEL_PRECISION=precision and `extra` variables, ready."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "SAGEMAKER_"))}
    env.update(
        SM_MODEL_DIR=str(model_dir),
        SAGEMAKER_BIND_HOST="127.0.0.1",
        SAGEMAKER_BIND_TO_PORT=str(port),
        SAGEMAKER_MODEL_PRECISION=precision,
        # beside the log, in the benchmark's work folder, which goes at its end: stop() kills the
        # server outright, so it never removes its own scratch folder (a converted model, ~100 MB)
        SAGEMAKER_SERVER_RUN_DIR=str(log_path.parent / f"run-{port}"),
        **extra,
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


def fp32_probabilities(model_dir: Path, images: list[bytes]) -> np.ndarray:
    model, config = artifact.load(model_dir)
    prep = artifact.preprocessing(config)
    batch = torch.from_numpy(np.stack([eval_transform(decode_image(data, prep), prep) for data in images]))
    with torch.inference_mode():
        return model(batch).softmax(1).numpy()


def top2_gap(probabilities: np.ndarray) -> np.ndarray:
    """Per image, fp32's top-1 probability minus its top-2: how close a call it was."""
    ranked = np.sort(probabilities, axis=1)
    return ranked[:, -1] - ranked[:, -2]


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
    reference_probabilities = fp32_probabilities(model_dir, images)
    reference, gaps = reference_probabilities.argmax(1), top2_gap(reference_probabilities)
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
            agrees = served_top1(port, images) == reference
            agreement = float(agrees.mean())
            # A flip is expected only where fp32 itself barely chose (the benchmark's weights are random).
            flipped_gap = float(gaps[~agrees].max()) if not agrees.all() else None
            torch.set_num_threads(base.torch_threads * base.workers)
            model = limits.served_model(model_dir, replace(base, precision=name))
            limit, batch = limits.forward_limit(model, image_size, limit_seconds)
            del model
            cells = {}
            for c in CONCURRENCY:
                run_cell(port, images, c, WARMUP_ROUNDS * c, cell_seconds)  # steady state: queues full, pools warm
                cells[c] = run_cell(port, images, c, counts[c], cell_seconds)
        finally:
            stop(process)
        rows.append(
            {
                "precision": name,
                "in_effect": in_effect,
                "limit": limit,
                "batch": batch,
                "agreement": agreement,
                "flipped_gap": flipped_gap,
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
