"""A converted network behind what handlers.forward expects (float32 NCHW in, logits out,
a parameter to find the device by), compiled in the process that first runs it.

That process is a gunicorn worker (its warm-up passes, after the fork) or the converter
child: never the master, whose runtime thread pools the workers would inherit half-made.
Each thread gets its own OpenVINO infer request (one runs at a time); an ONNX Runtime
session is safe to share between threads.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import torch
from torch import nn

from server.precision import NATIVE_BF16


class RuntimeModel(nn.Module):
    def __init__(self, runtime: str, mode: str, path: str, threads: int, flags: set[str], workers: int):
        super().__init__()
        self.runtime, self.mode, self.path = runtime, mode, path
        self.threads, self.flags, self.workers = threads, set(flags), workers
        self.device_anchor = nn.Parameter(torch.empty(0), requires_grad=False)
        self._compile_lock = threading.Lock()
        self._compiled: Any = None
        self._per_thread = threading.local()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(inputs.detach().float().numpy())
        if self.runtime == "openvino":
            request = getattr(self._per_thread, "request", None)
            if request is None:
                request = self._per_thread.request = self.compiled().create_infer_request()
            request.infer({0: array})
            return torch.from_numpy(request.get_output_tensor(0).data.copy())
        return torch.from_numpy(self.compiled().run(None, {self.compiled().get_inputs()[0].name: array})[0])

    def compiled(self):
        with self._compile_lock:
            if self._compiled is None:
                self._compiled = compile_openvino(self) if self.runtime == "openvino" else session_onnx(self)
            return self._compiled


def openvino_config(mode: str, threads: int, flags: set[str], workers: int) -> dict:
    """One stream of `threads` threads (the batcher runs one forward pass at a time per worker);
    inference precision said outright, since OpenVINO picks bf16 by itself on CPUs that have it."""
    native_bf16 = bool(flags & set(NATIVE_BF16))
    hint = "bf16" if mode == "bf16" or (mode == "int8" and native_bf16) else "f32"
    return {
        "INFERENCE_NUM_THREADS": threads,
        "NUM_STREAMS": 1,
        "INFERENCE_PRECISION_HINT": hint,
        # each process would pin its threads to the same first cores: pin only a lone worker's
        "ENABLE_CPU_PINNING": workers == 1,
    }


def compile_openvino(model: RuntimeModel):
    import openvino

    config = openvino_config(model.mode, model.threads, model.flags, model.workers)
    return openvino.Core().compile_model(model.path, "CPU", config)


def session_onnx(model: RuntimeModel):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = model.threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning threads between passes would take the cores the request threads decode on.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(model.path, options, providers=["CPUExecutionProvider"])
