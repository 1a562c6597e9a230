"""A job stopped by SIGTERM mid-epoch and restarted ends where an uninterrupted one ends.

The stop goes through the trainer's real SIGTERM handler: with
runtime.SIGTERM_AT_STEP_ENV set, rank 0 sends itself SIGTERM after that
optimizer step (fault injection; SageMaker's StopTrainingJob or a spot
interruption would send it from outside at any step). The restart uses the
same checkpoint folder, as a managed-spot restart does.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from contract import artifact
from contract.spec import metrics
from helpers.training import FAST_HPS, run_trainer
from trainer import runtime

# A head with dropout: the torch RNG state matters; augmentation on: the
# per-sample seeds matter. amp off: the numbers hold on CPUs with and without bf16.
# 97 training images, 8 a batch: 13 steps an epoch, 26 in all.
RESUME_HPS = dict(
    FAST_HPS,
    epochs=2,
    head="32",
    dropout=0.2,
    **{"batch-size": 8, "amp": "false", "num-workers": 0, "profiler": "true", "profiler-trace-steps": 0},
)
# One thread a process, as torchrun gives its workers: on a busy 2-core machine
# two threads per trainer spin against each other (10x the wall time).
ENV = {"OMP_NUM_THREADS": "1"}


def lr_trajectory(opt_ml: Path) -> list[tuple[int, float]]:
    """(global step, learning rate) of every optimizer step, from the profiler's steps.jsonl."""
    lines = (opt_ml / "output" / "profiler" / "steps.jsonl").read_text().splitlines()
    return [(r["global_step"], r["lr"]) for r in map(json.loads, lines) if "lr" in r]


def train_lines(text: str) -> dict[str, list[float]]:
    return {k: v for k, v in metrics.parse_log(text).items() if k != "train:images_per_sec"}


def run(opt_ml: Path, channels: dict, hps: dict, env: dict | None = None):
    result = run_trainer(opt_ml, channels, hps, dict(ENV, **(env or {})))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def assert_same_run(reference: Path, reference_log: str, resumed: Path, resumed_log: str, steps: int):
    expected, got = lr_trajectory(reference), lr_trajectory(resumed)
    assert [s for s, _ in expected] == list(range(1, steps + 1))
    assert [s for s, _ in got] == [s for s, _ in expected]  # as many optimizer steps
    assert [lr for _, lr in got] == pytest.approx([lr for _, lr in expected], rel=1e-9, abs=1e-12)
    assert expected[-1][1] > 0  # the cosine ends on the last step, not before
    want, have = train_lines(reference_log), train_lines(resumed_log)
    assert set(have) == set(want)
    for name in want:  # per-epoch train and validation lines, and the test line
        assert have[name] == pytest.approx(want[name], rel=1e-4, abs=1e-5), name
    a = torch.load(reference / "model" / artifact.WEIGHTS_FILE, weights_only=True)
    b = torch.load(resumed / "model" / artifact.WEIGHTS_FILE, weights_only=True)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), rtol=1e-4, atol=1e-5), key


def stop_and_resume(opt_ml: Path, channels: dict, hps: dict, stop_at: int) -> str:
    """Run until SIGTERM after optimizer step `stop_at`, then restart; both logs together."""
    stopped = run(opt_ml, channels, hps, {runtime.SIGTERM_AT_STEP_ENV: str(stop_at)})
    assert "SIGTERM received" in stopped.stdout
    assert not (opt_ml / "model" / artifact.WEIGHTS_FILE).exists()
    saved = torch.load(opt_ml / "checkpoints" / "checkpoint.pt", weights_only=True)
    assert saved["global_step"] == stop_at and saved["step"] > 0  # mid-epoch
    seconds = float(stopped.stdout.split("checkpoint saved ")[1].split(" s after SIGTERM")[0])
    assert seconds < 30  # SageMaker's grace before SIGKILL
    resumed = run(opt_ml, channels, hps)
    assert f"resuming from checkpoint in epoch {saved['epoch'] + 1} after step {saved['step']}" in resumed.stdout
    return stopped.stdout + resumed.stdout


@pytest.fixture(scope="module")
def reference(sample_data, tmp_path_factory):
    opt_ml = tmp_path_factory.mktemp("reference")
    return opt_ml, run(opt_ml, {"training": sample_data}, RESUME_HPS).stdout


