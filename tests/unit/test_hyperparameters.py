"""Hyperparameters arrive as strings; they are parsed with explicit types or refused."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.spec.hyperparameters import (
    BY_NAME,
    DEFAULTS,
    HYPERPARAMETERS,
    HyperparameterError,
    as_strings,
    parse,
    to_sagemaker,
)


def test_defaults_when_nothing_is_given():
    args = parse([])
    assert args.lr == DEFAULTS["lr"] and args.backbone == "resnet50" and args.head == []
    assert args.amp is None and args.optimizer == "adamw" and args.trainable_layers == 0


@pytest.mark.parametrize(
    "text, value",
    [("True", True), ("true", True), ("1", True), ("false", False), ("False", False), ("0", False), ("auto", None)],
)
def test_booleans_as_the_toolkit_passes_them(text, value):
    assert parse(["--amp", text]).amp is value


@pytest.mark.parametrize(
    "text, value", [("[512, 256]", [512, 256]), ("512,256", [512, 256]), ("256", [256]), ("[]", []), ("", [])]
)
def test_lists(text, value):
    assert parse(["--head", text]).head == value


def test_underscore_spelling_and_types():
    args = parse(["--batch_size", "32", "--lr", "0.01", "--weight_decay", "0"])
    assert args.batch_size == 32 and args.lr == 0.01 and args.weight_decay == 0.0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--lr", "fast"], "hyperparameter lr: could not convert"),
        (["--lr", "-1"], "hyperparameter lr: must be > 0"),
        (["--batch-size", "0"], "batch-size: must be > 0"),
        (["--amp", "maybe"], "hyperparameter amp: expected true or false"),
        (["--head", "[512, -1]"], "sizes must be positive"),
        (["--head", "[512,"], "hyperparameter head"),
        (["--dropout", "1.5"], "must be in [0, 1)"),
        (["--backbone", "vgg16"], "choose one of resnet18"),
        (["--epochs", "2.5"], "hyperparameter epochs: invalid literal"),
        (["--learning_rate", "0.1"], "unknown hyperparameter '--learning_rate'"),
        (["--lr"], "expected one argument"),
        (["--lr", "inf"], "hyperparameter lr: must be a finite number, got 'inf'"),
        (["--warmup", "inf"], "hyperparameter warmup: must be a finite number"),  # the LR stayed 0
        (["--eps", "1e999"], "hyperparameter eps: must be a finite number"),  # every AdamW update 0
        (["--weight-decay", "nan"], "hyperparameter weight-decay: must be a finite number"),  # nan weights
        (["--momentum", "NaN"], "hyperparameter momentum: must be a finite number"),
    ],
)
def test_bad_values_are_refused_with_one_line(argv, message):
    with pytest.raises(HyperparameterError, match=__import__("re").escape(message)) as info:
        parse(argv)
    assert "\n" not in str(info.value)


def test_to_sagemaker_strings_round_trip():
    values = {"lr": 0.01, "head": [512, 128], "amp": True, "batch-size": 64}
    encoded = to_sagemaker(values)
    assert encoded == {"lr": "0.01", "head": "512,128", "amp": "True", "batch-size": "64"}
    argv = [item for k, v in encoded.items() for item in (f"--{k}", v)]
    args = parse(argv)
    assert (args.lr, args.head, args.amp, args.batch_size) == (0.01, [512, 128], True, 64)
    with pytest.raises(HyperparameterError):
        to_sagemaker({"nope": 1})
    assert set(BY_NAME) >= {
        "lr",
        "batch-size",
        "epochs",
        "optimizer",
        "eps",
        "weight-decay",
        "backbone",
        "trainable-layers",
        "head",
        "dropout",
        "init",
        "warmup",
        "label-smoothing",
        "image-size",
        "num-workers",
        "amp",
        "seed",
        "pretrained",
        "patience",
    }


@pytest.mark.parametrize(
    "argv, layers",
    [
        ([], 0),  # ImageNet weights: the seeds' frozen backbone
        (["--pretrained", "none"], 5),  # random weights: a frozen backbone would hand the head random features
        (["--pretrained", "none", "--trainable-layers", "auto"], 5),
        (["--pretrained", "/weights/resnet50.pth"], 0),
        (["--pretrained", "none", "--trainable-layers", "0"], 0),  # asked for: allowed, and the trainer warns
        (["--trainable-layers", "2"], 2),
    ],
)
def test_trainable_layers_auto_trains_every_stage_without_pretrained_weights(argv, layers):
    assert parse(argv).trainable_layers == layers


def test_list_values_as_the_training_toolkit_passes_sdk_v3s_typed_lists():
    # SDK v3 sends a list hyperparameter as a JSON list; the sagemaker-training toolkit decodes
    # hyperparameters.json and puts the value on the command line with str(): Python's quotes
    from contract.spec import hyperparameters

    hp = hyperparameters.parse(
        ["--debugger-collections", str(["losses:1", "weights:10"]), "--head", str([512, 256]), "--debugger", "True"]
    )
    assert hp.debugger_collections == ["losses:1", "weights:10"] and hp.head == [512, 256] and hp.debugger is True
    with pytest.raises(hyperparameters.HyperparameterError):
        hyperparameters.parse(["--debugger-collections", "['losses:0']"])


def _fits(value, annotation) -> bool:
    """isinstance for the annotations Hyperparameters uses: plain classes, list[X], X | None."""
    import types
    import typing

    origin = typing.get_origin(annotation)
    if origin in (types.UnionType, typing.Union):
        return any(_fits(value, arm) for arm in typing.get_args(annotation))
    if origin is list:
        (item,) = typing.get_args(annotation)
        return isinstance(value, list) and all(_fits(v, item) for v in value)
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, float)
    return isinstance(value, annotation) and not (annotation is int and isinstance(value, bool))


def test_the_typed_hyperparameters_are_the_spec_one_to_one():
    # the fact is defined once (HYPERPARAMETERS): the dataclass must have its names, in its order, and
    # types that its defaults and its parsers' values have
    import typing

    from contract.spec.hyperparameters import HYPERPARAMETERS, Hyperparameters

    hints = typing.get_type_hints(Hyperparameters)
    assert Hyperparameters.names() == list(hints) == [hp.dest for hp in HYPERPARAMETERS]
    samples = {"head": "512,256", "trainable-layers": "2", "amp": "true", "profiler": "false"}
    for hp in HYPERPARAMETERS:
        annotation = hints[hp.dest]
        if hp.name != "trainable-layers":  # its default, auto (None), parse resolves to a number
            assert _fits(hp.default, annotation), (hp.name, hp.default, annotation)
        text = samples.get(hp.name) or as_strings({hp.name: hp.default})[hp.name]
        assert _fits(hp.parse(text), annotation), (hp.name, text, annotation)
    values = parse([]).as_dict()
    assert list(values) == Hyperparameters.names()
    assert values == {**{hp.dest: hp.default for hp in HYPERPARAMETERS}, "trainable_layers": 0}


def test_the_hyperparameters_are_frozen_and_a_wrong_name_is_an_error():
    hp = parse(["--lr", "0.5"])
    assert hp.lr == 0.5
    with pytest.raises(AttributeError):
        hp.learning_rate  # noqa: B018
    with pytest.raises(AttributeError):
        hp.lr = 0.1  # type: ignore[misc]  # the point: frozen
    with pytest.raises(AttributeError):
        object.__setattr__(hp, "learning_rate", 0.1)  # slots: no other attribute
    assert parse([]).head is not parse([]).head  # each result its own list


FLOAT_HYPERPARAMETERS = [hp.name for hp in HYPERPARAMETERS if isinstance(hp.default, float)]


@settings(max_examples=200, deadline=None)
@given(
    name=st.sampled_from(FLOAT_HYPERPARAMETERS),
    text=st.floats().map(repr)
    | st.sampled_from(["inf", "-inf", "nan", "1e999", "Infinity", " 1e-3 "])
    | st.text(max_size=12),
)
def test_a_float_hyperparameter_is_finite_or_refused_in_one_line(name, text):
    try:
        value = getattr(parse([f"--{name}", text]), name.replace("-", "_"))
    except HyperparameterError as refused:
        assert "\n" not in str(refused)
        return
    assert math.isfinite(value), (name, text, value)
