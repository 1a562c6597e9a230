"""contract.spec: the torch-free facts training, serving and the host tools share."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from contract.spec import architecture, artifact, hyperparameters, images, metrics, paths, presets, search_space

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"  # what `python3 scripts/run_local.py` runs on a fresh machine: no torch
SPEC_MODULES = ("architecture", "artifact", "hyperparameters", "images", "metrics", "paths", "presets", "search_space")

# real lines from a trainer's log (container/toolkit_entry_point.py on the sample data)
LOG = """\
data: 3 classes, 43 training, 5 validation, 7 test images
#metric epoch=1 split=train loss=1.104512 accuracy=0.3488 images_per_sec=112.4
#metric epoch=1 split=validation loss=1.087310 accuracy=0.4000
#metric epoch=2 split=train loss=0.912345 accuracy=0.5814 images_per_sec=140.9
#metric epoch=2 split=validation loss=nan accuracy=0.2000
#metric split=test loss=0.401234 accuracy=0.8571
"""


@pytest.mark.skipif(not Path(SYSTEM_PYTHON).exists(), reason="needs the system python")
def test_spec_imports_with_the_standard_library_only():
    code = (
        "import sys\n"
        "import contract, contract.spec\n"
        + "".join(f"import contract.spec.{name}\n" for name in SPEC_MODULES)
        + "outside = sorted(m for m in sys.modules if m.split('.')[0] not in sys.stdlib_module_names"
        " and m.split('.')[0] not in ('contract', '__main__'))\n"
        "print(outside)\n"
    )
    # -S: no site-packages at all, so any import beyond the standard library fails
    result = subprocess.run(
        [SYSTEM_PYTHON, "-S", "-c", code],
        env={"PYTHONPATH": str(ROOT / "container")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.skipif(not Path(SYSTEM_PYTHON).exists(), reason="needs the system python")
def test_host_scripts_start_with_the_system_python():
    for script in ("run_local.py", "sm.py"):
        result = subprocess.run(
            [SYSTEM_PYTHON, "-S", f"scripts/{script}", "--help"],
            cwd=ROOT,
            env={},
            capture_output=True,
            text=True,
            timeout=60,
        )
        if script == "sm.py":  # needs the SDK for its commands, but its spec imports are stdlib
            assert "No module named 'torch'" not in result.stderr
            continue
        assert result.returncode == 0, result.stderr
        assert "--hp NAME=VALUE" in result.stdout
    names = subprocess.run(
        [SYSTEM_PYTHON, "-S", "-m", "contract.spec.images", "serve", "gpu"],
        env={"PYTHONPATH": str(ROOT / "container")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert names.stdout.strip() == "byoc-serve:gpu", names.stderr


def test_write_input_config(tmp_path):
    config = paths.write_input_config(
        tmp_path, hyperparameters.as_strings({"epochs": 3, "head": [256, 128]}), channels=("training", "test")
    )
    assert config == tmp_path / "input" / "config"
    assert json.loads((config / "hyperparameters.json").read_text()) == {"epochs": "3", "head": "256,128"}
    data_config = json.loads((config / "inputdataconfig.json").read_text())
    assert set(data_config) == {"training", "test"}
    assert data_config["training"]["TrainingInputMode"] == "File"
    resources = json.loads((config / "resourceconfig.json").read_text())
    assert resources["current_host"] == "algo-1" and resources["hosts"] == ["algo-1"]
    assert (tmp_path / "input" / "data" / "training").is_dir() and (tmp_path / "input" / "data" / "test").is_dir()
    # what the trainer parses back from the toolkit's `--name value` arguments
    args = hyperparameters.parse(hyperparameters.to_argv(json.loads((config / "hyperparameters.json").read_text())))
    assert args.epochs == 3 and args.head == [256, 128]


def test_base_dir_is_sagemaker_base_dir():
    assert paths.base_dir({}) == Path("/opt/ml")
    assert paths.base_dir({"SAGEMAKER_BASE_DIR": "/tmp/tree"}) == Path("/tmp/tree")
    assert paths.channel("training") == Path("/opt/ml/input/data/training")


def test_metric_reader_on_real_log_lines():
    lines = LOG.splitlines()
    assert metrics.read(lines[0]) is None
    assert metrics.read(lines[1]) is None  # a train line is not the objective
    assert metrics.read(lines[2]) == metrics.Reading("validation:loss", 1.08731, 1)
    nan = metrics.read(lines[4])
    assert nan.epoch == 2 and nan.value != nan.value  # NaN reaches the tuner, which prunes the trial
    assert metrics.read(lines[1], "train:images_per_sec").value == pytest.approx(112.4)
    assert metrics.read(lines[5], "test:accuracy") == metrics.Reading("test:accuracy", 0.8571, None)
    with pytest.raises(KeyError, match="no metric 'val:loss'"):
        metrics.read(lines[2], "val:loss")
    found = metrics.parse_log(LOG)
    assert found["train:loss"] == [1.104512, 0.912345]
    assert found["test:loss"] == [0.401234]
    # the trainer's own lines read back as written
    line = metrics.format_line("validation", 0.25, 0.75, epoch=7)
    assert metrics.read(line) == metrics.Reading("validation:loss", 0.25, 7)


def test_tuner_progress_line():
    assert search_space.TRIAL_FINISHED.match("trial 3 COMPLETE 0.412 in 12 s  (lr=0.01)").group(1) == "3"
    assert search_space.TRIAL_FINISHED.match("trial 4 PRUNED in 3 s: pruned at epoch 1")
    assert not search_space.TRIAL_FINISHED.match("trial 4 was interrupted: re-queued (lr=0.1)")


def test_hp_assignments():
    assert hyperparameters.parse_assignments(["epochs=3", "head=256,128", "lr=1e-3"]) == {
        "epochs": "3",
        "head": "256,128",
        "lr": "1e-3",
    }
    assert hyperparameters.parse_assignments(["epochs=3", "lr=1e-3", "optimizer=sgd"], typed=True) == {
        "epochs": 3,
        "lr": 0.001,
        "optimizer": "sgd",
    }
    assert hyperparameters.parse_assignments(["pretrained=s3://b/k=v"]) == {"pretrained": "s3://b/k=v"}
    for bad in ("epochs", "=3"):
        with pytest.raises(hyperparameters.HyperparameterError, match="expected name=value"):
            hyperparameters.parse_assignments([bad])


def test_hyperparameter_types_and_ranges():
    assert hyperparameters.BY_NAME["backbone"].choices == tuple(architecture.BACKBONES)
    for argv, message in (
        (["--lr", "-1"], "must be > 0"),
        (["--dropout", "1"], r"must be in \[0, 1\)"),
        (["--backbone", "vgg"], "choose one of"),
        (["--learning-rate", "1"], "unknown"),
    ):
        with pytest.raises(hyperparameters.HyperparameterError, match=message):
            hyperparameters.parse(argv)
    assert hyperparameters.parse(["--pretrained", "none"]).trainable_layers == len(architecture.STAGES)
    with pytest.raises(hyperparameters.HyperparameterError, match="unknown hyperparameter 'learning-rate'"):
        hyperparameters.to_sagemaker({"learning-rate": 1})


def test_search_space_ranges():
    for preset in search_space.PRESETS.values():
        assert all(p.name in hyperparameters.BY_NAME for p in preset.parameters)
    with pytest.raises(search_space.SearchSpaceError, match="log scale needs low > 0"):
        search_space.Parameter("lr", "continuous", 0.0, 1.0, scaling="log")
    with pytest.raises(search_space.SearchSpaceError, match="needs low < high"):
        search_space.Parameter("lr", "continuous", 1.0, 0.1)
    with pytest.raises(ValueError):  # a categorical value the trainer would refuse
        search_space.Parameter("optimizer", "categorical", values=("adamw", "rmsprop"))
    space = search_space.from_dict(
        "mine",
        {
            "parameters": [{"name": "lr", "type": "continuous", "low": 1e-4, "high": 1e-1, "scaling": "log"}],
            "fixed": {"epochs": 2},
        },
    )
    assert space.objective_regex == metrics.regex("validation:loss")


def test_presets_are_valid_hyperparameters():
    for preset in (presets.DEMO, presets.TUNING_SAMPLE, presets.DEBUG):
        hyperparameters.parse(hyperparameters.to_argv(hyperparameters.to_sagemaker(preset)))
    assert not {"lr", "batch-size"} & set(presets.TUNING_SAMPLE)  # left to seed1's search


def test_training_summary_round_trip():
    summary = artifact.TrainingSummary(
        {"lr": 0.01, "head": [256]},
        3,
        [{"epoch": 1, "validation_loss": 0.5}],
        "test",
        0.875,
        0.31,
        2,
        2,
        ["algo-1", "algo-2"],
    )
    on_disk = json.loads(json.dumps(summary.to_dict()))
    assert on_disk["test_accuracy"] == 0.875 and "validation_accuracy" not in on_disk  # keyed by its split
    assert artifact.TrainingSummary.from_dict(on_disk) == summary
    with pytest.raises(ValueError, match="split"):
        artifact.TrainingSummary(split="train")
    with pytest.raises(ValueError, match="no test_accuracy or validation_accuracy"):
        artifact.TrainingSummary.from_dict({"best_epoch": 1})


def test_image_names_and_tag_override():
    assert images.train_image({}) == "byoc-train:latest"
    assert images.serve_image("cpu", {}) == "byoc-serve:cpu"
    assert images.train_image({"BYOC_IMAGE_TAG": "h13"}) == "byoc-train:h13"
    assert images.serve_image("gpu", {"BYOC_IMAGE_TAG": "h13"}) == "byoc-serve:h13-gpu"
    with pytest.raises(ValueError, match="variant"):
        images.serve_image("tpu", {})
