"""Model directories that are only code/: inference.py with its own model_fn and
predict_fn, and a helper module beside it (`import helper`), as users write them.
They load in milliseconds: for tests that load many models, or many times."""

from __future__ import annotations

import textwrap
from pathlib import Path

INFERENCE = """
    import torch

    import helper

    BALLAST = bytearray(BALLAST_BYTES)  # memory the module itself holds while loaded


    def model_fn(model_dir):
        return helper.make_model()


    def predict_fn(data, model):
        return torch.tensor(helper.PROBABILITIES)
"""

HELPER = """
    import torch

    PROBABILITIES = {probabilities}


    def make_model():
        model = torch.nn.Module()
        model.register_buffer("table", torch.zeros({tensor_bytes} // 4))
        return model
"""


def make_code_model(
    path: Path, probabilities=(0.9, 0.1), tensor_bytes: int = 64, ballast_bytes: int = 0, helper_name: str = "helper"
) -> Path:
    """A model directory whose code/helper.py (or `helper_name`.py) says which class wins;
    its model_fn returns a module of `tensor_bytes` in buffers; no model.pt."""
    code = path / "code"
    code.mkdir(parents=True)
    inference = textwrap.dedent(INFERENCE).replace("BALLAST_BYTES", str(ballast_bytes))
    (code / "inference.py").write_text(inference.replace("helper", helper_name))
    helper = textwrap.dedent(HELPER).format(probabilities=list(probabilities), tensor_bytes=tensor_bytes)
    (code / f"{helper_name}.py").write_text(helper)
    return path
