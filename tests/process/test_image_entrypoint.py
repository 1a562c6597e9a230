"""The training image's entry point (trainer/image_entrypoint.py) with the real sagemaker-training toolkit
between it and the trainer, as `docker run IMAGE train` runs them, on a local /opt/ml tree: a failed job's
/opt/ml/output/failure holds the trainer's one line, which the toolkit, writing its own report after the
trainer exited, leaves alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from contract.spec import paths
from helpers.training import CONTAINER, FAST_HPS, failure_reason, trainer_env

TOOLKIT_BIN = Path(sys.executable).parent  # the toolkit's `train` command, installed beside this Python


def test_the_trainers_reason_is_what_the_toolkit_leaves_in_the_failure_file(sample_data, tmp_path):
    opt_ml = tmp_path / "opt_ml"
    hps = dict(FAST_HPS, epochs="0")  # fails as the trainer parses its flags: one line, exit status 1
    # a host that resolves: the entry point maps an unresolved lone host in /etc/hosts, this machine's
    paths.write_input_config(opt_ml, hps, host="localhost")
    (opt_ml / paths.FAILURE_FILE).parent.mkdir(parents=True)
    (opt_ml / paths.FAILURE_FILE).write_text("an earlier run's reason\n")
    env = trainer_env(opt_ml, {"training": sample_data})
    env.update(
        PATH=os.pathsep.join([str(TOOLKIT_BIN), env.get("PATH", "")]),
        PYTHONPATH=str(CONTAINER),  # the image's PYTHONPATH=/opt/program
        SAGEMAKER_PROGRAM=paths.TOOLKIT_ENTRY_POINT,  # the image's ENV
    )
    result = subprocess.run(
        [sys.executable, "-m", "trainer.image_entrypoint", "train"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = result.stdout[-3000:] + result.stderr[-3000:]
    assert result.returncode == 1, log
    assert "Reporting training FAILURE" in log  # the toolkit ran the trainer and reported its exit
    assert failure_reason(opt_ml) == "hyperparameter epochs: must be > 0, got '0'\n", log
    assert (opt_ml / paths.CODE_DIR / paths.TOOLKIT_ENTRY_POINT).is_file()  # put where the toolkit looks
