"""Hyperparameter search spaces: one definition for SageMaker's tuner and the local Optuna study.

A space names trainer hyperparameters (hyperparameters.py), their type, range
and scaling, plus hyperparameters held fixed for every trial; the objective is
the trainer's validation loss, read with metrics.METRIC_DEFINITIONS.

Presets are the two seeds' searches. A user's own space is a JSON file:

    {"parameters": [
        {"name": "lr", "type": "continuous", "low": 1e-4, "high": 1e-1, "scaling": "log"},
        {"name": "batch-size", "type": "categorical", "values": [64, 128]}],
     "fixed": {"epochs": 5, "trainable-layers": 0}}
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from contract.spec import metrics
from contract.spec.hyperparameters import BY_NAME, parse_value

TYPES = ("continuous", "integer", "categorical")
# The local tuner's line for each finished trial (`trial 3 COMPLETE 0.41 in 12 s: ...`);
# scripts/run_local.py counts them for its progress bar.
TRIAL_STATES = ("COMPLETE", "PRUNED", "FAIL")
TRIAL_FINISHED = re.compile(rf"^trial (\d+) ({'|'.join(TRIAL_STATES)})\b")
SCALINGS = ("linear", "log")


class SearchSpaceError(ValueError):
    pass


@dataclass(frozen=True)
class Parameter:
    name: str
    type: str
    low: float | None = None
    high: float | None = None
    values: tuple = ()
    scaling: str = "linear"

    def __post_init__(self):
        if self.name not in BY_NAME:
            raise SearchSpaceError(f"{self.name!r} is not a trainer hyperparameter")
        if self.type not in TYPES:
            raise SearchSpaceError(f"{self.name}: type must be one of {', '.join(TYPES)}")
        if self.scaling not in SCALINGS:
            raise SearchSpaceError(f"{self.name}: scaling must be linear or log")
        if self.type == "categorical":
            if not self.values:
                raise SearchSpaceError(f"{self.name}: a categorical parameter needs values")
            for value in self.values:  # every value must be one the trainer accepts
                parse_value(self.name, str(value))
        else:
            if self.low is None or self.high is None or not self.low < self.high:
                raise SearchSpaceError(f"{self.name}: needs low < high")
            if self.scaling == "log" and self.low <= 0:
                raise SearchSpaceError(f"{self.name}: a log scale needs low > 0")

    @property
    def bounds(self) -> tuple[float, float]:
        """(low, high) of a continuous or integer parameter (checked at construction)."""
        if self.low is None or self.high is None:
            raise SearchSpaceError(f"{self.name}: a {self.type} parameter has no low and high")
        return self.low, self.high


@dataclass(frozen=True)
class SearchSpace:
    name: str
    parameters: tuple[Parameter, ...]
    fixed: dict = field(default_factory=dict)
    objective_metric: str = metrics.OBJECTIVE_METRIC
    objective_type: str = metrics.OBJECTIVE_TYPE

    def __post_init__(self):
        unknown = [name for name in self.fixed if name not in BY_NAME]
        if unknown:
            raise SearchSpaceError(f"fixed hyperparameters {unknown} are not trainer hyperparameters")
        overlap = {p.name for p in self.parameters} & set(self.fixed)
        if overlap:
            raise SearchSpaceError(f"{sorted(overlap)} are both searched and fixed")

    @property
    def objective_regex(self) -> str:
        return metrics.regex(self.objective_metric)


PRESETS = {
    # Seed one: lr continuous 0.001..0.1, batch size integer 32..128.
    "seed1": SearchSpace(
        "seed1",
        (
            Parameter("lr", "continuous", 1e-3, 1e-1, scaling="log"),
            Parameter("batch-size", "integer", 32, 128),
        ),
        fixed={"optimizer": "adamw", "epochs": 5},
    ),
    # Seed two: AdamW lr 0.01x..100x of 1e-3, eps 1e-9..1e-8, weight decay
    # 0.1x..10x of 0.01, batch size 64 or 128.
    "seed2": SearchSpace(
        "seed2",
        (
            Parameter("lr", "continuous", 1e-5, 1e-1, scaling="log"),
            Parameter("eps", "continuous", 1e-9, 1e-8, scaling="log"),
            Parameter("weight-decay", "continuous", 1e-3, 1e-1, scaling="log"),
            Parameter("batch-size", "categorical", values=(64, 128)),
        ),
        fixed={"optimizer": "adamw", "head": "256,128", "epochs": 5},
    ),
}


def from_dict(name: str, data: dict) -> SearchSpace:
    try:
        params = tuple(
            Parameter(
                p["name"],
                p["type"],
                p.get("low"),
                p.get("high"),
                tuple(p.get("values", ())),
                p.get("scaling", "linear"),
            )
            for p in data["parameters"]
        )
    except (KeyError, TypeError) as exc:
        raise SearchSpaceError(f"search space {name}: malformed ({exc})") from None
    return SearchSpace(name, params, dict(data.get("fixed", {})))


def load(name_or_path: str) -> SearchSpace:
    """A preset's name, or a JSON file of the form shown above."""
    if name_or_path in PRESETS:
        return PRESETS[name_or_path]
    path = Path(name_or_path)
    if not path.is_file():
        raise SearchSpaceError(f"{name_or_path!r} is neither a preset ({', '.join(PRESETS)}) nor a file")
    return from_dict(path.stem, json.loads(path.read_text()))


def sdk_ranges(space: SearchSpace, continuous, integer, categorical) -> dict:
    """The space as the SageMaker SDK's parameter ranges, built with its classes (v2's
    sagemaker.tuner or v3's sagemaker.core.parameter ContinuousParameter, IntegerParameter,
    CategoricalParameter: the same signatures in both)."""
    result = {}
    for p in space.parameters:
        scaling = "Logarithmic" if p.scaling == "log" else "Linear"
        if p.type == "continuous":
            result[p.name] = continuous(p.low, p.high, scaling_type=scaling)
        elif p.type == "integer":
            low, high = p.bounds
            result[p.name] = integer(int(low), int(high), scaling_type=scaling)
        else:
            result[p.name] = categorical([str(v) for v in p.values])
    return result
