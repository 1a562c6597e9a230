"""The metric lines the trainer prints, and the regexes that read them.

One line per epoch and split, plus one for the final test evaluation:

    #metric epoch=3 split=train loss=0.412345 accuracy=0.8750 images_per_sec=210.3
    #metric epoch=3 split=validation loss=0.398765 accuracy=0.8812
    #metric split=test loss=0.401234 accuracy=0.8790

SageMaker's `metric_definitions` (training jobs and the tuner) and the local
tuner use METRIC_DEFINITIONS; nothing else may invent its own regex.
The tuning objective is the validation loss: the test set is scored once, at
the end, and never used to pick a model.
"""
from __future__ import annotations

import re

PREFIX = "#metric"
_NUMBER = r"([-+]?(?:[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?|nan|inf))"

METRIC_DEFINITIONS = [
    {"Name": "train:loss", "Regex": rf"{PREFIX} epoch=\d+ split=train loss={_NUMBER}"},
    {"Name": "train:accuracy", "Regex": rf"{PREFIX} epoch=\d+ split=train loss=\S+ accuracy={_NUMBER}"},
    {"Name": "train:images_per_sec", "Regex": rf"{PREFIX} epoch=\d+ split=train .*images_per_sec={_NUMBER}"},
    {"Name": "validation:loss", "Regex": rf"{PREFIX} epoch=\d+ split=validation loss={_NUMBER}"},
    {"Name": "validation:accuracy", "Regex": rf"{PREFIX} epoch=\d+ split=validation loss=\S+ accuracy={_NUMBER}"},
    {"Name": "test:loss", "Regex": rf"{PREFIX} split=test loss={_NUMBER}"},
    {"Name": "test:accuracy", "Regex": rf"{PREFIX} split=test loss=\S+ accuracy={_NUMBER}"},
]

OBJECTIVE_METRIC = "validation:loss"
OBJECTIVE_TYPE = "Minimize"


def format_line(split: str, loss: float, accuracy: float, epoch: int | None = None, **extra) -> str:
    parts = [PREFIX]
    if epoch is not None:
        parts.append(f"epoch={epoch}")
    parts += [f"split={split}", f"loss={loss:.6f}", f"accuracy={accuracy:.4f}"]
    parts += [f"{k}={v:.1f}" for k, v in extra.items()]
    return " ".join(parts)


def parse_log(text: str) -> dict[str, list[float]]:
    """Every metric's values, in order of appearance, as SageMaker would read them."""
    found: dict[str, list[float]] = {}
    for definition in METRIC_DEFINITIONS:
        pattern = re.compile(definition["Regex"])
        values = [float(m.group(1)) for m in pattern.finditer(text)]
        if values:
            found[definition["Name"]] = values
    return found
