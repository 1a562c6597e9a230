"""What the machine can do without a server: its CPU's instruction sets, the
in-process forward limit of a precision (best batch size, channels-last), and
what decoding and resizing one image costs (with and without JPEG draft mode)."""

from __future__ import annotations

import io
import time

import torch
from PIL import Image

from benchmarks.harness.floor import median_ms
from contract import artifact
from contract.preprocess import decode_image, eval_transform
from server import runtimes
from server.settings import PRECISION_FLAGS, Settings

BATCH_SIZES = (1, 4, 8, 16)


def cpu_flags() -> str:
    return Settings.from_env({"SAGEMAKER_MODEL_SERVER_WORKERS": "1"}).cpu_flags


def served_model(model_dir, settings: Settings) -> torch.nn.Module:
    """The model exactly as the server's model_fn prepares it for `settings`."""
    model, config = artifact.load(model_dir)
    model = model.eval().to(memory_format=torch.channels_last)
    return runtimes.prepare(model, settings, model_dir, artifact.preprocessing(config))


def forward_limit(model: torch.nn.Module, image_size: int, seconds: float) -> tuple[float, int]:
    """(images/s at the best batch size, that batch size), each size run for about `seconds`."""
    rates = forward_rates(model, image_size, seconds)
    return max((rate, batch) for batch, rate in rates.items())


def forward_rates(model: torch.nn.Module, image_size: int, seconds: float) -> dict[int, float]:
    """{batch size: images/s}, each size run for about `seconds`."""
    rates = {}
    with torch.inference_mode():
        for batch in BATCH_SIZES:
            x = torch.randn(batch, 3, image_size, image_size).contiguous(memory_format=torch.channels_last)
            model(x)  # first pass: kernel choice, buffers
            done, began = 0, time.perf_counter()
            while time.perf_counter() - began < seconds or done < 2 * batch:
                model(x)
                done += batch
            rates[batch] = done / (time.perf_counter() - began)
    return rates


def decode_ms(data: bytes, prep, repeats: int = 10) -> dict[str, float]:
    """Median ms of decode + eval_transform: ours (draft-mode JPEG) and a full decode."""
    return {
        "draft": median_ms(lambda: eval_transform(decode_image(data, prep), prep), repeats, warmup=0),
        "full": median_ms(lambda: eval_transform(Image.open(io.BytesIO(data)).convert("RGB"), prep), repeats, warmup=0),
    }


__all__ = ["BATCH_SIZES", "PRECISION_FLAGS", "cpu_flags", "decode_ms", "forward_limit", "forward_rates", "served_model"]
