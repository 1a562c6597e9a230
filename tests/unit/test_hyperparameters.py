"""Hyperparameters arrive as strings; they are parsed with explicit types or refused."""

from __future__ import annotations

import pytest

from contract.spec.hyperparameters import BY_NAME, DEFAULTS, HyperparameterError, parse, to_sagemaker


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
