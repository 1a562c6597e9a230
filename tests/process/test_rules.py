"""SageMaker Debugger's rules, evaluated locally over trials written by real training runs.

Each rule has a run that must trigger it and one that must not, each far from
the rule's threshold: the trainer's `amp` is auto (bf16 on CPUs with native
bf16, fp32 elsewhere), so it is pinned false here and the runs are the same on
every CPU. The runs are short (resnet18, 64 px, 3 steps of 32 images per epoch)
and save what the rules read.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from helpers.training import CONTAINER, FAST_HPS, run_trainer
from helpers.trials import FROM_SCRATCH, from_scratch_epochs, loss_trial, overfitting_epochs, write_trial
from insights import rules

BASE = dict(
    FAST_HPS, amp="false", **{"batch-size": 32, "max-steps-per-epoch": 3, "debugger": "true", "profiler": "false"}
)
# every collection at steps 0 and 3: the first steps for PoorWeightInitialization, a pair for WeightUpdateRatio
ALL = "losses:1,weights:3,gradients:3,relu_input:3"
# three-step windows: one window per epoch of these runs (the default, 10, needs longer runs)
PER_EPOCH = {"LossNotDecreasing": {"num_steps": 3}}


@pytest.fixture(scope="module")
def trial(sample_data, tmp_path_factory):
    """name -> trial folder of a finished (or failed) run; each run once per module."""
    made = {}

    def make(name: str, **hps) -> str:
        if name not in made:
            opt_ml = tmp_path_factory.mktemp(name)
            result = run_trainer(opt_ml, {"training": sample_data}, dict(BASE, **hps), timeout=1200)
            expect_failure = name == "nan"
            assert (result.returncode != 0) == expect_failure, result.stdout[-2000:] + result.stderr[-3000:]
            made[name] = str(opt_ml / "output" / "tensors")
        return made[name]

    return make


def tiny_init_weights(folder) -> str:
    """A 'pretrained' backbone with every weight scaled by 1e-3: activations and gradients vanish."""
    from contract.model import Architecture, build_classifier

    torch.manual_seed(0)
    state = build_classifier(Architecture("resnet18", 4)).state_dict()
    scaled = {k: v if ("running" in k or "num_batches" in k) else v * 1e-3 for k, v in state.items()}
    path = folder / "tiny-init.pth"
    torch.save(scaled, path)
    return str(path)


RUNS = {
    # all layers trained from scratch at lr 1e-3: learns, nothing wrong
    "healthy": dict(epochs=2, **{"debugger-collections": ALL}),
    # a head on fixed features (a frozen backbone, unaugmented images): a convex problem, whose loss
    # falls from epoch to epoch without the noise of a network finding its way
    "convex": dict(epochs=4, lr=0.01, augment="false", **{"trainable-layers": 0, "debugger-collections": "losses:1"}),
    # the seeds' set-up: a frozen backbone and a trained head; validation follows training
    "frozen": dict(epochs=3, lr=0.01, **{"trainable-layers": 0, "debugger-collections": "losses:1"}),
    "tiny": dict(epochs=1, **{"debugger-collections": "losses:1,gradients:1,relu_input:1"}),
    "hot": dict(epochs=4, lr=10, **{"debugger-collections": "losses:1,weights:1"}),
    "nan": dict(epochs=2, optimizer="sgd", lr="1e12", **{"debugger-collections": "losses:1"}),
    # the same at lr 1e-9: nothing learns, the loss only wanders with the batches
    "flat": dict(epochs=6, lr="1e-9", augment="false", **{"trainable-layers": 0, "debugger-collections": "losses:1"}),
}

CASES = [  # rule, run that must trigger it, run that must not
    ("VanishingGradient", "tiny", "healthy"),
    ("PoorWeightInitialization", "tiny", "healthy"),
    ("LossNotDecreasing", "flat", "convex"),
    ("ExplodingTensor", "nan", "healthy"),
    ("WeightUpdateRatio", "hot", "healthy"),
    ("Overfit", "overfitting", "frozen"),
    ("Overtraining", "overfitting", "frozen"),
]
# The sample data is too easy for a short run to overfit (validation loss falls to the end in every run
# tried); this trial has the losses of one that does, written by smdebug's hook (helpers/trials.py)
SYNTHETIC = {"overfitting": overfitting_epochs}


def _trial_for(name, trial, tmp_path_factory):
    if name in SYNTHETIC:
        return write_trial(tmp_path_factory.mktemp(name), SYNTHETIC[name]())
    hps = dict(RUNS[name])
    if name == "tiny":
        hps["pretrained"] = tiny_init_weights(tmp_path_factory.mktemp("weights"))
    return trial(name, **hps)


@pytest.mark.parametrize("rule, bad, good", CASES, ids=[c[0] for c in CASES])
def test_rule_triggers_on_the_bad_run_only(rule, bad, good, trial, tmp_path_factory):
    fired = rules.run(_trial_for(bad, trial, tmp_path_factory), [rule], PER_EPOCH)[rule]
    assert fired["status"] == "IssuesFound" and fired["first_step"] is not None, fired
    quiet = rules.run(_trial_for(good, trial, tmp_path_factory), [rule], PER_EPOCH)[rule]
    assert quiet["status"] == "NoIssuesFound", quiet
    assert quiet["judgements"] > 0 and not quiet["message"]  # it compared something, and all was well


@pytest.mark.parametrize("seed", sorted(FROM_SCRATCH))
def test_a_from_scratch_runs_unsettled_start_is_neither_overfitting_nor_overtraining(seed, tmp_path):
    """Four seeds of one from-scratch run (helpers/trials.py): validation losses of hundreds that rise
    and fall while BatchNorm settles, then fall below where training began, and on to ~0.1. Judged from
    their first pass, three of the four "overfit" and two "overtrain"; judged from where the model
    generalises, none overfits, and one overtrains: seed 2's last two passes are no better than its best."""
    from insights.trial import LOSS_NAME, open_trial, phase_means

    path = write_trial(tmp_path, from_scratch_epochs(seed))
    phases = phase_means(open_trial(path), LOSS_NAME)
    assert phases[0].validation > 50 * phases[0].train and len(phases) == 10  # the premise: an unsettled start
    generalising = [p for p in phases if p.validation < phases[0].train]
    assert len(generalising) >= 3 and generalising == phases[-len(generalising) :]
    verdicts = rules.run(path, ["Overfit", "Overtraining"])
    overfit, overtraining = verdicts["Overfit"], verdicts["Overtraining"]
    assert overfit["status"] == "NoIssuesFound" and overfit["judgements"] == len(generalising) - 1, overfit
    assert overtraining["judgements"] == len(generalising) - 1, overtraining
    if seed == 2:  # validation 0.126, 0.126, 0.127 after its best: two passes of training for nothing
        assert overtraining["status"] == "IssuesFound" and overtraining["first_step"] == phases[-1].step
    else:
        assert overtraining["status"] == "NoIssuesFound", overtraining


