"""Why a runtime, or a precision in a runtime, cannot run well here (None: it can).

Pure functions of what settings.py knows (the CPU's flags, the GPU count) and whether the
runtime's package is installed, so each fallback is testable with simulated flags.
"""

from __future__ import annotations

import importlib.util

from server.precision import fallback_reason

# runtime -> the Python modules it needs in this image
MODULES = {"openvino": ("openvino",), "onnxruntime": ("onnxruntime", "onnx")}
# runtime -> the precisions it serves
PRECISIONS = {"openvino": ("fp32", "bf16", "int8"), "onnxruntime": ("fp32",)}


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def runtime_fallback(runtime: str, gpus: int, is_installed=installed, multi_model: bool = False) -> str | None:
    """Why `runtime` cannot serve on this host: then torch serves."""
    if gpus:
        return f"{runtime} runs on the CPU here and this host serves on its GPU"
    if multi_model:  # each worker loads each model in a request: a conversion there would take minutes
        return (
            f"a multi-model endpoint loads its models in its workers, where converting each for {runtime} "
            "would hold its first request for minutes"
        )
    missing = [module for module in MODULES[runtime] if not is_installed(module)]
    if missing:
        return (
            f"the Python package{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            "is not installed in this image (docs/serving.md, Runtimes)"
        )
    return None


def precision_fallback(runtime: str, precision: str, flags: set[str], calibration: int) -> str | None:
    """Why `precision` cannot run well in `runtime` on this CPU: then the runtime's fp32 serves."""
    if precision not in PRECISIONS[runtime]:
        if precision == "fp16":
            return "fp16 runs fast on GPUs only and this host has none"
        return f"{runtime} serves {', '.join(PRECISIONS[runtime])} here"
    # the rest (bf16 needs the CPU's instructions, int8 a calibration sample) holds for every runtime
    return fallback_reason(precision, "none", flags, gpus=0, calibration=calibration)
