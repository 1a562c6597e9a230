"""sm.py's job environment: experiment tracking settings become the variables the training image reads."""

from __future__ import annotations

import argparse

import pytest

from contract.spec import tracking
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
