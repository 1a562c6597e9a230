"""A converted network behind what handlers.forward expects (float32 NCHW in, logits out,
a parameter to find the device by), compiled in the process that first runs it.

That process is a gunicorn worker (its warm-up passes, after the fork) or the converter
child: never the master, whose runtime thread pools the workers would inherit half-made.
Each thread gets its own OpenVINO infer requests; an ONNX Runtime session is safe to share
between threads.

OpenVINO with several threads compiles the network twice. A lone image runs on one stream
that uses every thread (the lowest latency). A batch is split over one single-threaded
stream per thread, run side by side: a multi-threaded pass waits at each layer for its
slowest thread, so every request thread that decodes an image beside it stalls all of
them, while a single-threaded stream loses only what it is preempted for. Measured with a
decode load beside it (docs/benchmarks.md): 1.35-1.45x the batch throughput of one stream.
The batcher runs one model thread per stream (`model_threads`), so a stream whose chunk
ends first starts the next batch rather than waiting for its sibling; a lone image takes
the all-thread stream only while no other pass runs, which it would stall.
"""

from __future__ import annotations

import threading
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from server.precision import NATIVE_BF16


class OpenVinoPair(NamedTuple):
    latency: Any  # one stream of all threads: batches of one image
    throughput: Any | None  # one stream per thread: larger batches, split; None with one thread


class RuntimeModel(nn.Module):
    def __init__(self, runtime: str, mode: str, path: str, threads: int, flags: set[str], workers: int):
        super().__init__()
        self.runtime, self.mode, self.path = runtime, mode, path
        self.threads, self.flags, self.workers = threads, set(flags), workers
        self.device_anchor = nn.Parameter(torch.empty(0), requires_grad=False)
        self._compile_lock = threading.Lock()
        self._compiled: Any = None
        self._per_thread = threading.local()
        self._running = 0  # forward passes in progress, over all model threads
        self._running_lock = threading.Lock()

    @property
    def model_threads(self) -> int:
        """How many forward passes may run at once (the batcher's model threads): one per
        OpenVINO stream; ONNX Runtime's one pool of threads runs one pass at a time."""
        return self.threads if self.runtime == "openvino" and self.threads > 1 else 1

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(inputs.detach().float().numpy())
        if self.runtime == "openvino":
            return torch.from_numpy(self._openvino(array))
        return torch.from_numpy(self.compiled().run(None, {self.compiled().get_inputs()[0].name: array})[0])

    def _openvino(self, array: np.ndarray) -> np.ndarray:
        with self._running_lock:
            alone = self._running == 0
            self._running += 1
        try:
            return self._openvino_pass(array, alone)
        finally:
            with self._running_lock:
                self._running -= 1

    def _openvino_pass(self, array: np.ndarray, alone: bool) -> np.ndarray:
        pair: OpenVinoPair = self.compiled()
        if pair.throughput is None or (len(array) < 2 and alone):
            request = getattr(self._per_thread, "latency", None)
            if request is None:
                request = self._per_thread.latency = pair.latency.create_infer_request()
            request.infer({0: array})
            return request.get_output_tensor(0).data.copy()
        requests = getattr(self._per_thread, "throughput", None)
        if requests is None:
            requests = self._per_thread.throughput = [
                pair.throughput.create_infer_request() for _ in range(self.threads)
            ]
        chunks = np.array_split(array, min(len(requests), len(array)))  # rows of a C-contiguous array: contiguous
        busy = requests[: len(chunks)]
        for request, chunk in zip(busy, chunks, strict=True):
            request.start_async({0: chunk})  # copies the chunk into the request's own input tensor
        for request in busy:
            request.wait()
        return np.concatenate([request.get_output_tensor(0).data.copy() for request in busy])

    def compiled(self):
        with self._compile_lock:
            if self._compiled is None:
                self._compiled = compile_openvino(self) if self.runtime == "openvino" else session_onnx(self)
            return self._compiled


def openvino_config(mode: str, threads: int, flags: set[str], workers: int, streams: int = 1) -> dict:
    """`threads` threads over `streams` streams; inference precision said outright, since
    OpenVINO picks bf16 by itself on CPUs that have it."""
    native_bf16 = bool(flags & set(NATIVE_BF16))
    hint = "bf16" if mode == "bf16" or (mode == "int8" and native_bf16) else "f32"
    return {
        "INFERENCE_NUM_THREADS": threads,
        "NUM_STREAMS": streams,
        "INFERENCE_PRECISION_HINT": hint,
        # each process would pin its threads to the same first cores: pin only a lone worker's
        "ENABLE_CPU_PINNING": workers == 1,
    }


def compile_openvino(model: RuntimeModel) -> OpenVinoPair:
    import openvino

    core = openvino.Core()
    latency = core.compile_model(
        model.path, "CPU", openvino_config(model.mode, model.threads, model.flags, model.workers)
    )
    if model.threads < 2:
        return OpenVinoPair(latency, None)
    config = openvino_config(model.mode, model.threads, model.flags, model.workers, streams=model.threads)
    return OpenVinoPair(latency, core.compile_model(model.path, "CPU", config))


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
