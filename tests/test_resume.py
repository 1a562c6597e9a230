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

from conftest import FAST_HPS, run_trainer
from contract import artifact
from trainer import metrics, runtime

# A head with dropout: the torch RNG state matters; augmentation on: the
# per-sample seeds matter. amp off: the numbers hold on CPUs with and without bf16.
RESUME_HPS = dict(FAST_HPS, epochs=3, head="32", dropout=0.2, **{
    "batch-size": 8, "amp": "false", "num-workers": 0, "profiler": "true", "profiler-trace-steps": 0})


def lr_trajectory(opt_ml: Path) -> list[tuple[int, float]]:
    """(global step, learning rate) of every optimizer step, from the profiler's steps.jsonl."""
    lines = (opt_ml / "output" / "profiler" / "steps.jsonl").read_text().splitlines()
    return [(r["global_step"], r["lr"]) for r in map(json.loads, lines) if "lr" in r]


def train_lines(text: str) -> dict[str, list[float]]:
    return {k: v for k, v in metrics.parse_log(text).items() if k != "train:images_per_sec"}


def assert_same_run(reference: Path, reference_log: str, resumed: Path, resumed_log: str):
    expected, got = lr_trajectory(reference), lr_trajectory(resumed)
    assert [s for s, _ in got] == [s for s, _ in expected] == list(range(1, len(expected) + 1))
    assert [lr for _, lr in got] == pytest.approx([lr for _, lr in expected], rel=1e-9, abs=1e-12)
    assert expected[-1][1] > 0  # the cosine ends on its last step, not past it
    want, have = train_lines(reference_log), train_lines(resumed_log)
    assert set(have) == set(want)
    for name in want:
        assert have[name] == pytest.approx(want[name], rel=1e-4, abs=1e-5), name
    a = torch.load(reference / "model" / artifact.WEIGHTS_FILE, weights_only=True)
    b = torch.load(resumed / "model" / artifact.WEIGHTS_FILE, weights_only=True)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), rtol=1e-4, atol=1e-5), key


def stop_and_resume(opt_ml: Path, channels: dict, hps: dict, stop_at: int):
    """Run until SIGTERM after optimizer step `stop_at`, then restart; both logs together."""
    stopped = run_trainer(opt_ml, channels, hps, {runtime.SIGTERM_AT_STEP_ENV: str(stop_at)})
    assert stopped.returncode == 0, stopped.stdout[-3000:] + stopped.stderr[-3000:]
    assert "SIGTERM received" in stopped.stdout
    assert not (opt_ml / "model" / artifact.WEIGHTS_FILE).exists()
    saved = torch.load(opt_ml / "checkpoints" / "checkpoint.pt", weights_only=True)
    assert saved["global_step"] == stop_at and saved["step"] > 0  # mid-epoch
    seconds = float(stopped.stdout.split("checkpoint saved ")[1].split(" s after SIGTERM")[0])
    assert seconds < 30  # SageMaker's grace before SIGKILL
    resumed = run_trainer(opt_ml, channels, hps)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resuming from checkpoint in epoch {saved['epoch'] + 1} after step {saved['step']}" in resumed.stdout
    return stopped.stdout + resumed.stdout


@pytest.mark.parametrize("workers", [0, 2])
def test_sigterm_mid_epoch_resumes_exactly(sample_data, tmp_path, workers):
    """With loader workers too: augmentation is seeded per sample, not by the workers' state."""
    channels = {"training": sample_data}
    reference = run_trainer(tmp_path / "reference", channels, RESUME_HPS)
    assert reference.returncode == 0, reference.stderr[-3000:]
    # 13 steps an epoch (97 images, 8 a batch): step 20 is the 7th of epoch 2
    hps = dict(RESUME_HPS, **{"num-workers": workers})
    log = stop_and_resume(tmp_path / "resumed", channels, hps, stop_at=20)
    assert_same_run(tmp_path / "reference", reference.stdout, tmp_path / "resumed", log)
    assert len(lr_trajectory(tmp_path / "reference")) == 39


def test_sigterm_on_an_epochs_last_step_resumes_into_validation(sample_data, tmp_path):
    channels = {"training": sample_data}
    hps = dict(RESUME_HPS, epochs=2)
    reference = run_trainer(tmp_path / "reference", channels, hps)
    assert reference.returncode == 0, reference.stderr[-3000:]
    log = stop_and_resume(tmp_path / "resumed", channels, hps, stop_at=13)  # the last batch of epoch 1
    assert_same_run(tmp_path / "reference", reference.stdout, tmp_path / "resumed", log)


def test_ddp_sigterm_mid_epoch_resumes_exactly(sample_data, tmp_path):
    """Two processes (gloo): each DistributedSampler resumes at its own position."""
    channels = {"training": sample_data}
    hps = dict(RESUME_HPS, **{"processes-per-host": 2})
    reference = run_trainer(tmp_path / "reference", channels, hps)
    assert reference.returncode == 0, reference.stdout[-3000:] + reference.stderr[-3000:]
    # 49 images per process, 7 steps an epoch: step 10 is the 3rd of epoch 2
    log = stop_and_resume(tmp_path / "resumed", channels, hps, stop_at=10)
    assert_same_run(tmp_path / "reference", reference.stdout, tmp_path / "resumed", log)
    assert len(lr_trajectory(tmp_path / "reference")) == 21
