"""The trainer's network as an OpenVINO model file: fp32 (bf16 is a compile-time hint,
served.py), or int8 by post-training quantization.

int8 puts a FakeQuantize in front of every convolution's input (256 levels, per tensor,
its range the minimum and maximum that input took over the calibration sample) and on
its weights (255 levels, symmetric, per output channel): what NNCF's default scheme does
for a CNN, whose min-max ranges are enough here. OpenVINO's CPU plugin runs such a
convolution in int8 (VNNI or AMX where the CPU has them). NNCF itself is not used: it
pulls in scipy, scikit-learn, ninja and more, several times OpenVINO's own size in the image.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

MODEL_FILE = "model.xml"
QUANTIZED = ("Convolution",)


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

    targets = [node for node in model.get_ordered_ops() if node.get_type_name() in QUANTIZED]
    lows, highs = input_ranges(model, targets, calibration)
    for node, low, high in zip(targets, lows, highs, strict=True):
        if low < 0:
            low, high = -max(-low, high), max(-low, high)  # signed inputs: symmetric
        else:
            low = 0.0  # after a ReLU: unsigned
        high = max(high, low + 1e-6)
        bounds = (np.float32(low), np.float32(high))
        activations = opset13.fake_quantize(node.input_value(0), *bounds, *bounds, 256)
        node.input(0).replace_source_output(activations.output(0))
        weights = node.input_value(1).get_node()
        if weights.get_type_name() == "Constant":
            data = weights.get_data()
            scale = np.abs(data).reshape(data.shape[0], -1).max(1).astype(np.float32)
            scale = np.maximum(scale, 1e-8).reshape(-1, *[1] * (data.ndim - 1))
            quantized = opset13.fake_quantize(node.input_value(1), -scale, scale, -scale, scale, 255)
            node.input(1).replace_source_output(quantized.output(0))
    model.validate_nodes_and_infer_types()


def input_ranges(model, targets, calibration: torch.Tensor) -> tuple[list[float], list[float]]:
    """The smallest and largest value each target's first input takes over the calibration sample,
    from a copy of the model that outputs them (run in fp32)."""
    import openvino

    probe = model.clone()
    names = [node.get_friendly_name() for node in targets]
    by_name = {node.get_friendly_name(): node for node in probe.get_ordered_ops()}
    sources = [by_name[name].input_value(0) for name in names]

    def key(output) -> tuple[str, int]:
        return output.get_node().get_friendly_name(), output.get_index()

    keys = [key(source) for source in sources]
    probe.add_outputs(list({key(source): source for source in sources}.values()))  # a tensor may feed several
    position = {key(result.get_node().input_value(0)): index for index, result in enumerate(probe.outputs)}
    compiled = openvino.Core().compile_model(probe, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    lows = [float("inf")] * len(keys)
    highs = [float("-inf")] * len(keys)
    for batch in calibration.split(8):
        request.infer({0: np.ascontiguousarray(batch.float().numpy())})
        for index, source in enumerate(keys):
            values = request.get_output_tensor(position[source]).data
            lows[index] = min(lows[index], float(values.min()))
            highs[index] = max(highs[index], float(values.max()))
    return lows, highs
