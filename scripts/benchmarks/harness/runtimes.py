"""One run, per runtime x precision (SAGEMAKER_MODEL_RUNTIME, SAGEMAKER_MODEL_PRECISION): the
in-process forward rates and the endpoint under load, on one machine.

For each mode, first in this process: the model exactly as the server's model_fn prepares it
(limits.served_model), its images/s at each batch size (the best is the limit, batch 1 is what a
lone request can get) and its top-1 agreement with fp32 torch on the photos and, when given, on a
trained model's own calibration images. Then the server for each worker count asked for (one worker,
as on a two-core endpoint, by default; container/serve, default settings otherwise), at c=1 and c=16:
req/s, p50/p99, and how much CPU the load generator (this process) and the server's processes took
meanwhile, since on a small machine they share the cores."""

from __future__ import annotations

import re
import resource
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

import proctree
from benchmarks.harness import limits
from benchmarks.harness.loadgen import run_cell
from benchmarks.harness.precisions import WARMUP_ROUNDS, start_server, stop
from contract import artifact
from contract.preprocess import decode_image, eval_transform
from server.settings import Settings

CONCURRENCY = (1, 16)


def in_effect(log_text: str) -> str:
    """What the server's log says it runs: 'openvino int8', 'torch bf16', 'torch fp32 (fallback)'."""
    for line in log_text.splitlines():
        found = re.search(r"runtime (\w+) precision (\w+) in effect", line)
        if found:
            return f"{found[1]} {found[2]}"
        found = re.search(r"precision (\w+)(?: \(compile \w+\))? in effect", line)
        if found:
            return f"torch {found[1]}"
    return "torch fp32 (fallback)"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def inputs_of(model_dir: Path, images: list[bytes]) -> torch.Tensor:
    prep = artifact.preprocessing(artifact.read_config(model_dir))
    batch = np.stack([eval_transform(decode_image(data, prep), prep) for data in images])
    return torch.from_numpy(batch).contiguous(memory_format=torch.channels_last)


def agreement(model_dir: Path, settings: Settings, images: list[bytes], model=None) -> float:
    """Top-1 agreement of the mode (`model`, else prepared here), in-process, with fp32 torch on
    `images` preprocessed as served."""
    inputs = inputs_of(model_dir, images)
    reference = limits.served_model(model_dir, replace(settings, runtime="torch", precision="fp32"))
    model = limits.served_model(model_dir, settings) if model is None else model
    with torch.inference_mode():
        return float((reference(inputs).argmax(1) == model(inputs).argmax(1)).float().mean())


def run(
    model_dir: Path,
    trained_dir: Path | None,
    images: list[bytes],
    modes: list[tuple[str, str]],
    counts: dict[int, int],
    cell_seconds: float,
    limit_seconds: float,
    work: Path,
    workers: tuple[int, ...] = (1,),
) -> list[dict]:
    base = Settings.from_env({"SM_MODEL_DIR": str(model_dir), "SAGEMAKER_MODEL_SERVER_WORKERS": "1"})
    base = replace(base, run_dir=str(work))
    image_size = artifact.preprocessing(artifact.read_config(model_dir)).image_size
    rows = []
    for runtime, precision in modes:
        name = f"{runtime} {precision}"
        settings = replace(base, runtime=runtime, precision=precision)
        torch.set_num_threads(base.torch_threads)
        model = limits.served_model(model_dir, settings)
        rates = limits.forward_rates(model, image_size, limit_seconds)
        photos_agree = agreement(model_dir, settings, images, model)
        del model
        trained_agree = None
        if trained_dir is not None:
            calibration = [path.read_bytes() for path in artifact.calibration_files(trained_dir)]
            trained_settings = replace(settings, model_dir=str(trained_dir))
            trained_agree = agreement(trained_dir, trained_settings, calibration)
        endpoints = {
            count: endpoint(model_dir, runtime, precision, count, images, counts, cell_seconds, work)
            for count in workers
        }
        row = {
            "mode": name,
            "rates": rates,
            "best": max(rates.values()),
            "best_batch": max(rates, key=lambda batch: rates[batch]),
            "batch1": rates[1],
            "agreement": photos_agree,
            "trained_agreement": trained_agree,
            "endpoints": endpoints,
        }
        rows.append(row)
        print(
            f"  {name}: best {row['best']:.1f} img/s (batch {row['best_batch']}), batch 1 {row['batch1']:.1f}; "
            + "; ".join(
                f"{count} worker(s), in effect {point['in_effect']}: "
                + ", ".join(
                    f"c={c} {cell['rps']:.1f} req/s p50 {cell['p50']:.0f} p99 {cell['p99']:.0f} ms"
                    for c, cell in point["cells"].items()
                )
                for count, point in endpoints.items()
            )
            + f"; agreement {photos_agree:.1%}",
            flush=True,
        )
    return rows


def endpoint(
    model_dir: Path,
    runtime: str,
    precision: str,
    workers: int,
    images: list[bytes],
    counts: dict[int, int],
    cell_seconds: float,
    work: Path,
) -> dict:
    """The server with `workers` workers (threads: cores / workers) under each concurrency: its cells,
    with the generator's and the server's own CPU (cores busy) during each."""
    log_path = work / f"{runtime}-{precision}-{workers}.log"
    started = time.perf_counter()
    process, port = start_server(
        model_dir, precision, log_path, SAGEMAKER_MODEL_RUNTIME=runtime, SAGEMAKER_MODEL_SERVER_WORKERS=str(workers)
    )
    ready_s = time.perf_counter() - started  # conversion and its agreement check included
    try:
        effect = in_effect(log_path.read_text())
        cells = {}
        for c in CONCURRENCY:
            run_cell(port, images, c, WARMUP_ROUNDS * c, cell_seconds)  # steady state: queues full, pools warm
            began_cpu, began_server, began = cpu_seconds(), proctree.cpu_seconds(process.pid), time.perf_counter()
            cells[c] = run_cell(port, images, c, counts[c], cell_seconds)
            elapsed = max(time.perf_counter() - began, 1e-9)
            cells[c]["generator_cores"] = (cpu_seconds() - began_cpu) / elapsed
            cells[c]["server_cores"] = (proctree.cpu_seconds(process.pid) - began_server) / elapsed
    finally:
        stop(process)
    return {"in_effect": effect, "cells": cells, "ready_s": ready_s}
