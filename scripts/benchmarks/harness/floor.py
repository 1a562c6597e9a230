"""In-process references for the comparison benchmark: the forward pass's floor, JPEG decode +
preprocess per size, and concurrency-1 cells paired request by request with the floor."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.harness.loadgen import cell_summary, invoke
from contract import artifact
from contract.preprocess import Preprocessing, decode_image, eval_transform


def median_ms(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def forward_floor_ms(model_dir: Path, repeats: int) -> dict[str, float]:
    """Batch-1 forward time of the model alone: channels_last (as our server
    runs it) and contiguous (as the seeds run it)."""
    model, config = artifact.load(model_dir)
    size = artifact.preprocessing(config).image_size
    x = torch.randn(1, 3, size, size)
    result = {}
    with torch.inference_mode():
        result["contiguous"] = median_ms(lambda: model(x), repeats)
        model_cl = model.to(memory_format=torch.channels_last)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        result["channels_last"] = median_ms(lambda: model_cl(x_cl), repeats)
    return result


def decode_ms(images: dict[str, list[bytes]], prep: Preprocessing, repeats: int) -> dict[str, dict[str, float]]:
    """Per size: our decode (draft-mode JPEG) + eval_transform, and the seeds'
    PIL decode + torchvision transforms."""
    from torchvision import transforms

    seed_transform = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    result = {}
    for name, datas in images.items():
        data = datas[0]
        ours = median_ms(lambda data=data: torch.from_numpy(eval_transform(decode_image(data, prep), prep)), repeats)
        seeds = median_ms(lambda data=data: seed_transform(Image.open(io.BytesIO(data)).convert("RGB")), repeats)
        result[name] = {"ours": ours, "seeds": seeds}
    return result


class InProcess:
    """The model run in this process as our server runs it (channels_last, batch 1): the floor."""

    def __init__(self, model_dir: Path, prep: Preprocessing):
        model, _ = artifact.load(model_dir)
        self.model, self.prep = model.eval().to(memory_format=torch.channels_last), prep

    def measure(self, data: bytes) -> tuple[float, float]:
        """(decode + preprocess ms, forward ms) for one payload."""
        began = time.perf_counter()
        x = torch.from_numpy(eval_transform(decode_image(data, self.prep), self.prep))[None]
        decoded = time.perf_counter()
        with torch.inference_mode():
            self.model(x.contiguous(memory_format=torch.channels_last))
        return (decoded - began) * 1000, (time.perf_counter() - decoded) * 1000


def run_paired_cell(port: int, payloads: list[bytes], count: int, time_cap: float, floor: InProcess) -> dict:
    """Concurrency 1, each request right after the in-process decode and forward of the same image.

    The floor and the request then see the same machine: on a shared host the
    speed of a forward pass drifts by a third within minutes, so a floor
    measured before or after the cell misjudges the server's overhead."""
    latencies, decodes, forwards, errors = [], [], [], []
    deadline = time.perf_counter() + time_cap
    for index in range(count):
        if time.perf_counter() >= deadline:
            break
        data = payloads[index % len(payloads)]
        decode_ms, forward_ms = floor.measure(data)
        time.sleep(0.005)  # let this process's idle OpenMP threads stop spinning before the request
        began = time.perf_counter()
        status, body = invoke(port, data)
        elapsed = time.perf_counter() - began
        if status == 200:
            latencies.append(elapsed)
            decodes.append(decode_ms)
            forwards.append(forward_ms)
        else:
            errors.append(f"{status} {body[:120]!r}")
    wall = sum(latencies)  # request time only: the in-process work between requests is not the server's
    return {
        **cell_summary(latencies, errors, wall, count),
        "floor_ms": float(np.median(forwards)) if forwards else float("nan"),
        "decode_ms": float(np.median(decodes)) if decodes else float("nan"),
    }
