"""The metric lines the trainer prints, and the regexes that read them.

One line per epoch and split, plus one for the final test evaluation:

    #metric epoch=3 split=train loss=0.412345 accuracy=0.8750 images_per_sec=210.3
    #metric epoch=3 split=validation loss=0.398765 accuracy=0.8812
    #metric split=test loss=0.401234 accuracy=0.8790

SageMaker's `metric_definitions` (training jobs and the tuner) use
METRIC_DEFINITIONS; the local tuner and scripts/run_local.py read lines with
`read`, which uses the same regexes: nothing else may invent its own.
The tuning objective is the validation loss: the test set is scored once, at
the end, and never used to pick a model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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
_PATTERNS = {d["Name"]: re.compile(d["Regex"]) for d in METRIC_DEFINITIONS}
_EPOCH = re.compile(r"\bepoch=(\d+)")


@dataclass(frozen=True)
class Reading:
    """One metric's value on one log line; epoch None for the final test line."""

    name: str
    value: float
    epoch: int | None


def regex(name: str) -> str:
    try:
        return next(d["Regex"] for d in METRIC_DEFINITIONS if d["Name"] == name)
    except StopIteration:
        raise KeyError(f"no metric {name!r}; known: {', '.join(_PATTERNS)}") from None


def read(line: str, name: str = OBJECTIVE_METRIC) -> Reading | None:
    """The metric `name` on this log line, as SageMaker's regex reads it, or None."""
    pattern = _PATTERNS.get(name) or re.compile(regex(name))
    match = pattern.search(line)
    if not match:
        return None
    epoch = _EPOCH.search(match.group(0))
    return Reading(name, float(match.group(1)), int(epoch.group(1)) if epoch else None)


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
    for name, pattern in _PATTERNS.items():
        values = [float(m.group(1)) for m in pattern.finditer(text)]
        if values:
            found[name] = values
    return found