def test_loss_not_decreasing_on_the_epochs_mean_losses_when_windows_are_too_few(trial, tmp_path_factory):
    """Windows of 100 steps: these runs have one; the trainer's per-epoch mean losses are judged instead."""
    wide = {"LossNotDecreasing": {"num_steps": 100}}
    quiet = rules.run(_trial_for("convex", trial, tmp_path_factory), ["LossNotDecreasing"], wide)
    assert quiet["LossNotDecreasing"]["status"] == "NoIssuesFound", quiet
    assert quiet["LossNotDecreasing"]["judgements"] == 3  # epochs 2, 3 and 4 against the one before
    fired = rules.run(_trial_for("flat", trial, tmp_path_factory), ["LossNotDecreasing"], wide)
    assert fired["LossNotDecreasing"]["status"] == "IssuesFound", fired
    assert "per epoch" in fired["LossNotDecreasing"]["message"]


def test_loss_not_decreasing_judges_windows_not_single_batches(tmp_path):
    """35 steps as the sample data's 5 epochs of 7: the loss falls, batch noise +-30%, and each epoch's
    last batch (one image) 4x off. Single steps 10 apart would compare a spike (step 20) with a batch."""
    import numpy as np

    steps = np.arange(35)
    noise = np.random.RandomState(0).uniform(0.7, 1.3, 35)  # the same numbers on every platform
    falling = (1.2 * np.exp(-steps / 12) + 0.3) * noise
    falling[6::7] *= 4
    verdict = rules.run(loss_trial(tmp_path / "falling", falling), ["LossNotDecreasing"])["LossNotDecreasing"]
    assert verdict["status"] == "NoIssuesFound" and verdict["judgements"] == 2, verdict  # 0-9, 10-19, 20-29
    # the run's last, partial window (steps 30-34, the last epoch's tail) is not judged on its own:
    # a tail twice as high does not turn a falling run into "not decreasing"
    tail = falling.copy()
    tail[30:] *= 2
    verdict = rules.run(loss_trial(tmp_path / "tail", tail), ["LossNotDecreasing"])["LossNotDecreasing"]
    assert verdict["status"] == "NoIssuesFound" and verdict["judgements"] == 2, verdict
    flat = rules.run(loss_trial(tmp_path / "flat", 1.4 * noise), ["LossNotDecreasing"])["LossNotDecreasing"]
    assert flat["status"] == "IssuesFound", flat
    # converged: the loss falls from about 1 to 0.36, then its last window's median is 4% higher (0.377),
    # inside the batches' noise: a plateau, not a stall (single comparisons of medians called it one)
    plateau = np.maximum(1.5 * np.exp(-steps / 10), 0.3) * noise
    plateau[20:] *= 1.2
    verdict = rules.run(loss_trial(tmp_path / "plateau", plateau), ["LossNotDecreasing"])["LossNotDecreasing"]
    assert verdict["status"] == "NoIssuesFound" and verdict["judgements"] == 2, verdict
    # a loss that climbs back well above its noise is an issue even after it had fallen
    climbing = plateau.copy()
    climbing[20:] *= 2.5
    verdict = rules.run(loss_trial(tmp_path / "climbing", climbing), ["LossNotDecreasing"])["LossNotDecreasing"]
    assert verdict["status"] == "IssuesFound" and verdict["first_step"] == 29, verdict
    short = rules.run(loss_trial(tmp_path / "short", falling[:12]), ["LossNotDecreasing"])["LossNotDecreasing"]
    assert short["status"] == "NotEnoughData" and "losses:1" in short["message"], short


