"""What sm.py's commands share whichever SDK runs them: --hp, --tag and the job's environment, printing,
local channels."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

from contract.spec import tracking
from contract.spec.hyperparameters import HyperparameterError, parse_assignments


def parse_hps(items: list[str]) -> dict:
    try:
        return parse_assignments(items)
    except HyperparameterError as exc:
        raise SystemExit(f"--hp: {exc}") from None


def parse_tags(items: list[str]) -> list[dict]:
    return [{"Key": k, "Value": v} for k, _, v in (item.partition("=") for item in items)]


def add_environment_arguments(parser) -> None:
    """A training or tuning job's environment: experiment tracking and free NAME=VALUE pairs."""
    parser.add_argument(
        "--mlflow",
        metavar="URI",
        help="MLflow tracking server: http(s) URL or a SageMaker "
        "managed tracking server's ARN (the job's role needs sagemaker-mlflow:* on it)",
    )
    parser.add_argument("--mlflow-experiment", metavar="NAME", help=f"default {tracking.DEFAULT_EXPERIMENT}")
    parser.add_argument("--register-model", metavar="NAME", help="register the job's model in MLflow's registry")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="job environment")


def job_environment(args) -> dict:
    env = {}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"--env takes NAME=VALUE, got {item!r}")
        env[name] = value
    if (args.mlflow_experiment or args.register_model) and not args.mlflow:
        raise SystemExit("--mlflow-experiment and --register-model need --mlflow URI")
    env.update(tracking.job_environment(args.mlflow, args.mlflow_experiment, args.register_model))
    return env


def print_leaderboard(space, rows: list[dict]) -> None:
    """A finished tuning job's trials, best first, as a markdown table."""
    print("| rank | training job | objective | " + " | ".join(p.name for p in space.parameters) + " |")
    for rank, row in enumerate(rows, start=1):
        values = " | ".join(str(row.get(p.name, "")) for p in space.parameters)
        print(f"| {rank} | {row['TrainingJobName']} | {row['FinalObjectiveValue']:.6f} | {values} |")


def print_top(source: str, result: dict) -> None:
    top = result["predictions"]
    print(f"{source}: " + ", ".join(f"{p['label']} {p['probability']:.3f}" for p in top))


def local_channels(sources: dict, workdir: Path) -> dict:
    """Local mode mounts a file's whole folder as its channel (v2's LocalFileDataSource, v3's
    FileSystemDataSource), where SageMaker delivers the one object: a file (dogImages.zip, a .pth)
    gets a channel folder holding only it."""
    staged = dict(sources)
    for name, source in sources.items():
        path = Path(source) if source and not source.startswith(("s3://", "file://")) else None
        if path is None or not path.is_file():
            continue
        folder = workdir / "channels" / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        try:
            os.link(path.resolve(), folder / path.name)  # no copy of a large archive where a link will do
        except OSError:
            shutil.copy2(path, folder / path.name)
        staged[name] = str(folder)
    return staged


def cleanup_endpoint(config, session, endpoint_name: str) -> None:
    """sm.py cleanup on either SDK: the autoscaling target (if any), then the endpoint, its
    configuration and its models (plain boto3 calls through the session: the same for v2 and v3)."""
    from launch import hosting

    if config.is_local:
        print("local endpoints stop when their deploy command stops; nothing to delete")
        return
    try:
        session.boto_session.client("application-autoscaling").deregister_scalable_target(
            ServiceNamespace="sagemaker",
            ResourceId=f"endpoint/{endpoint_name}/variant/AllTraffic",
            ScalableDimension="sagemaker:variant:DesiredInstanceCount",
        )
    except Exception:  # not registered: nothing to undo
        pass
    for item in hosting.cleanup(session, endpoint_name):
        print(f"deleted {item}")


def tune_locally(args, config, space) -> None:
    """sm.py tune --local on either SDK (neither has local tuning jobs): the Optuna study on the same
    space, trials in the training image; with --mlflow, a parent run and a child run per trial."""
    from launch import local_tuning

    if not args.data:
        raise SystemExit("--data (a local folder or archive) is required")
    os.environ.update(job_environment(args))  # the study reads the tracking settings from the environment
    sampler = {"Bayesian": "tpe", "Random": "random", "Grid": "grid"}.get(args.strategy, "tpe")
    result = local_tuning.run_study(
        space,
        args.data,
        args.workdir / "tuning",
        args.max_jobs,
        sampler,
        parallel=args.max_parallel_jobs,
        runner="container",
        fixed_overrides=parse_hps(args.hp),
        image=config.train_image,
    )
    print(result.markdown())


def serve_until_stopped() -> None:
    """Block while a local endpoint serves; Ctrl-C or SIGTERM raise KeyboardInterrupt, which ends the
    caller's `with`/`finally` that deletes the endpoint. Both handlers are set here: a process that a
    non-interactive shell started in the background inherits SIGINT ignored, and Python then leaves
    it ignored (Ctrl-C would never reach it, and the endpoint's container would outlive it)."""

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while True:
        time.sleep(3600)
