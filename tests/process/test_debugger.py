"""The smdebug hook in the trainer: from SageMaker's JSON config, from hyperparameters, off by default."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from contract.spec import hyperparameters
from helpers.training import CONTAINER, FAST_HPS, run_trainer
from trainer import debugger, runtime

SHORT = dict(FAST_HPS, epochs=1, **{"max-steps-per-epoch": 3, "profiler": "false"})


def load_trial(path):
    from smdebug.trials import create_trial

    return create_trial(str(path))


def sagemaker_hook_config(opt_ml, tensors):
    """What SageMaker writes for DebuggerHookConfig(collection_configs=[...]) (see insights/rules.py)."""
    config = {
        "LocalPath": str(tensors),
        "HookParameters": {"save_interval": "1"},
        "CollectionConfigurations": [
            {"CollectionName": "losses", "CollectionParameters": {"save_interval": "1"}},
            {
                "CollectionName": "weights",
                "CollectionParameters": {"train.save_interval": "2", "eval.save_interval": "1"},
            },
            {"CollectionName": "gradients", "CollectionParameters": {"save_interval": "1"}},
            {
                "CollectionName": "relu_input",
                "CollectionParameters": {"include_regex": ".*relu_input", "save_interval": "1"},
            },
        ],
    }
    path = opt_ml / "input" / "config" / "debughookconfig.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config))


@pytest.fixture(scope="module")
def sagemaker_run(sample_data, tmp_path_factory):
    opt_ml = tmp_path_factory.mktemp("opt_ml")
    sagemaker_hook_config(opt_ml, opt_ml / "output" / "tensors")
    # amp true: bf16 autocast on every CPU (auto would use it only on CPUs with native bf16), so the
    # hook's bf16-to-fp32 conversion is exercised wherever the test runs
    result = run_trainer(opt_ml, {"training": sample_data}, dict(SHORT, amp="true"))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "amp=torch.bfloat16" in result.stdout
    return opt_ml, result


def test_json_config_writes_the_configured_collections_in_both_modes(sagemaker_run):
    from smdebug import modes

    opt_ml, result = sagemaker_run
    assert "debugger: smdebug hook from" in result.stdout and "debughookconfig.json" in result.stdout
    trial = load_trial(opt_ml / "output" / "tensors")
    loss = trial.tensor("CrossEntropyLoss_output_0")
    assert len(loss.steps(mode=modes.TRAIN)) == 3  # every training step
    assert len(loss.steps(mode=modes.EVAL)) == 2  # 24 validation images in batches of 16
    assert loss.steps(mode=modes.PREDICT)  # the final test scoring, apart from validation
    weights = trial.tensor_names(collection="weights")
    assert weights and trial.tensor(weights[0]).steps(mode=modes.TRAIN) == [0, 2]
    assert trial.tensor(weights[0]).steps(mode=modes.EVAL) == [0, 1]
    gradients = trial.tensor_names(collection="gradients")
    assert gradients and all(name.startswith("gradient/") for name in gradients)
    assert not trial.tensor(gradients[0]).steps(mode=modes.EVAL)  # no backward pass in evaluation
    relu = trial.tensor_names(regex=".*relu_input")
    assert "layer1.0.relu_input_0" in relu
    # ReLUs run out of place while relu_input is collected: the input is not overwritten by the output
    assert trial.tensor("layer1.0.relu_input_0").value(0, mode=modes.TRAIN).min() < 0
    assert "scalar/validation_loss" in trial.tensor_names()


def test_model_still_trains_to_the_same_metric_lines(sagemaker_run):
    _, result = sagemaker_run
    assert "#metric epoch=1 split=validation" in result.stdout and "#metric split=test" in result.stdout


def test_hyperparameters_switch_it_on_locally_with_own_folder_and_intervals(sample_data, tmp_path):
    from smdebug import modes

    tensors = tmp_path / "my-trial"
    hps = dict(
        SHORT,
        debugger="true",
        **{"debugger-collections": "losses,biases:2", "debugger-save-interval": "1", "debugger-dir": str(tensors)},
    )
    result = run_trainer(tmp_path / "opt_ml", {"training": sample_data}, hps)
    assert result.returncode == 0, result.stderr[-3000:]
    trial = load_trial(tensors)
    assert trial.tensor("CrossEntropyLoss_output_0").steps(mode=modes.TRAIN) == [0, 1, 2]
    biases = trial.tensor_names(collection="biases")
    assert biases and trial.tensor(biases[0]).steps(mode=modes.TRAIN) == [0, 2]
    assert not trial.tensor_names(collection="weights")
    assert not (tmp_path / "opt_ml" / "output" / "tensors").exists()


def test_every_epochs_scalars_are_kept_when_their_steps_are_not_saved(sample_data, tmp_path):
    """Losses saved every 100 steps, so no step after the first: the per-epoch scalars must still all arrive."""
    opt_ml = tmp_path / "opt_ml"
    hps = dict(SHORT, epochs=3, debugger="true", **{"max-steps-per-epoch": 1, "debugger-collections": "losses:100"})
    result = run_trainer(opt_ml, {"training": sample_data}, hps)
    assert result.returncode == 0, result.stderr[-3000:]
    trial = load_trial(opt_ml / "output" / "tensors")
    history = json.loads((opt_ml / "model" / "model_config.json").read_text())["training"]["history"]
    for name in ("train_loss", "validation_loss"):
        scalar = trial.tensor(f"scalar/{name}")
        assert [float(scalar.value(step)) for step in scalar.steps()] == pytest.approx(
            [epoch[name] for epoch in history], rel=1e-5
        ), name


def test_off_by_default_without_importing_smdebug(tmp_path):
    code = (
        "import sys; from pathlib import Path; from contract.spec import hyperparameters; "
        "from trainer import debugger, runtime;"
        f"d = debugger.create(hyperparameters.parse([]), runtime.Paths(Path({str(tmp_path)!r})));"
        "print(type(d).__name__, 'smdebug' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=CONTAINER, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["NullDebugger", "False"], out.stderr


def test_a_broken_config_is_logged_and_training_goes_on(sample_data, tmp_path):
    opt_ml = tmp_path / "opt_ml"
    (opt_ml / "input" / "config").mkdir(parents=True)
    (opt_ml / "input" / "config" / "debughookconfig.json").write_text("{not json")
    result = run_trainer(opt_ml, {"training": sample_data}, dict(SHORT, **{"max-steps-per-epoch": 1}))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "could not create the smdebug hook; training continues" in result.stderr


def test_an_error_inside_the_hooks_switches_the_debugger_off(tmp_path, capsys):
    # not smdebug's default configuration (losses only), for which its own error handler would
    # switch it off process-wide; ours covers every configuration
    hp = hyperparameters.parse(
        ["--debugger", "true", "--debugger-collections", "losses:1,weights:1", "--debugger-dir", str(tmp_path / "t")]
    )
    dbg = debugger.create(hp, runtime.Paths(tmp_path))
    model, criterion = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), nn.CrossEntropyLoss()
    dbg.attach(model, criterion)
    dbg.train()

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    dbg.hook._write_outputs = broken  # called from smdebug's forward hook when saving the loss
    x, y = torch.randn(3, 4), torch.tensor([0, 1, 0])
    for _ in range(2):
        criterion(model(x), y).backward()  # no exception reaches the training step
    assert dbg.failed
    assert "smdebug failed and is switched off; training continues" in capsys.readouterr().err
    dbg.close()


def test_loss_plot_from_the_trial(sagemaker_run, tmp_path):
    from insights import loss_plot

    opt_ml, _ = sagemaker_run
    counts = loss_plot.plot(str(opt_ml / "output" / "tensors"), str(tmp_path / "losses.png"))
    assert counts == {"TRAIN": 3, "EVAL": 2}
    assert (tmp_path / "losses.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