@pytest.mark.parametrize("rule", ["LossNotDecreasing", "Overtraining", "WeightUpdateRatio"])
def test_a_run_too_short_to_judge_says_not_enough_data(rule, trial, tmp_path_factory):
    """One epoch of three steps: no two windows, no two epochs, too few steps for any patience."""
    verdict = rules.run(_trial_for("tiny", trial, tmp_path_factory), [rule])[rule]
    assert verdict["status"] == "NotEnoughData" and verdict["judgements"] == 0, verdict
    assert verdict["message"]  # what it would need


def test_cli_prints_each_rule_and_writes_a_summary(trial, tmp_path, tmp_path_factory):
    summary = tmp_path / "summary.json"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "insights.rules",
            _trial_for("tiny", trial, tmp_path_factory),
            "--out",
            str(summary),
            "--param",
            "PoorWeightInitialization.steps=3",
        ],
        cwd=CONTAINER,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = {line.split()[0]: line for line in out.stdout.splitlines() if line.split()}
    assert set(rules.BY_NAME) <= set(lines)
    assert "VanishingGradient" in lines and "IssuesFound at step 0" in lines["VanishingGradient"]
    assert lines["LossNotDecreasing"].split()[1].startswith("NotEnoughData")
    result = json.loads(summary.read_text())["rules"]
    assert result["PoorWeightInitialization"]["parameters"] == {"steps": "3"}
    assert result["VanishingGradient"]["status"] == "IssuesFound"
    assert result["LossNotDecreasing"]["status"] == "NotEnoughData" and result["LossNotDecreasing"]["message"]


def test_defaults_are_the_ones_aws_documents():
    import inspect

    expected = {
        "VanishingGradient": {"threshold": 1e-7},
        "Overfit": {"start_step": 0, "patience": 1, "ratio_threshold": 0.1},
        "Overtraining": {"patience_train": 5, "patience_validation": 10, "delta": 0.01},
        "PoorWeightInitialization": {
            "activation_inputs_regex": ".*relu_input",
            "threshold": 10.0,
            "distribution_range": 0.001,
            "patience": 5,
            "steps": 10,
        },
        "LossNotDecreasing": {
            "use_losses_collection": True,
            "num_steps": 10,
            "diff_percent": 0.0,
            "increase_threshold_percent": 5.0,
        },
        "ExplodingTensor": {"only_nan": False},
        "WeightUpdateRatio": {"num_steps": 500, "large_threshold": 10.0, "small_threshold": 1e-8, "epsilon": 1e-9},
    }
    for name, values in expected.items():
        signature = inspect.signature(rules.BY_NAME[name].cls.__init__).parameters
        assert {k: signature[k].default for k in values} == values, name
