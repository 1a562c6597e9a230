"""SAGEMAKER_MODEL_RUNTIME: which library runs the network's forward pass on a CPU.

    torch        the trainer's model in PyTorch (precision.py's modes): the default
    openvino     OpenVINO's CPU plugin: fp32, bf16 (its INFERENCE_PRECISION_HINT; only
                 with native bf16), int8 (FakeQuantize on every convolution, calibrated
                 on the artifact's calibration sample: openvino_model.py)
    onnxruntime  ONNX Runtime's CPU provider: fp32 (needs the onnx packages, which the
                 CPU image leaves out for its size: requirements-serve-onnx.txt)

The artifact stays the one training writes: the network is converted once at start-up,
in a child process (convert.py), which also checks it against fp32 torch on the same
images as precision.py's check. The child, not gunicorn's master, because OpenVINO's
and ONNX Runtime's thread pools (oneTBB, their own) are not known to survive a fork once
started, and converting, calibrating and checking all start them. The master only reads
the child's verdict and keeps the converted file's path; each worker compiles it after
the fork, with its own threads (served.py). So no weights are shared between workers:
with few cores, fewer workers with more threads each (SAGEMAKER_MODEL_SERVER_WORKERS).
The child dies with the master, however the master ends (server/children.py).

Whatever cannot run well falls back with a reason in the log: a precision the runtime or
the CPU cannot run well to that runtime's fp32; a runtime that is not installed, a GPU
host, a conversion that fails or answers unlike fp32 torch, to torch.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from torch import nn

from contract.preprocess import Preprocessing
from server import children, precision
from server.runtimes.choice import precision_fallback, runtime_fallback
from server.runtimes.served import RuntimeModel
from server.settings import Settings

# Converting ResNet50 and calibrating int8 takes about a minute on two cores; the master
# answers /ping 503 meanwhile.
CONVERT_TIMEOUT_S = 900
PROGRAM_DIR = Path(__file__).resolve().parents[2]
log = logging.getLogger(__name__)


def prepare(model: nn.Module, settings: Settings, model_dir, prep: Preprocessing) -> nn.Module:
    """The hook in model_fn: the network in the runtime and precision settings ask for, or
    what the fallbacks leave (logged with why)."""
    if settings.runtime == "torch":
        return precision.prepare(model, settings, model_dir, prep)
    flags = set(settings.cpu_flags.split())
    reason = runtime_fallback(settings.runtime, settings.gpus, multi_model=settings.multi_model)
    if reason:
        log.warning("SAGEMAKER_MODEL_RUNTIME=%s falls back to torch: %s", settings.runtime, reason)
        return precision.prepare(model, settings, model_dir, prep)
    if settings.compile != "none":
        log.info(
            "SAGEMAKER_MODEL_COMPILE=%s is a torch mode: %s compiles by itself", settings.compile, settings.runtime
        )
    calibration = len(precision.calibration_inputs(model_dir, prep))
    mode = settings.precision
    reason = precision_fallback(settings.runtime, mode, flags, calibration)
    if reason:
        log.warning(
            "SAGEMAKER_MODEL_RUNTIME=%s SAGEMAKER_MODEL_PRECISION=%s falls back to fp32: %s",
            settings.runtime,
            mode,
            reason,
        )
        mode = "fp32"
    out_dir = tempfile.mkdtemp(prefix=f"{settings.runtime}-", dir=settings.run_dir)
    verdict = convert_in_child(model_dir, settings.runtime, mode, out_dir, settings)
    if "error" in verdict:
        log.warning("runtime %s precision %s falls back to torch fp32: %s", settings.runtime, mode, verdict["error"])
        shutil.rmtree(out_dir, ignore_errors=True)  # what the converter left: torch serves
        return model
    check = precision.Check(verdict["images"], verdict["agreeing"], verdict["max_prob_diff"], verdict["source"])
    name = f"runtime {settings.runtime} precision {mode}"
    if not verdict["finite"] or check.agreement < precision.MIN_AGREEMENT:
        log.warning("%s falls back to torch fp32: its outputs are wrong, %s", name, check.describe())
        shutil.rmtree(out_dir, ignore_errors=True)
        return model
    log.info("%s in effect: %s (CPU flags: %s)", name, check.describe(), settings.cpu_flags or "none known")
    return RuntimeModel(settings.runtime, mode, verdict["path"], settings.torch_threads, flags, settings.workers)


def convert_in_child(model_dir, runtime: str, mode: str, out_dir: str, settings: Settings) -> dict:
    """convert.py's verdict (a dict with "error" when it failed), bounded in time."""
    request = {
        "model_dir": str(model_dir),
        "runtime": runtime,
        "precision": mode,
        "out_dir": out_dir,
        "threads": max(1, settings.torch_threads * settings.workers),  # no worker runs yet: all cores
        "cpu_flags": settings.cpu_flags,
        "parent_pid": os.getpid(),  # the child dies with it (children.die_with_parent)
    }
    command = [sys.executable, "-m", "server.runtimes.convert", json.dumps(request)]
    # the folder that holds server/ and contract/, whoever started this process (serve, a benchmark)
    path = os.pathsep.join(filter(None, [str(PROGRAM_DIR), os.environ.get("PYTHONPATH")]))
    # Kept by server.children: a master stopped while this runs kills it before exiting, and the child
    # dies with the master (and this thread, which waits for it) however the master ends.
    converter = children.start(command, env={**os.environ, "PYTHONPATH": path}, stdout=subprocess.PIPE)
    try:
        output, _ = converter.communicate(timeout=CONVERT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        converter.kill()
        converter.communicate()
        return {"error": f"converting took longer than {CONVERT_TIMEOUT_S} s"}
    finally:
        children.finished(converter)
    lines = output.decode(errors="replace").strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError):
        return {"error": f"the converter exited with {converter.returncode} and no verdict (its log is above)"}
