"""Every hyperparameter the trainer takes: name, type, default, meaning.

The single source of truth: the trainer's CLI, the SageMaker scripts, the
tuning search spaces and docs/training.md's table (scripts/docs_tables.py) are
all built from HYPERPARAMETERS; `help` is Markdown, as the table shows it.
Standard library only (see contract/spec/__init__.py): the host scripts read it too.

SageMaker hands hyperparameters over as strings; the sagemaker-training
toolkit JSON-decodes them and passes `--name value` arguments, so a boolean
may arrive as "True", "true" or "1" and a list as "[512, 256]" or "512,256".
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

from contract.spec.architecture import BACKBONES, STAGES


class HyperparameterError(ValueError):
    """A hyperparameter is unknown or malformed; the message is one line."""


def _kind(text: str) -> Callable:
    """Names what a parser takes, for the manual's type column (Hyperparameter.kind)."""

    def mark(parse: Callable) -> Callable:
        set_kind(parse, text)
        return parse

    return mark


def set_kind(parse: Callable, text: str) -> None:
    """A parser's label for the manual, as a function attribute (typing cannot declare one)."""
    parse.kind = text  # type: ignore[attr-defined]


def kind_of(parse: Callable) -> str:
    return getattr(parse, "kind", {"str": "string"}.get(parse.__name__, parse.__name__))


@_kind("bool")
def parse_bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _list_literal(value: str) -> list:
    """A bracketed list as JSON ('["a"]') or as Python writes one (['a']): the sagemaker-training
    toolkit decodes hyperparameters.json and passes a list value on the command line with str(),
    which is what SDK v3's typed hyperparameters (real JSON lists) arrive as."""
    try:
        items = json.loads(value)
    except ValueError:
        try:
            items = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ValueError(f"expected a list like [1, 2] or 1,2, got {value!r}") from None
    if not isinstance(items, (list, tuple)):
        raise ValueError(f"expected a list, got {value!r}")
    return list(items)


@_kind("int list")
def parse_int_list(text: str) -> list[int]:
    value = str(text).strip()
    if value in ("", "[]", "none", "None"):
        return []
    if value.startswith("["):
        items = _list_literal(value)
    else:
        items = [part for part in value.split(",") if part.strip()]
    result = [int(item) for item in items]
    if any(n <= 0 for n in result):
        raise ValueError(f"sizes must be positive, got {text!r}")
    return result


@_kind("bool or auto")
def parse_optional_bool(text: str) -> bool | None:
    return None if str(text).strip().lower() == "auto" else parse_bool(text)