@pytest.mark.parametrize(
    "stop_at, workers",
    [(20, 0), (20, 2), (13, 0)],
    ids=["mid-epoch", "mid-epoch-loader-workers", "last-step-of-an-epoch"],
)
def test_sigterm_mid_epoch_resumes_exactly(reference, sample_data, tmp_path, stop_at, workers):
    """Step 20 is the 7th of epoch 2; step 13 the last of epoch 1 (the restart has only its validation left).
    The reference ran without loader workers: augmentation is seeded per image, not by the workers' state."""
    hps = dict(RESUME_HPS, **{"num-workers": workers})
    log = stop_and_resume(tmp_path, {"training": sample_data}, hps, stop_at)
    assert_same_run(reference[0], reference[1], tmp_path, log, steps=26)


def test_ddp_sigterm_mid_epoch_resumes_exactly(sample_data, tmp_path):
    """Two processes (gloo): each DistributedSampler resumes at its own position."""
    channels = {"training": sample_data}
    hps = dict(RESUME_HPS, **{"processes-per-host": 2})
    reference = run(tmp_path / "reference", channels, hps)
    # 49 images per process, 7 steps an epoch: step 10 is the 3rd of epoch 2
    log = stop_and_resume(tmp_path / "resumed", channels, hps, stop_at=10)
    assert_same_run(tmp_path / "reference", reference.stdout, tmp_path / "resumed", log, steps=14)


# -- SIGTERM in validation and in the final scoring (runtime.SIGTERM_IN_SPLIT_ENV) --------------


def test_sigterm_in_validation_saves_the_epoch_and_a_restart_redoes_only_the_validation(
    reference, sample_data, tmp_path
):
    channels = {"training": sample_data}
    stopped = run(tmp_path, channels, RESUME_HPS, {runtime.SIGTERM_IN_SPLIT_ENV: "validation"})
    assert "stopped in epoch 1's validation: checkpoint saved " in stopped.stdout, stopped.stdout[-3000:]
    seconds = float(stopped.stdout.split("checkpoint saved ")[1].split(" s after SIGTERM")[0])
    assert seconds < 30  # SageMaker's grace before SIGKILL
    assert "#metric epoch=1" not in stopped.stdout  # the epoch's line waits for its validation
    saved = torch.load(tmp_path / "checkpoints" / "checkpoint.pt", weights_only=True)
    assert (saved["epoch"], saved["step"], saved["global_step"]) == (0, 13, 13)  # epoch 1 trained, not validated
    resumed = run(tmp_path, channels, RESUME_HPS)
    assert "resuming from checkpoint in epoch 1 after step 13" in resumed.stdout
    assert_same_run(reference[0], reference[1], tmp_path, stopped.stdout + resumed.stdout, steps=26)


def test_sigterm_while_scoring_the_test_set_keeps_the_checkpoint_and_a_restart_finishes(
    reference, sample_data, tmp_path
):
    channels = {"training": sample_data}
    stopped = run(tmp_path, channels, RESUME_HPS, {runtime.SIGTERM_IN_SPLIT_ENV: "test"})
    assert "stopped while scoring the test set, " in stopped.stdout, stopped.stdout[-3000:]
    seconds = float(stopped.stdout.split("stopped while scoring the test set, ")[1].split(" s after SIGTERM")[0])
    assert seconds < 30
    assert not (tmp_path / "model" / artifact.WEIGHTS_FILE).exists()  # no artifact, no report
    assert not (tmp_path / "output" / "failure").exists()  # a stop, not a failure
    saved = torch.load(tmp_path / "checkpoints" / "checkpoint.pt", weights_only=True)
    assert (saved["epoch"], saved["step"]) == (2, 0)
    resumed = run(tmp_path, channels, RESUME_HPS)
    assert "resuming from checkpoint after epoch 2" in resumed.stdout
    assert_same_run(reference[0], reference[1], tmp_path, stopped.stdout + resumed.stdout, steps=26)


def test_ddp_sigterm_in_validation_stops_every_rank_at_the_same_batch(sample_data, tmp_path):
    """Two processes (gloo): rank 0 gets the signal, both leave validation at the batch they agreed on
    (else one would wait in a collective the other never joins), and the restart ends as the reference."""
    channels = {"training": sample_data}
    hps = dict(RESUME_HPS, **{"processes-per-host": 2})
    reference = run(tmp_path / "reference", channels, hps)
    stopped = run(tmp_path / "resumed", channels, hps, {runtime.SIGTERM_IN_SPLIT_ENV: "validation"})
    assert "stopped in epoch 1's validation: checkpoint saved " in stopped.stdout, stopped.stdout[-3000:]
    resumed = run(tmp_path / "resumed", channels, hps)
    assert "resuming from checkpoint in epoch 1 after step 7" in resumed.stdout  # 49 images a rank, 8 a batch
    log = stopped.stdout + resumed.stdout
    assert_same_run(tmp_path / "reference", reference.stdout, tmp_path / "resumed", log, steps=14)
