"""The trainer's network as an OpenVINO model file: fp32 (bf16 is a compile-time hint,
served.py), or int8 by post-training quantization.

int8 follows NNCF's placement for a CNN, measured against NNCF itself (docs/benchmarks.md):
one FakeQuantize (256 levels, per tensor, the min-max range that tensor took over the
calibration sample) on every activation that enters a convolution, a residual Add (both
branches), the max pool, the global pool and the head's matrix products, shared by all of
a tensor's consumers; and on each convolution's weights (255 levels, symmetric, per output
channel). With the Adds quantized the CPU plugin keeps a whole bottleneck block in int8
(VNNI or AMX where the CPU has them) instead of going back to float between blocks: 1.25x
the throughput of quantizing the convolutions alone. NNCF itself is not used: it pulls in
scipy, scikit-learn, ninja and more, several times OpenVINO's own size in the image.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

MODEL_FILE = "model.xml"
# operation type -> which of its inputs carry activations to quantize
QUANTIZED_INPUTS = {"Convolution": (0,), "Add": (0, 1), "MaxPool": (0,), "ReduceMean": (0,), "MatMul": (0,)}
SourceKey = tuple[str, int]  # (producing node's friendly name, output index)


def convert(model: nn.Module, precision: str, calibration: torch.Tensor, image_size: int, out_dir: str) -> str:
    """The model file's path (its weights beside it)."""
    import openvino

    example = torch.zeros(1, 3, image_size, image_size)
    with warnings.catch_warnings():  # torch.jit's tracer notes, which convert_model uses
        warnings.simplefilter("ignore")
        converted = openvino.convert_model(model.eval(), example_input=example, input=[-1, 3, image_size, image_size])
    if precision == "int8":
        quantize(converted, calibration)
    path = str(Path(out_dir) / MODEL_FILE)
    openvino.save_model(converted, path, compress_to_fp16=False)
    return path


def quantize(model, calibration: torch.Tensor) -> None:
    """FakeQuantize nodes into `model` (in place), calibrated on `calibration` (N,3,S,S)."""
    from openvino import opset13

    sources = activation_sources(model)
    ranges = value_ranges(model, list(sources), calibration)
    for source, (value, consumers) in sources.items():
        bounds = activation_bounds(*ranges[source])
        activations = opset13.fake_quantize(value, *bounds, *bounds, 256)
        for consumer in consumers:
            consumer.replace_source_output(activations.output(0))
    for node in model.get_ordered_ops():
        weights = node.input_value(1).get_node() if node.get_type_name() == "Convolution" else None
        if weights is not None and weights.get_type_name() == "Constant":
            data = weights.get_data()
            scale = np.abs(data).reshape(data.shape[0], -1).max(1).astype(np.float32)
            scale = np.maximum(scale, 1e-8).reshape(-1, *[1] * (data.ndim - 1))
            quantized = opset13.fake_quantize(node.input_value(1), -scale, scale, -scale, scale, 255)
            node.input(1).replace_source_output(quantized.output(0))
    model.validate_nodes_and_infer_types()


def activation_sources(model) -> dict[SourceKey, tuple]:
    """Each activation to quantize: its output and the inputs it feeds that take a quantized
    value. An Add with a constant side is a bias, not a residual join: left in float."""
    found: dict[SourceKey, tuple] = {}
    for node in model.get_ordered_ops():
        indices = QUANTIZED_INPUTS.get(node.get_type_name(), ())
        values = [node.input_value(index) for index in indices]
        if any(value.get_node().get_type_name() == "Constant" for value in values):
            continue
        for index, value in zip(indices, values, strict=True):
            found.setdefault(source_key(value), (value, []))[1].append(node.input(index))
    return found


def source_key(output) -> SourceKey:
    return output.get_node().get_friendly_name(), output.get_index()


def activation_bounds(low: float, high: float) -> tuple[np.float32, np.float32]:
    """A tensor that goes negative on the signed int8 grid (-s .. s*127/128, zero exact);
    one that does not (after a ReLU) on the unsigned one (0 .. max)."""
    scale = max(-low, high, 1e-6)  # a tensor that is (nearly) all zeros still gets a grid
    if low < 0:
        return np.float32(-scale), np.float32(scale * 127 / 128)
    return np.float32(0.0), np.float32(max(high, 1e-6))


def value_ranges(model, sources: list[SourceKey], calibration: torch.Tensor) -> dict[SourceKey, tuple[float, float]]:
    """The smallest and largest value each source takes over the calibration sample, from a
    copy of the model that outputs them (run in fp32)."""
    import openvino

    probe = model.clone()
    by_name = {node.get_friendly_name(): node for node in probe.get_ordered_ops()}
    probe.add_outputs([by_name[name].output(index) for name, index in sources])
    position = {source_key(result.get_node().input_value(0)): index for index, result in enumerate(probe.outputs)}
    compiled = openvino.Core().compile_model(probe, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    ranges = {source: (float("inf"), float("-inf")) for source in sources}
    for batch in calibration.split(8):
        request.infer({0: np.ascontiguousarray(batch.float().numpy())})
        for source in sources:
            values = request.get_output_tensor(position[source]).data
            low, high = ranges[source]
            ranges[source] = (min(low, float(values.min())), max(high, float(values.max())))
    return ranges
