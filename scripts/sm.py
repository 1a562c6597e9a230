#!/usr/bin/env python3
"""SageMaker jobs on our images, in AWS or in local mode (--local: no account needed).

    sm.py train     --data s3://bucket/dogImages.zip --hp lr=0.001 --hp epochs=5
    sm.py deploy    --model-data s3://.../model.tar.gz --endpoint-name dogs [--autoscale 1:4:100]
    sm.py invoke    --endpoint-name dogs photo.jpg other.png [--top-k 3]
    sm.py tune      --data s3://bucket/dogImages.zip --space seed2 --max-jobs 20 --wait --train-best
    sm.py transform --model-data s3://.../model.tar.gz --input s3://bucket/images/ --output s3://bucket/preds/
    sm.py cleanup   --endpoint-name dogs

Every command runs on the SageMaker Python SDK v3 (scripts/launch/v3/) unless --sdk v2 asks for
the v2 path (this file's commands, until v2's end of support on 2027-07-06; it needs an environment
with sagemaker<3, such as tests/requirements-sdk-v2.txt's). Debugger rules and the profiler: v2 only.

Configuration (region, role, image URIs, S3 prefix, instance types) comes
from flags, BYOC_* variables or byoc.toml: see scripts/launch/config.py.
In local mode an endpoint lives as long as `deploy` runs: it serves until
Ctrl-C (or, with --invoke IMAGES, classifies them and stops).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

import container_path  # noqa: E402,F401  (first: container/ on the import path)
from launch import config as configuration  # noqa: E402
from launch import hosting, training, tuning  # noqa: E402
from launch.cli import (  # noqa: E402
    add_environment_arguments,
    cleanup_endpoint,
    job_environment,
    local_channels,
    parse_hps,
    parse_tags,
    print_leaderboard,
    print_top,
    serve_until_stopped,
    tune_locally,
)
from launch.session import make_session, remove_local_containers  # noqa: E402


def cmd_train(args, config, session):
    sources = {"training": args.data, "validation": args.validation, "test": args.test, "pretrained": args.pretrained}
    if config.is_local:
        sources = local_channels(sources, args.workdir.resolve())
    name = args.job_name or training.job_name()
    estimator = training.estimator(
        session,
        config,
        parse_hps(args.hp),
        name,
        debugger=debugger_settings(args, config),
        tags=parse_tags(args.tag),
        workdir=args.workdir,
        environment=job_environment(args),
    )
    estimator.fit(
        training.inputs(session, config, sources),
        job_name=name,
        wait=not args.no_wait,
        logs="All" if not args.no_wait else None,
    )
    if args.no_wait:
        print(f"training job {name} started")
    else:
        print(f"model: {estimator.model_data}")


def cmd_tune(args, config, session):
    from contract.spec import search_space

    space = search_space.load(args.space)
    fixed = {**space.fixed, **parse_hps(args.hp)}
    if config.is_local:  # no local tuning jobs in either SDK: the same space runs with Optuna
        tune_locally(args, config, space)
        return
    if args.attach:
        tuner = tuning.attach(session, args.attach)
    elif not args.data:
        raise SystemExit("--data (the training channel) is required to start a tuning job")
    else:
        sources = {"training": args.data, "validation": args.validation, "test": args.test}
        estimator = training.estimator(
            session,
            config,
            fixed,
            "byoc-tune-trial",
            debugger=None,
            tags=parse_tags(args.tag),
            environment=job_environment(args),
        )
        tuner = tuning.tuner(
            estimator,
            space,
            args.strategy,
            args.max_jobs,
            args.max_parallel_jobs,
            args.warm_start.split(",") if args.warm_start else None,
            epochs=int(fixed.get("epochs", 5)),
        )
        tuner.fit(training.inputs(session, config, sources), wait=False)
        print(f"tuning job {tuner.latest_tuning_job.name} started")
    if not (args.wait or args.train_best):
        return
    tuner.wait()
    print_leaderboard(space, tuning.leaderboard(tuner))
    best = tuning.best_hyperparameters(session, tuner)
    print(f"best hyperparameters: {best}")
    if args.train_best:  # the first seed's flow: train the final model with the best values
        args.hp = [f"{k}={v}" for k, v in best.items()]
        args.job_name, args.no_wait, args.no_debugger, args.pretrained = None, False, False, None
        cmd_train(args, config, session)


def debugger_settings(args, config) -> dict | None:
    """Debugger hook, rules and profiler for AWS jobs, from the rule list the local runner uses."""
    if args.no_debugger or config.is_local:
        return None
    from insights.rules import sagemaker_debugger_config

    return sagemaker_debugger_config(s3_output_path=f"{config.s3_prefix.rstrip('/')}/debug")


def cmd_deploy(args, config, session):
    served = hosting.model(session, config, args.model_data)
    serverless = tuple(int(x) for x in args.serverless.split(":")) if args.serverless else None
    name = args.endpoint_name or f"byoc-{time.strftime('%Y%m%d-%H%M%S')}"
    predictor = hosting.deploy(served, config, name, args.instance_count, serverless)
    print(f"endpoint {name} is in service")
    if args.autoscale and not config.is_local:
        low, high, target = args.autoscale.split(":")
        hosting.autoscale(session, name, int(low), int(high), float(target))
        print(f"autoscaling {low}..{high} instances at {target} invocations per instance")
    if not config.is_local:
        return
    try:
        if args.invoke:
            for path in args.invoke:
                print_top(str(path), hosting.invoke_with_predictor(predictor, path, args.top_k))
        else:
            print("serving on http://localhost:8080 (local mode); Ctrl-C or SIGTERM stops it")
            serve_until_stopped()
    except KeyboardInterrupt:
        pass
    finally:
        predictor.delete_endpoint()
        print(f"local endpoint {name} stopped")


def cmd_deploy_mme(args, config, session):
    from launch import multi_model

    name = args.endpoint_name or f"byoc-mme-{time.strftime('%Y%m%d-%H%M%S')}"
    mme = multi_model.multi_data_model(session, config, name, args.model_prefix, args.memory_budget_mb)
    predictor = multi_model.deploy(mme, config, name, args.instance_count)
    print(f"multi-model endpoint {name} is in service, models from {args.model_prefix}")
    for target in multi_model.add_models(mme, args.add_model):
        print(f"added {target}")
    for target in args.target_model:
        for path in args.invoke:
            print_top(f"{path} ({target})", multi_model.invoke(predictor, target, path, args.top_k))


def cmd_invoke(args, config, session):
    predictor = hosting.image_predictor_class()(args.endpoint_name, sagemaker_session=session)
    for path in args.images:
        if args.via in ("predictor", "both"):
            print_top(f"{path} (Predictor)", hosting.invoke_with_predictor(predictor, path, args.top_k))
        if args.via in ("boto3", "both"):
            result = hosting.invoke_with_boto3(session.sagemaker_runtime_client, args.endpoint_name, path, args.top_k)
            print_top(f"{path} (boto3)", result)


def cmd_transform(args, config, session):
    served = hosting.model(session, config, args.model_data)
    input_uri = training.channel_uri(session, config, "transform-input", args.input)
    output = args.output or training.output_location(config, "transform", args.workdir)
    if config.is_local and not output.startswith("file://"):
        output = f"file://{Path(output).resolve()}"
    hosting.transform(served, config, input_uri, output, args.instance_count)
    print(f"predictions: {output}")


def cmd_cleanup(args, config, session):
    cleanup_endpoint(config, session, args.endpoint_name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name, func, help_text):
        sub = commands.add_parser(name, help=help_text)
        configuration.add_arguments(sub)
        sub.add_argument(
            "--workdir", type=Path, default=ROOT / "build" / "sagemaker-local", help="local mode: where outputs go"
        )
        sub.add_argument("--sdk", choices=("v3", "v2"), default="v3", help="SageMaker Python SDK generation")
        sub.set_defaults(func=func)
        return sub

    train = command("train", cmd_train, "run a training job")
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

    deploy = command("deploy", cmd_deploy, "deploy a model to a real-time endpoint")
    deploy.add_argument("--model-data", required=True, help="model.tar.gz: S3 URI (file:// in local mode)")
    deploy.add_argument("--endpoint-name")
    deploy.add_argument("--instance-count", type=int, default=1)
    deploy.add_argument("--autoscale", metavar="MIN:MAX:INVOCATIONS", help="target tracking per instance")
    deploy.add_argument("--serverless", metavar="MEMORY_MB:MAX_CONCURRENCY")
    deploy.add_argument("--invoke", nargs="+", type=Path, metavar="IMAGE", help="local mode: classify and stop")
    deploy.add_argument("--top-k", type=int, default=3)

    mme = command("deploy-mme", cmd_deploy_mme, "deploy a multi-model endpoint (SDK v2 MultiDataModel)")
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

    invoke = command("invoke", cmd_invoke, "classify images with an endpoint")
    invoke.add_argument("--endpoint-name", required=True)
    invoke.add_argument("images", nargs="+", type=Path)
    invoke.add_argument("--top-k", type=int, default=3)
    invoke.add_argument("--via", choices=("predictor", "boto3", "both"), default="both")

    tune = command("tune", cmd_tune, "hyperparameter tuning job (with --local: an Optuna study)")
    tune.add_argument("--data", help="training channel: S3 URI, folder or archive")
    tune.add_argument("--validation")
    tune.add_argument("--test")
    tune.add_argument("--space", default="seed2", help="preset (seed1, seed2) or a JSON file")
    add_environment_arguments(tune)
    tune.add_argument("--strategy", choices=tuning.STRATEGIES, default="Bayesian")
    tune.add_argument("--max-jobs", type=int, default=20)
    tune.add_argument("--max-parallel-jobs", type=int, default=2)
    tune.add_argument("--warm-start", metavar="PARENT,PARENT", help="earlier tuning jobs to start from")
    tune.add_argument("--attach", metavar="TUNING_JOB", help="follow a running tuning job instead of starting one")
    tune.add_argument("--wait", action="store_true", help="wait, then print the leaderboard and the best values")
    tune.add_argument("--train-best", action="store_true", help="then train the final model with the best values")
    tune.add_argument("--hp", action="append", default=[], metavar="NAME=VALUE", help="fixed for every trial")
    tune.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE")

    transform = command("transform", cmd_transform, "batch transform over a prefix of images")
    transform.add_argument("--model-data", required=True)
    transform.add_argument("--input", required=True, help="S3 prefix or folder of images")
    transform.add_argument("--output")
    transform.add_argument("--instance-count", type=int, default=1)

    cleanup = command("cleanup", cmd_cleanup, "delete an endpoint, its config and its model")
    cleanup.add_argument("--endpoint-name", required=True)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    config = configuration.load(args, os.environ)
    if args.sdk == "v3":
        from launch.v3 import commands
        from launch.v3 import session as v3_session

        if args.command not in commands.COMMANDS:
            raise SystemExit(f"{args.command} runs on SDK v2 only: add --sdk v2 (an environment with sagemaker<3)")
        session, func = v3_session.make_session(config), commands.COMMANDS[args.command]
    else:
        if any(getattr(args, name, None) for name in ("subnet", "security_group", "network_isolation")):
            raise SystemExit("--subnet, --security-group and --network-isolation are v3 options")
        session, func = make_session(config), args.func
    try:
        func(args, config, session)
    finally:
        if config.is_local:
            remove_local_containers()


if __name__ == "__main__":
    main()