def _finite(value, text):
    """`value`, unless it is a float's inf or nan (float() takes "inf", "nan" and "1e999"): an inf warm-up or
    epsilon trained nothing and a nan weight decay made every weight nan, each in a job that succeeded."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {text!r}")
    return value


def _positive(kind: Callable) -> Callable:
    def check(text):
        value = _finite(kind(text), text)
        if not value > 0:
            raise ValueError(f"must be > 0, got {text!r}")
        return value

    check.__name__ = kind.__name__
    set_kind(check, f"{kind_of(kind)} > 0")
    return check


@_kind("float in [0, 1)")
def _fraction(text):
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"must be in [0, 1), got {text!r}")
    return value


@_kind("float in (0, 1]")
def _crop_scale(text):
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"must be in (0, 1], got {text!r}")
    return value


def _non_negative(kind: Callable) -> Callable:
    def check(text):
        value = _finite(kind(text), text)
        if value < 0:
            raise ValueError(f"must be >= 0, got {text!r}")
        return value

    check.__name__ = kind.__name__
    set_kind(check, f"{kind_of(kind)} >= 0")
    return check


@_kind("list")
def parse_collections(text) -> list[str]:
    """smdebug collections, `name` or `name:save_interval`: "losses,weights:100" or '["losses"]'."""
    value = str(text).strip()
    items = _list_literal(value) if value.startswith("[") else value.split(",")
    result = [str(item).strip() for item in items if str(item).strip()]
    for item in result:
        name, colon, interval = item.partition(":")
        if not name or (colon and not (interval.isdigit() and int(interval) > 0)):
            raise ValueError(f"expected name or name:interval (a positive integer), got {item!r}")
    return result


def _auto_or(kind: Callable) -> Callable:
    def parse(text):
        return None if str(text).strip().lower() == "auto" else kind(text)

    parse.__name__ = kind.__name__
    set_kind(parse, f"{kind_of(kind)} or auto")
    return parse


@_kind("int >= 0 or auto")
def _workers(text):
    return -1 if str(text).strip().lower() in ("auto", "-1") else _non_negative(int)(text)


@dataclass(frozen=True)
class Hyperparameter:
    name: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    choices: tuple | None = None
    shown: str = ""  # the default as the manual shows it, where the value alone would mislead

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    @property
    def kind(self) -> str:
        """What it takes, in words: 'float > 0', 'bool or auto', 'one of adamw, sgd'."""
        if self.choices:
            return "one of " + ", ".join(map(str, self.choices))
        return kind_of(self.parse)

    @property
    def default_text(self) -> str:
        """The default as the manual shows it: 0.001, 1e-8, true, auto (None), (none) (empty)."""
        value = self.default
        if self.shown:
            return self.shown
        if value is None:
            return "auto"
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, float):
            return re.sub(r"e([-+])0*(\d)", r"e\1\2", f"{value:g}").replace("e+", "e")
        if isinstance(value, (list, tuple)):
            return ",".join(map(str, value)) or "(none)"
        return str(value) or "(none)"


HYPERPARAMETERS = [
    # optimisation
    Hyperparameter("lr", _positive(float), 1e-3, "peak learning rate"),
    Hyperparameter("batch-size", _positive(int), 64, "images per step (per process under DDP)"),
    Hyperparameter("epochs", _positive(int), 5, "passes over the training set"),
    Hyperparameter("optimizer", str, "adamw", "optimiser", ("adamw", "sgd")),
    Hyperparameter("eps", _positive(float), 1e-8, "AdamW epsilon"),
    Hyperparameter("weight-decay", _non_negative(float), 1e-2, "decoupled weight decay (AdamW) or L2 (SGD)"),
    Hyperparameter("momentum", _non_negative(float), 0.9, "SGD momentum (Nesterov)"),
    Hyperparameter("warmup", _non_negative(float), 0.0, "epochs of linear learning-rate warm-up (fractions allowed)"),
    Hyperparameter("schedule", str, "cosine", "learning-rate decay after warm-up", ("cosine", "constant")),
    Hyperparameter("label-smoothing", _fraction, 0.0, "cross-entropy label smoothing"),
    Hyperparameter(
        "patience", _non_negative(int), 0, "early stopping: epochs without a better validation loss (0 = never)"
    ),
    # model
    Hyperparameter("backbone", str, "resnet50", "torchvision ResNet architecture", tuple(BACKBONES)),
    Hyperparameter("pretrained", str, "imagenet", "backbone weights: `imagenet`, `none`, or a weights file path"),
    Hyperparameter(
        "trainable-layers",
        _auto_or(_non_negative(int)),
        None,
        f"backbone stages fine-tuned from the top: 0 = frozen (as the seeds), {len(STAGES)} = all; auto = 0 "
        f"with pretrained weights, {len(STAGES)} with `pretrained none` (a frozen random backbone hands the "
        "head random features, and it learns little from them; asking for 0 explicitly logs a warning)",
    ),
    Hyperparameter(
        "head",
        parse_int_list,
        [],
        "hidden sizes of the new fully connected head, e.g. `256` or `512,128` (the seeds used one or two layers)",
    ),
    Hyperparameter("dropout", _fraction, 0.0, "dropout in the head"),
    Hyperparameter("init", str, "kaiming", "head initialisation (`kaiming`: He's)", ("kaiming", "xavier", "default")),
    # data
    Hyperparameter("image-size", _positive(int), 224, "training crop and evaluation centre crop, pixels"),
    Hyperparameter(
        "augment", parse_bool, True, "random crops and flips of training images (false: the evaluation transform)"
    ),
    Hyperparameter(
        "crop-scale",
        _crop_scale,
        1.0,
        "smallest share of an image's area that a random training crop covers; 1 = no zoom: the evaluation's "
        "resize, the crop placed at random (see Recipe); 0.08 = ImageNet's `RandomResizedCrop`",
    ),
    Hyperparameter(
        "feature-cache",
        str,
        "",
        "folder caching backbone features per image for frozen-backbone runs, e.g. tuning trials; "
        "implies `augment` false",
        shown="(off)",
    ),
    Hyperparameter("val-fraction", _fraction, 0.1, "share of training images held out when no validation set is given"),
    Hyperparameter(
        "num-workers", _workers, -1, "data loader processes (auto or -1 = one per core, at most 8)", shown="auto"
    ),
    # runtime
    Hyperparameter(
        "amp",
        parse_optional_bool,
        None,
        "mixed precision; auto: on for CUDA, bf16 on CPUs with native bf16",
    ),
    Hyperparameter("channels-last", parse_bool, True, "NHWC memory format (faster convolutions on GPUs and oneDNN)"),
    Hyperparameter("seed", _non_negative(int), 0, "random seed for splits, initialisation and augmentation"),
    Hyperparameter(
        "processes-per-host", _non_negative(int), 0, "DDP processes per host (0 = one per GPU, or 1 on CPU)"
    ),
    Hyperparameter(
        "collective-timeout",
        _positive(int),
        600,
        "seconds a DDP rank waits for the others in one collective before the job fails with a reason",
    ),
    Hyperparameter(
        "max-steps-per-epoch", _non_negative(int), 0, "cap on training steps per epoch (0 = no cap; for smoke tests)"
    ),
    # debugging and profiling (SageMaker's DebuggerHookConfig / ProfilerConfig switch them on too)
    Hyperparameter(
        "debugger",
        parse_bool,
        False,
        "smdebug hook without SageMaker's `DebuggerHookConfig` (which switches it on by itself)",
    ),
    Hyperparameter(
        "debugger-collections",
        parse_collections,
        ["losses:1"],
        "collections to save, `name` or `name:interval`: `losses:1,weights:100,gradients:100,relu_input:100` "
        "(losses every step: the loss rules take medians over windows of them)",
    ),
    Hyperparameter(
        "debugger-save-interval", _positive(int), 10, "steps between saves, for collections without their own"
    ),
    Hyperparameter("debugger-dir", str, "", "where the hook writes its trial", shown="/opt/ml/output/tensors"),
    Hyperparameter(
        "profiler",
        parse_optional_bool,
        None,
        "system sampling, step timing and a short torch.profiler trace into `/opt/ml/output/profiler` (auto = on)",
    ),
    Hyperparameter(
        "profiler-interval-ms",
        _positive(int),
        500,
        "system sampling interval, milliseconds (SageMaker's `ProfilerConfig` interval wins when given)",
    ),
    Hyperparameter(
        "profiler-trace-steps",
        _non_negative(int),
        5,
        "training steps traced by torch.profiler after 2 warm-up steps, when `profiler` is true or "
        "SageMaker's `ProfilerConfig` is given (0 = none)",
    ),
]

BY_NAME = {hp.name: hp for hp in HYPERPARAMETERS}
DEFAULTS = {hp.name: hp.default for hp in HYPERPARAMETERS}


def _with_choices(hp: Hyperparameter) -> Callable:
    def parse(text):
        value = hp.parse(text)
        if hp.choices and value not in hp.choices:
            raise ValueError(f"choose one of {', '.join(hp.choices)}; got {text!r}")
        return value

    return parse


def parse_value(name: str, text: str):
    """One hyperparameter's value as the trainer reads it (type, range and choices); ValueError if it would refuse it."""
    return _with_choices(BY_NAME[name])(text)


