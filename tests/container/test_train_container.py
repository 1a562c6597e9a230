"""The training image built from Dockerfile.train and run as SageMaker runs it: `IMAGE train`."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid

import pytest

from contract import artifact
from contract.spec import images, metrics
from helpers.training import FAST_HPS, build_image, write_sagemaker_config

IMAGE = images.train_image()


@pytest.fixture(scope="module")
def train_image(engine):
    build_image(engine, "train")
    return IMAGE


def make_tree(tmp_path, sample_data, hps):
    opt_ml = tmp_path / "opt_ml"
    shutil.copytree(sample_data, opt_ml / "input" / "data" / "training")
    write_sagemaker_config(opt_ml, hps, ["training"])
    return opt_ml


def run(engine, *args, timeout=900):
    return subprocess.run([engine.cli, *args], env=engine.env, capture_output=True, text=True, timeout=timeout)


def test_train_in_the_container(engine, train_image, sample_data, tmp_path):
    opt_ml = make_tree(tmp_path, sample_data, dict(FAST_HPS, epochs=3))
    result = run(engine, "run", "--rm", "-v", f"{opt_ml}:/opt/ml", train_image, "train")
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert "Reporting training SUCCESS" in log  # the sagemaker-training toolkit ran toolkit_entry_point.py
    assert len(metrics.parse_log(log)["validation:loss"]) == 3
    model, config = artifact.load(opt_ml / "model")
    assert len(config["class_names"]) == 4
    assert json.loads((opt_ml / "output" / "data" / "evaluation.json").read_text())["accuracy"] > 0.5
    assert not (opt_ml / "output" / "failure").exists()


def test_failure_reason_survives_the_toolkit(engine, train_image, sample_data, tmp_path):
    opt_ml = make_tree(tmp_path, sample_data, dict(FAST_HPS, **{"learning-rate": "0.1"}))
    result = run(engine, "run", "--rm", "-v", f"{opt_ml}:/opt/ml", train_image, "train")
    assert result.returncode != 0
    reason = (opt_ml / "output" / "failure").read_text()
    assert reason.startswith("unknown hyperparameter '--learning-rate'") and reason.count("\n") == 1, reason


def test_stop_checkpoints_and_exits_cleanly(engine, train_image, sample_data, tmp_path):
    """`docker stop` sends SIGTERM to the entry point, as StopTrainingJob does."""
    opt_ml = make_tree(tmp_path, sample_data, dict(FAST_HPS, epochs=20, **{"batch-size": 4}))
    name = f"byoc-test-{uuid.uuid4().hex[:8]}"
    started = run(engine, "run", "-d", "--name", name, "-v", f"{opt_ml}:/opt/ml", train_image, "train")
    assert started.returncode == 0, started.stderr
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if "#metric epoch=1 split=validation" in run(engine, "logs", name).stdout:
                break
            time.sleep(1)
        else:
            pytest.fail("training did not finish epoch 1 in time")
        assert run(engine, "stop", "-t", "100", name).returncode == 0
        state = json.loads(run(engine, "inspect", name, "--format", "{{json .State}}").stdout)
        logs = run(engine, "logs", name).stdout
        assert state["ExitCode"] == 0, logs[-3000:]
        assert "forwarding signal 15 to the trainer" in logs and "checkpoint" in logs
        assert (opt_ml / "checkpoints" / "checkpoint.pt").is_file()
        assert not (opt_ml / "model" / artifact.WEIGHTS_FILE).exists()
    finally:
        run(engine, "rm", "-f", name)
