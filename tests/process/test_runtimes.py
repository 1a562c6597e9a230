"""SAGEMAKER_MODEL_RUNTIME against the real server: each runtime x precision in effect (the log
says which), its answers against fp32 torch on a trained model and the data set's own test images,
and each fallback with its reason. The CPU's instruction sets are simulated through
SAGEMAKER_CPU_FLAGS (settings.cpu_flags reads /proc/cpuinfo otherwise), the GPU count through
SM_NUM_GPUS. No speed is asserted here: scripts/bench.py runtimes measures it.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from helpers.serving import Reference, ServerProcess, assert_like_fp32, served_probabilities
from helpers.training import train_converged_model
from server.precision import NATIVE_BF16
from server.settings import cpu_flags


@pytest.fixture(scope="module")
def trained_model(sample_data, tmp_path_factory):
    return train_converged_model(tmp_path_factory.mktemp("runtimes"), sample_data)


@pytest.mark.parametrize(
    "runtime, precision, flags, workers, atol",
    [
        ("openvino", "fp32", "avx2", "2", 1e-4),  # two workers: each compiles after the fork
        ("openvino", "bf16", "avx2 avx512_bf16", "1", 0.03),
        ("openvino", "int8", "avx2 avx512_vnni", "1", 0.3),
        ("onnxruntime", "fp32", "avx2", "1", 1e-4),
    ],
)
def test_runtime_in_effect_agrees_with_fp32_torch(
    runtime, precision, flags, workers, atol, trained_model, sample_images, serve
):
    if precision == "bf16" and not set(cpu_flags().split()) & set(NATIVE_BF16):
        pytest.skip("OpenVINO runs its bf16 hint as fp32 on a CPU without native bf16: nothing to tell apart")
    server = serve(
        trained_model,
        SAGEMAKER_MODEL_RUNTIME=runtime,
        SAGEMAKER_MODEL_PRECISION=precision,
        SAGEMAKER_CPU_FLAGS=flags,
        SAGEMAKER_MODEL_SERVER_WORKERS=workers,
    )
    pids = server.wait_for_workers(int(workers))
    deadline = time.monotonic() + 120  # each compiles its own copy in its warm-up, before it accepts
    while not all(f"worker {pid} ready" in server.log() for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert all(f"worker {pid} ready" in server.log() for pid in pids), server.log()
    assert f"runtime {runtime} precision {precision} in effect: top-1 agreement with fp32" in server.log()
    expected = Reference(trained_model).for_images(*sample_images)
    assert_like_fp32(served_probabilities(server, sample_images), expected, precision, atol)
    assert "falls back" not in server.log()


@pytest.mark.parametrize(
    "runtime, precision, env, reason, in_effect",
    [
        (
            "openvino",
            "bf16",
            {"SAGEMAKER_CPU_FLAGS": "avx2 avx512_vnni"},
            "SAGEMAKER_MODEL_PRECISION=bf16 falls back to fp32: this CPU has no native bf16 instructions",
            "runtime openvino precision fp32 in effect",
        ),
        (
            "openvino",
            "fp16",
            {"SAGEMAKER_CPU_FLAGS": "avx2 avx512_bf16"},
            "SAGEMAKER_MODEL_PRECISION=fp16 falls back to fp32: fp16 runs fast on GPUs only",
            "runtime openvino precision fp32 in effect",
        ),
        (
            "onnxruntime",
            "int8",
            {"SAGEMAKER_CPU_FLAGS": "avx2 avx512_vnni"},
            "SAGEMAKER_MODEL_PRECISION=int8 falls back to fp32: onnxruntime serves fp32 here",
            "runtime onnxruntime precision fp32 in effect",
        ),
        (
            "openvino",
            "fp32",
            {"SM_NUM_GPUS": "1"},  # counted, not used: torch finds no CUDA and serves on the CPU
            "SAGEMAKER_MODEL_RUNTIME=openvino falls back to torch: openvino runs on the CPU here and this host "
            "serves on its GPU",
            "precision fp32 in effect (compile none",
        ),
    ],
)
def test_what_cannot_run_well_falls_back_with_a_reason(
    runtime, precision, env, reason, in_effect, trained_model, sample_images, serve
):
    server = serve(trained_model, SAGEMAKER_MODEL_RUNTIME=runtime, SAGEMAKER_MODEL_PRECISION=precision, **env)
    assert reason in server.log()
    assert in_effect in server.log()
    expected = Reference(trained_model).for_images(*sample_images[:4])
    np.testing.assert_allclose(served_probabilities(server, sample_images[:4]), expected, atol=1e-4)


def test_unknown_runtime_is_refused_by_name(trained_model, tmp_path):
    server = ServerProcess(trained_model, tmp_path / "server.log", SAGEMAKER_MODEL_RUNTIME="tensorrt")
    try:
        assert server.process.wait(timeout=60) != 0
    finally:
        server.stop()
    assert "SAGEMAKER_MODEL_RUNTIME='tensorrt': expected one of torch, openvino, onnxruntime" in server.log()
