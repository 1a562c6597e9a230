"""What sm.py's commands share whichever SDK runs them: --hp, --tag and the job's environment, printing,
local channels."""
from __future__ import annotations

import os
import shutil
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
    parser.add_argument("--mlflow", metavar="URI", help="MLflow tracking server: http(s) URL or a SageMaker "
                        "managed tracking server's ARN (the job's role needs sagemaker-mlflow:* on it)")
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
