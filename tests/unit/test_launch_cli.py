"""sm.py's job environment: experiment tracking settings become the variables the training image reads;
the steps both SDKs' commands share (launch/cli.py) and the dispatch between them."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from contract.spec import tracking
from helpers.training import ROOT
from launch.cli import add_environment_arguments, job_environment


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_environment_arguments(parser)
    return parser.parse_args(list(argv))


def test_mlflow_settings_become_the_trainers_variables():
    arn = "arn:aws:sagemaker:eu-west-1:123456789012:mlflow-tracking-server/team"
    env = job_environment(
        parse("--mlflow", arn, "--mlflow-experiment", "dogs", "--register-model", "dog-breeds", "--env", "BYOC_LOG=1")
    )
    assert env == {
        "BYOC_LOG": "1",
        tracking.TRACKING_URI_ENV: arn,
        tracking.EXPERIMENT_ENV: "dogs",
        tracking.REGISTER_ENV: "dog-breeds",
    }
    assert tracking.TRACKING_URI_ENV == "MLFLOW_TRACKING_URI"  # what MLflow's client itself reads


def test_no_tracking_without_a_uri():
    assert job_environment(parse()) == {}
    with pytest.raises(SystemExit, match="need --mlflow"):
        job_environment(parse("--register-model", "dog-breeds"))
    with pytest.raises(SystemExit, match="NAME=VALUE"):
        job_environment(parse("--env", "novalue"))


def catches(pid: int, signum: int) -> bool:
    """Whether the process has a handler for the signal (SigCgt in /proc/PID/status)."""
    status = Path(f"/proc/{pid}/status").read_text()
    mask = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(mask >> (signum - 1) & 1)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_local_endpoint_stops_on_ctrl_c_even_when_sigint_came_ignored(signum):
    # a non-interactive shell starts background commands with SIGINT ignored; the endpoint's wait must
    # still end on Ctrl-C (and on SIGTERM), so that its `finally` deletes the endpoint's container
    code = (
        "from launch.cli import serve_until_stopped\n"
        "print('serving', flush=True)\n"
        "try:\n"
        "    serve_until_stopped()\n"
        "except KeyboardInterrupt:\n"
        "    print('stopped', flush=True)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(str(ROOT / d) for d in ("container", "scripts"))},
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        assert child.stdout.readline().strip() == "serving"
        deadline = time.monotonic() + 20  # the handler is set right after the print: wait until it is caught
        while not catches(child.pid, signum) and time.monotonic() < deadline:
            time.sleep(0.02)
        child.send_signal(signum)
        out, _ = child.communicate(timeout=20)
        assert out.strip() == "stopped" and child.returncode == 0
    finally:
        child.kill()


def sm_args(*argv: str) -> argparse.Namespace:
    import sm  # scripts/ is on pytest's pythonpath

    return sm.build_parser().parse_args(list(argv))


def test_tune_runs_the_same_steps_on_either_sdk(monkeypatch):
    """launch/cli.tune is what v2's and v3's cmd_tune share: the SDK only starts the job (start) and reads it
    (tuning); --train-best then trains with the best values, with the flags a tuning run has no use for reset."""
    from launch import cli

    args = sm_args(
        "tune", "--data", "s3://b/dogs.zip", "--strategy", "Random", "--warm-start", "a,b", "--hp", "epochs=3",
        "--train-best", "--region", "eu-west-1", "--role", "arn:aws:iam::1:role/r",
    )  # fmt: skip
    calls = []

    class Tuner:
        def wait(self):
            calls.append("wait")

    class Tuning:
        def leaderboard(self, tuner):
            return []

        def best_hyperparameters(self, session, tuner):
            return {"lr": "0.01"}

    def start(space, fixed, sources):
        calls.append(("start", sources["training"], cli.tuner_options(args, fixed)))
        return Tuner()

    def train(args, config, session):
        calls.append(("train", args.hp, args.job_name, args.no_wait, args.subnet))

    config = type("Config", (), {"is_local": False})()
    cli.tune(args, config, None, start, Tuning(), train)
    options = {"strategy": "Random", "max_jobs": 20, "max_parallel_jobs": 2, "warm_start_parents": ["a", "b"]}
    assert calls == [
        ("start", "s3://b/dogs.zip", {**options, "epochs": 3}),
        "wait",
        ("train", ["lr=0.01"], None, False, []),
    ]
    with pytest.raises(SystemExit, match="--data"):
        cli.tune(sm_args("tune", "--region", "eu-west-1"), config, None, start, Tuning(), train)


def test_sm_dispatches_to_the_sdk_it_names():
    """sm.py only parses and dispatches: every command runs on v3 (deploy-mme and deploy-component too),
    v2 refuses v3's network flags."""
    import sm
    from launch.v2 import commands as v2
    from launch.v3 import commands as v3

    subcommands = next(a for a in sm.build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(v3.COMMANDS) == set(subcommands) == set(v2.COMMANDS)
    run = [sys.executable, "scripts/sm.py"]
    network = subprocess.run([*run, "train", "--sdk", "v2", "--data", "s3://b/d", "--subnet", "s-1"],
                             cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert network.returncode != 0 and "v3 options" in network.stderr
