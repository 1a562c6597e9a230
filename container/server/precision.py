"""The numbers the served model runs in: SAGEMAKER_MODEL_PRECISION and SAGEMAKER_MODEL_COMPILE.

    fp32  the trainer's model as it is (the default)
    bf16  batch norm folded into the convolutions, weights and activations in
          bfloat16, channels-last. Only where the CPU has native bf16
          instructions (AVX-512 BF16 or AMX): elsewhere bf16 runs several times
          slower than fp32, so it falls back to fp32 with a warning. On a GPU, always.
    fp16  GPU only (CPUs here have no fast fp16 path): falls back on a CPU.
    int8  PyTorch's static quantization for x86 (FX graph mode, the x86
          backend: fbgemm with VNNI where the CPU has it, AVX2 kernels where
          not), calibrated on the artifact's calibration sample, which the
          trainer writes (contract/artifact.py). Calibrating on anything else
          loses top-1 agreement, so without a sample int8 falls back to fp32.
          CPU only. torch.ao.quantization warns that it is deprecated in favour
          of torchao's PT2E; it is what torch 2.14's wheel still ships.
    jit   (SAGEMAKER_MODEL_COMPILE) torch.jit.trace + freeze: folds batch norm and
          fuses oneDNN ops; needs no C++ compiler, unlike torch.compile's
          inductor, which the slim image could not run. CPU only.

On a CPU host all of it happens in gunicorn's master at load time, before the
fork, so the workers share the converted weights; on a GPU host each worker
converts and checks on its own GPU (preload.py). Each mode is then checked against fp32
on up to CHECK_IMAGES images (the calibration sample, else synthetic ones):
top-1 agreement and the largest probability difference are logged with the
mode's name, and a mode whose outputs are not finite or mostly disagree falls
back to fp32. The master runs these passes with one torch thread (preload.py):
no OpenMP pool exists before the fork.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from contract import artifact
from contract.preprocess import ImageDecodeError, Preprocessing, decode_image, eval_transform
from server.settings import Settings

NATIVE_BF16 = ("avx512_bf16", "amx_bf16")
VNNI = ("avx512_vnni", "avx_vnni", "amx_int8")
CHECK_IMAGES = 8
# Below this share of agreeing top-1 labels on the check images the mode is broken, not merely rounded.
MIN_AGREEMENT = 0.75
GPU_ONLY, CPU_ONLY = {"fp16"}, {"int8"}
log = logging.getLogger(__name__)


@dataclass
class Check:
    images: int
    agreeing: int
    max_prob_diff: float
    source: str

    @property
    def agreement(self) -> float:
        return self.agreeing / self.images

    def describe(self) -> str:
        return (
            f"top-1 agreement with fp32 {self.agreeing}/{self.images}, largest probability difference "
            f"{self.max_prob_diff:.4f} on {self.images} {self.source} images"
        )


class ServedModel(nn.Module):
    """A converted network behind what handlers.forward expects: float32
    channels-last in, float logits out, and a parameter to find the device by
    (a quantized or frozen graph has none)."""

    def __init__(self, network: nn.Module, input_dtype: torch.dtype, mode: str):
        super().__init__()
        self.network = network
        self.input_dtype = input_dtype
        self.mode = mode
        self.device_anchor = nn.Parameter(torch.empty(0), requires_grad=False)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.network(inputs.to(self.input_dtype)).float()


def fallback_reason(precision: str, compile_mode: str, flags: set[str], gpus: int, calibration: int) -> str | None:
    """Why `precision` cannot run well here, or None."""
    if precision in GPU_ONLY and not gpus:
        return f"{precision} runs fast on GPUs only and this host has none"
    if precision in CPU_ONLY and gpus:
        return f"{precision} is a CPU mode and this host serves on its GPU"
    if precision == "bf16" and not gpus and not flags & set(NATIVE_BF16):
        return (
            f"this CPU has no native bf16 instructions (none of {', '.join(NATIVE_BF16)} in its flags: "
            f"{' '.join(sorted(flags)) or 'none known'}), where bf16 runs slower than fp32"
        )
    if precision == "int8" and not calibration:
        return (
            f"int8 calibrates on the model's {artifact.CALIBRATION_DIR}/*.jpg sample, which training writes, "
            "and this model has none"
        )
    if compile_mode == "jit" and gpus:
        return "jit freezes CPU kernels and this host serves on its GPU"
    return None


def prepare(model: nn.Module, settings: Settings, model_dir, prep: Preprocessing) -> nn.Module:
    """The hook in model_fn: `model` (fp32, eval, channels-last) in the mode settings
    ask for, or as it is when that mode cannot run well here (logged with why)."""
    flags = set(settings.cpu_flags.split())
    calibration = calibration_inputs(model_dir, prep)
    reason = fallback_reason(settings.precision, settings.compile, flags, settings.gpus, len(calibration))
    if reason:
        log.warning(
            "SAGEMAKER_MODEL_PRECISION=%s SAGEMAKER_MODEL_COMPILE=%s falls back to fp32: %s",
            settings.precision,
            settings.compile,
            reason,
        )
        return model
    if settings.precision == "fp32" and settings.compile == "none":
        log.info("precision fp32 in effect (compile none; CPU flags: %s)", settings.cpu_flags or "none known")
        return model
    if settings.precision == "int8" and not flags & set(VNNI):
        log.info("int8 without VNNI on this CPU: AVX2 kernels, usually still faster than fp32")
    inputs = calibration[:CHECK_IMAGES] if len(calibration) else synthetic_inputs(prep)
    inputs = inputs.to(next(model.parameters()).device)  # checked where it serves: a GPU worker's GPU
    source = "calibration" if len(calibration) else "synthetic"
    with torch.inference_mode():
        reference = torch.softmax(model(inputs), 1)
    served = convert(model, settings.precision, settings.compile, calibration)
    with torch.inference_mode():
        probabilities = torch.softmax(served(inputs).float(), 1)
    check = compare(reference, probabilities, source)
    mode = f"precision {settings.precision} (compile {settings.compile})"
    if not torch.isfinite(probabilities).all() or check.agreement < MIN_AGREEMENT:
        log.warning("%s falls back to fp32: its outputs are wrong, %s", mode, check.describe())
        return model
    log.info("%s in effect: %s (CPU flags: %s)", mode, check.describe(), settings.cpu_flags or "none known")
    return served


def convert(model: nn.Module, precision: str, compile_mode: str, calibration: torch.Tensor) -> nn.Module:
    if precision == "int8":
        network, dtype = quantize_int8(model, calibration), torch.float32
    elif precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        network = fold_batch_norm(model).to(dtype).to(memory_format=torch.channels_last)
    else:
        network, dtype = model, torch.float32
    if compile_mode == "jit":
        network = freeze(network, dtype, calibration)
    return ServedModel(network, dtype, precision)


def fold_batch_norm(model: nn.Module) -> nn.Module:
    """Batch norm folded into the convolution before it: fewer ops, and no
    normalisation statistics rounded to 16 bits."""
    from torch.fx.experimental.optimization import fuse

    return fuse(model)


def quantize_int8(model: nn.Module, calibration: torch.Tensor) -> nn.Module:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    with warnings.catch_warnings():  # torch.ao's deprecation notes, one per observer (see the docstring)
        warnings.simplefilter("ignore")
        observed = prepare_fx(model, get_default_qconfig_mapping("x86"), (calibration[:1],))
        with torch.inference_mode():
            for batch in calibration.split(CHECK_IMAGES):
                observed(batch)
        return convert_fx(observed)


def freeze(network: nn.Module, dtype: torch.dtype, calibration: torch.Tensor) -> nn.Module:
    example = torch.zeros(1, *calibration.shape[1:], dtype=dtype)
    example = example.contiguous(memory_format=torch.channels_last)
    with warnings.catch_warnings():  # torch.jit's deprecation notes: see the docstring
        warnings.simplefilter("ignore")
        with torch.no_grad():
            return torch.jit.freeze(torch.jit.trace(network.eval(), example))


def compare(reference: torch.Tensor, probabilities: torch.Tensor, source: str) -> Check:
    agreeing = int((reference.argmax(1) == probabilities.argmax(1)).sum())
    diff = float((reference - probabilities).abs().max()) if torch.isfinite(probabilities).all() else float("inf")
    return Check(len(reference), agreeing, diff, source)


def calibration_inputs(model_dir, prep: Preprocessing) -> torch.Tensor:
    """The artifact's calibration sample, preprocessed as requests are: (N,3,S,S), N may be 0."""
    arrays = []
    for path in artifact.calibration_files(model_dir):
        try:
            arrays.append(eval_transform(decode_image(Path(path).read_bytes(), prep), prep))
        except ImageDecodeError:
            log.warning("calibration image %s is unreadable: skipped", path)
    if not arrays:
        return torch.zeros(0, 3, prep.image_size, prep.image_size)
    return torch.from_numpy(np.stack(arrays)).contiguous(memory_format=torch.channels_last)


def synthetic_inputs(prep: Preprocessing) -> torch.Tensor:
    """Smooth seeded colour fields, for the check when the artifact has no calibration sample."""
    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand(CHECK_IMAGES, 3, 4, 4, generator=generator) * 4 - 2
    inputs = nn.functional.interpolate(coarse, size=(prep.image_size,) * 2, mode="bicubic", align_corners=False)
    return inputs.contiguous(memory_format=torch.channels_last)
