"""Platform faults on the real trainer process: SIGKILL mid-artifact, SIGTERM in validation or at the end,
SIGINT, a failure on a DDP rank other than 0. Each leaves a consistent state and a one-line reason."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import make_sample_data  # noqa: E402  (scripts/, on the path through conftest)
from contract import artifact
from helpers.training import FAST_HPS, TRAINER_SCRIPT, failure_reason, hp_args, run_trainer, trainer_env
from trainer import runtime

ONE_STEP = dict(FAST_HPS, epochs=1, **{"max-steps-per-epoch": 1, "num-workers": 0})
ENV = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory) -> Path:
    """The sample data with one class fewer: an artifact of other shape than the sample data's."""
    return make_sample_data.make(tmp_path_factory.mktemp("three") / "dogImages", classes=3, per_class=8)


def consistent_artifact(model_dir: Path) -> list | None:
    """The class names of the artifact in `model_dir`, None if it holds none; fails on a mix."""
    try:
        model, config = artifact.load(model_dir)
    except artifact.ArtifactError as exc:
        assert f"{artifact.CONFIG_FILE} not found" in str(exc), str(exc)  # none, not a broken one
        return None
    head_bias = [v for k, v in model.state_dict().items() if k.startswith("fc.") and k.endswith("bias")][-1]
    assert len(head_bias) == len(config["class_names"])  # load() checked the weights against the config
    return config["class_names"]


def test_sigkill_between_weights_and_config_leaves_no_mix(sample_data, three_classes, tmp_path):
    """A first job writes a 4-class artifact; a second, of 3 classes, is SIGKILLed right after its weights
    are in place (the test hook). Then the folder holds the old artifact or none; a rerun writes the new."""
    first = run_trainer(tmp_path, {"training": sample_data}, ONE_STEP, ENV)
    assert first.returncode == 0, first.stderr[-3000:]
    old_classes = consistent_artifact(tmp_path / "model")
    assert old_classes is not None and len(old_classes) == 4

    killed = run_trainer(
        tmp_path, {"training": three_classes}, ONE_STEP, dict(ENV, **{artifact.SIGKILL_AFTER_WEIGHTS_ENV: "1"})
    )
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert consistent_artifact(tmp_path / "model") in (old_classes, None)

    rerun = run_trainer(tmp_path, {"training": three_classes}, ONE_STEP, ENV)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    new_classes = consistent_artifact(tmp_path / "model")
    assert new_classes is not None and len(new_classes) == 3
    assert len(artifact.calibration_files(tmp_path / "model")) == artifact.CALIBRATION_IMAGES
    assert not list(tmp_path.glob(f"{artifact.STAGING_PREFIX}*"))  # the killed job's staging is gone too


# -- failure reasons: every rank's, and Ctrl-C's ----------------------------------


def start_trainer(opt_ml: Path, channels: dict, hps: dict, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(TRAINER_SCRIPT), *hp_args(hps)],
        env=trainer_env(opt_ml, channels, dict(ENV, **(env or {}))),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def read_until(proc: subprocess.Popen, marker: str, seconds: float = 180) -> list[str]:
    """The trainer's lines up to the first holding `marker` (at most `seconds`; a line a step at least)."""
    lines, deadline = [], time.monotonic() + seconds
    for line in proc.stdout:
        lines.append(line)
        if marker in line or time.monotonic() > deadline:
            break
    assert marker in "".join(lines), "".join(lines)[-3000:]
    return lines


def finish(proc: subprocess.Popen, lines: list[str], seconds: float = 120) -> str:
    """The whole log, once the trainer has exited (killed if it outlives `seconds`)."""
    try:
        rest, _ = proc.communicate(timeout=seconds)
    finally:
        proc.kill()
        proc.wait()
    return "".join(lines) + (rest or "")


def test_a_failure_on_rank_1_reaches_the_failure_file(sample_data, tmp_path):
    """Rank 1 fails after its first step (the test hook); rank 0 then fails in the collective that lost its
    peer. The file keeps rank 1's reason, the first, not rank 0's consequence (nor nothing)."""
    hps = dict(ONE_STEP, amp="false", **{"processes-per-host": 2, "trainable-layers": 0})
    result = run_trainer(tmp_path, {"training": sample_data}, hps, dict(ENV, **{runtime.FAIL_ON_RANK_ENV: "1"}))
    assert result.returncode != 0
    assert failure_reason(tmp_path) == "rank 1: injected failure on rank 1 (TRAINER_FAIL_ON_RANK)\n", (
        result.stdout[-2000:] + result.stderr[-3000:]
    )


def test_ctrl_c_writes_a_reason_and_exits_non_zero(sample_data, tmp_path):
    """SIGINT (KeyboardInterrupt, which is no Exception) mid-training: a reason, exit status 130."""
    (tmp_path / "output").mkdir()
    (tmp_path / "output" / "failure").write_text("an earlier run's reason\n")  # cleared at the start
    # A shell that starts a job in the background (`cmd &`) has it ignore SIGINT, and an ignored
    # signal stays ignored across exec: give the trainer the default disposition whatever ran us
    # (a caught signal is reset to the default at exec; this process's own handler comes back after).
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = start_trainer(tmp_path, {"training": sample_data}, dict(FAST_HPS, epochs=20, **{"num-workers": 0}))
    finally:
        signal.signal(signal.SIGINT, inherited)
    lines = read_until(proc, "#metric epoch=1 split=train")
    proc.send_signal(signal.SIGINT)
    log = finish(proc, lines)
    assert proc.returncode == 130, log[-3000:]
    assert failure_reason(tmp_path) == "interrupted by SIGINT\n"
