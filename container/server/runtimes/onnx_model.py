"""The trainer's network as an ONNX file for ONNX Runtime (fp32).

torch.onnx.export's TorchScript exporter (dynamo=False): it needs the onnx package but not
onnxscript, and handles this network's plain convolutions, pools and linear layers.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

MODEL_FILE = "model.onnx"
OPSET = 17


def export(model: nn.Module, image_size: int, out_dir: str) -> str:
    path = str(Path(out_dir) / MODEL_FILE)
    example = torch.zeros(1, 3, image_size, image_size)
    with warnings.catch_warnings():  # the exporter's deprecation note for the TorchScript path
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            (example,),
            path,
            dynamo=False,
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=OPSET,
        )
    return path