@dataclass(frozen=True, slots=True)
class Hyperparameters:
    """What `parse` returns and the trainer reads (`hp.lr`): one field per HYPERPARAMETERS entry, in its order,
    named by its `dest`, typed as its parser returns (tests/unit/test_hyperparameters.py checks it one to one).
    Names, defaults and meanings stay in HYPERPARAMETERS; frozen, and with slots a misspelt name is an error."""

    lr: float
    batch_size: int
    epochs: int
    optimizer: str
    eps: float
    weight_decay: float
    momentum: float
    warmup: float
    schedule: str
    label_smoothing: float
    patience: int
    backbone: str
    pretrained: str
    trainable_layers: int  # "auto" (None) is resolved by parse
    head: list[int]
    dropout: float
    init: str
    image_size: int
    augment: bool
    crop_scale: float
    feature_cache: str
    val_fraction: float
    num_workers: int
    amp: bool | None
    channels_last: bool
    seed: int
    processes_per_host: int
    collective_timeout: int
    max_steps_per_epoch: int
    debugger: bool
    debugger_collections: list[str]
    debugger_save_interval: int
    debugger_dir: str
    profiler: bool | None
    profiler_interval_ms: int
    profiler_trace_steps: int

    def as_dict(self) -> dict[str, Any]:
        """{dest: value} in HYPERPARAMETERS' order: what vars() of parse's former namespace gave (the model's
        TrainingSummary, the tracker's parameters)."""
        return asdict(self)

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print usage and exit(2)
        raise HyperparameterError(message)


