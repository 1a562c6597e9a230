"""One configuration for every launch command: flags > environment > config file > defaults.

Config file: `byoc.toml` in the working directory, or BYOC_CONFIG=path. Keys are
the field names below; environment variables are BYOC_<FIELD> (upper case),
plus AWS_REGION and SAGEMAKER_ROLE as AWS users already set them.

    region = "eu-west-1"
    role = "arn:aws:iam::123456789012:role/SageMakerRole"
    s3_prefix = "s3://my-bucket/byoc"
    train_instance = "ml.g4dn.xlarge"
"""

from __future__ import annotations

import argparse
import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from contract.spec import images

ROOT = Path(__file__).resolve().parent.parent.parent
LOCAL_SERVE_VARIANTS = {"local": "cpu", "local_gpu": "gpu"}


@dataclass
class Config:
    region: str = ""
    role: str = ""
    s3_prefix: str = ""  # s3://bucket/prefix for inputs, outputs, checkpoints; default: the session's bucket
    train_image: str = ""  # default: byoc-train from this account's ECR (build_and_push.sh naming)
    serve_image: str = ""
    train_instance: str = "ml.g4dn.xlarge"
    train_instance_count: int = 1
    serve_instance: str = "ml.m5.large"
    max_run_s: int = 24 * 3600
    spot: bool = False
    max_wait_s: int = 48 * 3600
    local: str = ""  # "", "local" or "local_gpu": SageMaker local mode with locally built images

    @property
    def is_local(self) -> bool:
        return bool(self.local)

    def instance(self, kind: str) -> str:
        return self.local or (self.train_instance if kind == "train" else self.serve_instance)


_ENV_ALIASES = {"region": ("AWS_REGION", "AWS_DEFAULT_REGION"), "role": ("SAGEMAKER_ROLE",)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("configuration (flags > BYOC_* environment > byoc.toml)")
    for f in fields(Config):
        if f.name == "local":
            continue
        group.add_argument(f"--{f.name.replace('_', '-')}", dest=f"cfg_{f.name}", default=None)
    group.add_argument("--config", default=None, help="TOML config file (default: ./byoc.toml or BYOC_CONFIG)")
    mode = group.add_mutually_exclusive_group()
    mode.add_argument(
        "--local",
        dest="cfg_local",
        action="store_const",
        const="local",
        help="SageMaker local mode with the locally built images: no AWS account needed",
    )
    mode.add_argument("--local-gpu", dest="cfg_local", action="store_const", const="local_gpu")


def _coerce(kind, value):
    if kind in (bool, "bool"):
        return str(value).lower() in ("1", "true", "yes", "on") if isinstance(value, str) else bool(value)
    if kind in (int, "int"):
        return int(value)
    return str(value)


def load(args: argparse.Namespace | None = None, environ=os.environ) -> Config:
    path = Path(getattr(args, "config", None) or environ.get("BYOC_CONFIG", "byoc.toml"))
    from_file = tomllib.loads(path.read_text()) if path.is_file() else {}
    unknown = set(from_file) - {f.name for f in fields(Config)}
    if unknown:
        raise SystemExit(f"{path}: unknown keys {', '.join(sorted(unknown))}")
    values = {}
    for f in fields(Config):
        flag = getattr(args, f"cfg_{f.name}", None) if args else None
        env = next(
            (environ[name] for name in (f"BYOC_{f.name.upper()}", *_ENV_ALIASES.get(f.name, ())) if environ.get(name)),
            None,
        )
        for source in (flag, env, from_file.get(f.name)):
            if source is not None:
                values[f.name] = _coerce(f.type, source)
                break
    config = Config(**values)
    if config.is_local:
        config.train_image = config.train_image or images.train_image(environ)
        config.serve_image = config.serve_image or images.serve_image(LOCAL_SERVE_VARIANTS[config.local], environ)
        config.region = config.region or "us-east-1"  # the SDK wants one even offline
        config.role = config.role or "arn:aws:iam::111111111111:role/local-mode"  # never checked locally
    return config


def is_gpu_instance(instance_type: str) -> bool:
    """ml.g5.xlarge, ml.p4d.24xlarge: NVIDIA GPUs (the serve-gpu image)."""
    return instance_type.split(".")[1][:1] in ("g", "p") if instance_type.count(".") >= 2 else False


def default_image_uris(config: Config, account: str) -> None:
    """The URIs build_and_push.sh pushes to, when the config names none."""
    version = (ROOT / "VERSION").read_text().strip()
    registry = f"{account}.dkr.ecr.{config.region}.amazonaws.com"
    variant = "gpu" if is_gpu_instance(config.serve_instance) else "cpu"
    config.train_image = config.train_image or f"{registry}/{images.TRAIN_REPOSITORY}:{version}"
    config.serve_image = config.serve_image or f"{registry}/{images.SERVE_REPOSITORY}-{variant}:{version}"


def complete_from_session(config: Config, session) -> None:
    """What an AWS session (either SDK's: the same attributes) fills in that flags left empty:
    the region, this account's ECR image URIs, the default bucket; a role is required."""
    config.region = session.boto_region_name
    if not (config.train_image and config.serve_image):
        default_image_uris(config, session.account_id())
    if not config.s3_prefix:
        config.s3_prefix = f"s3://{session.default_bucket()}/byoc"
    if not config.role:
        raise SystemExit("no SageMaker execution role: pass --role, set SAGEMAKER_ROLE, or put role in byoc.toml")
