#!/usr/bin/env python3
"""SageMaker jobs on our images, in AWS or in local mode (--local: no account needed).

    sm.py train     --data s3://bucket/dogImages.zip --hp lr=0.001 --hp epochs=5
    sm.py deploy    --model-data s3://.../model.tar.gz --endpoint-name dogs [--autoscale 1:4:100]
    sm.py deploy-component --model-data s3://.../model.tar.gz --endpoint-name dogs --cores 2 --max-copies 4
    sm.py invoke    --endpoint-name dogs photo.jpg other.png [--top-k 3]
    sm.py deploy    --model-data s3://.../model.tar.gz --endpoint-name album --async-output s3://bucket/answers/
    sm.py invoke-async --endpoint-name album photos.zip       (uploaded to S3; the answer: JSON lines in S3)
    sm.py tune      --data s3://bucket/dogImages.zip --space seed2 --max-jobs 20 --wait --train-best
    sm.py transform --model-data s3://.../model.tar.gz --input s3://bucket/images/ --output s3://bucket/preds/
    sm.py cleanup   --endpoint-name dogs

Every command runs on the SageMaker Python SDK v3 (scripts/launch/v3/commands.py) unless --sdk v2 asks
for the v2 path (scripts/launch/v2/commands.py, until v2's end of support on 2027-07-06; it needs an
environment with sagemaker<3, such as tests/requirements-sdk-v2.txt's). Debugger rules and the profiler: v2 only.
This file only parses arguments and hands them to one of the two.

Configuration (region, role, image URIs, S3 prefix, instance types) comes
from flags, BYOC_* variables or byoc.toml: see scripts/launch/config.py.
In local mode an endpoint lives as long as `deploy` runs: it serves until
Ctrl-C (or, with --invoke IMAGES, classifies them and stops).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

import container_path  # noqa: E402,F401  (first: container/ on the import path)
from launch import async_inference  # noqa: E402
from launch import config as configuration  # noqa: E402
from launch.cli import add_environment_arguments  # noqa: E402
from launch.session import remove_local_containers  # noqa: E402
from launch.tuning import STRATEGIES  # noqa: E402
from storage_url import STORAGE_ENV, STUDY_NAME  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name, help_text):
        sub = commands.add_parser(name, help=help_text)
        configuration.add_arguments(sub)
        sub.add_argument(
            "--workdir", type=Path, default=ROOT / "build" / "sagemaker-local", help="local mode: where outputs go"
        )
        sub.add_argument("--sdk", choices=("v3", "v2"), default="v3", help="SageMaker Python SDK generation")
        return sub

    train = command("train", "run a training job")
    train.add_argument("--data", required=True, help="training channel: S3 URI, folder or archive")
    train.add_argument("--validation")
    train.add_argument("--test")
    train.add_argument("--pretrained", help="a folder holding one backbone weights file")
    train.add_argument("--hp", action="append", default=[], metavar="NAME=VALUE")
    train.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE")
    train.add_argument("--job-name")
    train.add_argument("--no-wait", action="store_true")
    train.add_argument("--no-debugger", action="store_true", help="no debugger hook, rules or profiler (v2)")
    train.add_argument("--subnet", action="append", default=[], help="VPC subnet (v3; repeat for more)")
    train.add_argument("--security-group", action="append", default=[], help="VPC security group (v3)")
    train.add_argument("--network-isolation", action="store_true", help="no network inside the container (v3)")
    add_environment_arguments(train)

    deploy = command("deploy", "deploy a model to a real-time endpoint")
    deploy.add_argument("--model-data", required=True, help="model.tar.gz: S3 URI (file:// in local mode)")
    deploy.add_argument("--endpoint-name")
    deploy.add_argument("--instance-count", type=int, default=1)
    deploy.add_argument("--autoscale", metavar="MIN:MAX:INVOCATIONS", help="target tracking per instance")
    deploy.add_argument("--serverless", metavar="MEMORY_MB:MAX_CONCURRENCY")
    deploy.add_argument("--invoke", nargs="+", type=Path, metavar="IMAGE", help="local mode: classify and stop")
    deploy.add_argument("--top-k", type=int, default=3)
    async_inference.add_deploy_arguments(deploy)

    mme = command("deploy-mme", "deploy a multi-model endpoint")
    mme.add_argument("--model-prefix", required=True, help="S3 prefix holding the models' tar.gz files")
    mme.add_argument("--endpoint-name")
    mme.add_argument("--instance-count", type=int, default=1)
    mme.add_argument("--memory-budget-mb", type=int, help="SAGEMAKER_MODEL_MEMORY_BUDGET_MB per worker")
    mme.add_argument(
        "--add-model",
        action="append",
        default=[],
        metavar="S3_URI",
        help="copy a training job's model.tar.gz under the prefix (as JOB.tar.gz)",
    )
    mme.add_argument(
        "--target-model",
        action="append",
        default=[],
        metavar="NAME.tar.gz",
        help="then classify --invoke images with this model",
    )
    mme.add_argument("--invoke", nargs="*", type=Path, default=[], metavar="IMAGE")
    mme.add_argument("--top-k", type=int, default=3)

    from launch import inference_component

    inference_component.add_arguments(command("deploy-component", "deploy an inference component (scale to zero)"))

    invoke = command("invoke", "classify images with an endpoint")
    invoke.add_argument("--endpoint-name", required=True)
    invoke.add_argument("--component-name", help="an inference component on the endpoint (deploy-component)")
    invoke.add_argument("images", nargs="+", type=Path)
    invoke.add_argument("--top-k", type=int, default=3)
    invoke.add_argument("--via", choices=("predictor", "boto3", "both"), default="both")

    async_inference.add_invoke_command(command)

    tune = command("tune", "hyperparameter tuning job (with --local: an Optuna study)")
    tune.add_argument("--data", help="training channel: S3 URI, folder or archive")
    tune.add_argument("--validation")
    tune.add_argument("--test")
    tune.add_argument("--space", default="seed2", help="preset (seed1, seed2) or a JSON file")
    add_environment_arguments(tune)
    tune.add_argument("--strategy", choices=STRATEGIES, default="Bayesian")
    tune.add_argument("--max-jobs", type=int, default=20)
    tune.add_argument("--max-parallel-jobs", type=int, default=2)
    tune.add_argument("--warm-start", metavar="PARENT,PARENT", help="earlier tuning jobs to start from")
    tune.add_argument("--attach", metavar="TUNING_JOB", help="follow a running tuning job instead of starting one")
    tune.add_argument("--wait", action="store_true", help="wait, then print the leaderboard and the best values")
    tune.add_argument("--train-best", action="store_true", help="then train the final model with the best values")
    tune.add_argument("--hp", action="append", default=[], metavar="NAME=VALUE", help="fixed for every trial")
    tune.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE")
    tune.add_argument(
        "--storage",
        metavar="URL",
        help="with --local: the study in a database other tuners share, e.g. postgresql+psycopg://tuner@db/tuning "
        f"(default ${STORAGE_ENV}, else WORKDIR/tuning/study.db; docs/tracking-and-tuning.md)",
    )
    tune.add_argument("--study-name", default=STUDY_NAME, help=f"with --local: the study's name (default {STUDY_NAME})")

    transform = command("transform", "batch transform over a prefix of images")
    transform.add_argument("--model-data", required=True)
    transform.add_argument("--input", required=True, help="S3 prefix or folder of images")
    transform.add_argument("--output")
    transform.add_argument("--instance-count", type=int, default=1)

    cleanup = command("cleanup", "delete an endpoint, its config and its model")
    cleanup.add_argument("--endpoint-name", required=True)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    config = configuration.load(args, os.environ)
    if args.sdk == "v3":
        from launch.v3 import commands as v3
        from launch.v3.session import make_session

        if args.command not in v3.COMMANDS:
            raise SystemExit(f"{args.command} runs on SDK v2 only: add --sdk v2 (an environment with sagemaker<3)")
        commands = v3.COMMANDS
    else:
        from launch.session import make_session
        from launch.v2 import commands as v2

        if any(getattr(args, name, None) for name in ("subnet", "security_group", "network_isolation")):
            raise SystemExit("--subnet, --security-group and --network-isolation are v3 options")
        commands = v2.COMMANDS
    try:
        commands[args.command](args, config, make_session(config))
    finally:
        if config.is_local:
            remove_local_containers()


if __name__ == "__main__":
    main()
