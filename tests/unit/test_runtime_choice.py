"""Which runtime and precision can run well here (server/runtimes/choice.py), and how a worker
compiles OpenVINO (served.openvino_config): from simulated CPU flags, GPU counts and packages."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.runtimes.choice import precision_fallback, runtime_fallback
from server.runtimes.served import openvino_config


def test_a_gpu_host_or_a_missing_package_serves_with_torch():
    assert "this host serves on its GPU" in runtime_fallback("openvino", gpus=1, is_installed=lambda _: True)
    reason = runtime_fallback("onnxruntime", gpus=0, is_installed=lambda module: module != "onnx")
    assert reason == "the Python package onnx is not installed in this image (docs/serving.md, Runtimes)"
    assert "package openvino is not installed" in runtime_fallback("openvino", 0, is_installed=lambda _: False)
    assert runtime_fallback("openvino", gpus=0, is_installed=lambda _: True) is None


@pytest.mark.parametrize(
    "runtime, precision, flags, calibration, reason",
    [
        ("openvino", "fp32", set(), 0, None),
        ("openvino", "bf16", {"avx512_bf16"}, 0, None),
        ("openvino", "bf16", {"amx_bf16"}, 0, None),
        ("openvino", "bf16", {"avx2", "avx512_vnni"}, 0, "no native bf16 instructions"),
        ("openvino", "int8", {"avx2"}, 64, None),
        ("openvino", "int8", {"avx2"}, 0, "this model has none"),
        ("openvino", "fp16", {"avx512_bf16"}, 64, "GPUs only"),
        ("onnxruntime", "int8", {"avx512_vnni"}, 64, "onnxruntime serves fp32 here"),
        ("onnxruntime", "bf16", {"avx512_bf16"}, 64, "onnxruntime serves fp32 here"),
    ],
)
def test_precision_fallback(runtime, precision, flags, calibration, reason):
    found = precision_fallback(runtime, precision, flags, calibration)
    assert found is None if reason is None else reason in found


@pytest.mark.parametrize(
    "mode, flags, hint",
    [
        ("fp32", {"avx512_bf16"}, "f32"),  # OpenVINO would pick bf16 by itself on this CPU
        ("bf16", {"avx512_bf16"}, "bf16"),
        ("int8", {"avx512_bf16"}, "bf16"),  # what is not quantized runs in the CPU's fast type
        ("int8", {"avx2"}, "f32"),
    ],
)
def test_openvino_precision_is_said_outright(mode, flags, hint):
    assert openvino_config(mode, 2, flags, workers=1)["INFERENCE_PRECISION_HINT"] == hint


def test_openvino_pins_threads_only_in_a_lone_worker():
    assert openvino_config("fp32", 2, set(), workers=1)["ENABLE_CPU_PINNING"] is True
    config = openvino_config("fp32", 1, set(), workers=2)
    assert config["ENABLE_CPU_PINNING"] is False and config["INFERENCE_NUM_THREADS"] == 1 and config["NUM_STREAMS"] == 1


def test_a_multi_model_endpoint_serves_with_torch():
    """Its workers load each model inside a request: converting there would hold that request for minutes,
    again at every reload, and leave a converted copy behind each time."""
    reason = runtime_fallback("openvino", gpus=0, is_installed=lambda _: True, multi_model=True)
    assert reason and "multi-model" in reason


@pytest.mark.parametrize(
    "verdict",
    [
        {"error": "the converter exited with 1 and no verdict"},
        {"images": 8, "agreeing": 1, "max_prob_diff": 0.9, "source": "photos", "finite": True, "path": "x"},
    ],
)
def test_a_conversion_torch_replaces_leaves_nothing_behind(verdict, tmp_path, monkeypatch):
    import dataclasses

    import torch

    from contract.preprocess import Preprocessing
    from server import runtimes
    from server.settings import Settings

    def convert(model_dir, runtime, mode, out_dir, settings):
        (Path(out_dir) / "model.xml").write_text("converted")  # what a converter leaves
        return verdict

    monkeypatch.setattr(runtimes, "convert_in_child", convert)
    settings = dataclasses.replace(
        Settings.from_env({"SAGEMAKER_MODEL_RUNTIME": "openvino"}), run_dir=str(tmp_path), gpus=0, multi_model=False
    )
    model = torch.nn.Linear(2, 2)
    assert runtimes.prepare(model, settings, tmp_path, Preprocessing()) is model  # torch fp32 serves
    assert not list(tmp_path.glob("openvino-*"))