def parse(argv: list[str]) -> Hyperparameters:
    """Parse `--name value` pairs; raise HyperparameterError for anything off."""
    parser = _Parser(prog="train", add_help=False, allow_abbrev=False)
    for hp in HYPERPARAMETERS:
        # underscores too: SageMaker users often write batch_size
        flags = [f"--{hp.name}"] + ([f"--{hp.dest}"] if hp.dest != hp.name else [])
        parser.add_argument(*flags, dest=hp.dest, default=hp.default, type=str)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        names = [u for u in unknown if u.startswith("--")] or unknown
        raise HyperparameterError(f"unknown hyperparameter {names[0]!r}; known: {', '.join(BY_NAME)}")
    for hp in HYPERPARAMETERS:
        raw = getattr(args, hp.dest)
        if raw is hp.default:
            continue
        try:
            setattr(args, hp.dest, _with_choices(hp)(raw))
        except (ValueError, TypeError, json.JSONDecodeError) as exc:
            raise HyperparameterError(f"hyperparameter {hp.name}: {exc}") from None
    if args.trainable_layers is None:
        # a frozen random backbone hands the head random features: with no pretrained
        # weights to keep, every stage is trained
        args.trainable_layers = len(STAGES) if args.pretrained == "none" else 0
    # a list default is the spec's own object: each result gets its copy
    values: dict[str, Any] = {k: list(v) if isinstance(v, list) else v for k, v in vars(args).items()}
    return Hyperparameters(**values)


def as_strings(values: dict) -> dict[str, str]:
    """Values as SageMaker hands them over: strings, lists comma-separated. Names are not checked
    (the trainer refuses unknown ones with its one-line reason)."""
    return {
        name: ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        for name, value in values.items()
    }


def to_sagemaker(values: dict) -> dict:
    """Hyperparameters for Estimator(hyperparameters=...): known names, string values."""
    for name in values:
        if name not in BY_NAME:
            raise HyperparameterError(f"unknown hyperparameter {name!r}; known: {', '.join(BY_NAME)}")
    return as_strings(values)


def to_argv(values: dict) -> list[str]:
    """`--name value` arguments, as the sagemaker-training toolkit passes them to toolkit_entry_point.py."""
    return [item for name, value in as_strings(values).items() for item in (f"--{name}", value)]


def typed_value(text: str):
    """'3' -> 3, '0.01' -> 0.01, anything else as it is: JSON-friendly, and as Optuna compares values."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def parse_assignments(items: list[str], typed: bool = False) -> dict:
    """The command lines' `--hp name=value` items: ['epochs=3', 'lr=0.01'] -> {'epochs': '3', 'lr': '0.01'}
    (with typed: {'epochs': 3, 'lr': 0.01}). Values are not checked here: the trainer does that."""
    hps = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise HyperparameterError(f"expected name=value, got {item!r}")
        hps[name.strip()] = typed_value(value.strip()) if typed else value
    return hps
