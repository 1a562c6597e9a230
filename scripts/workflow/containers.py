"""The container commands the stages run: the engine, GPU flags, the training image with this repository."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import container_engine
from container_engine import bind, label_flags
from contract.spec import images
from contract.spec.tracking import RUN_NAME_ENV
from storage_url import STORAGE_ENV, on_loopback

from .stages import ROOT

IMAGE_HUB_CACHE = "/opt/torch/hub/checkpoints"  # the training image's torch hub cache (TORCH_HOME=/opt/torch)
# passed on to the containers when set: the trainer's archive limits, its weights mirror
FORWARDED_ENV = (
    "TRAINER_ARCHIVE_MAX_BYTES",
    "TRAINER_ARCHIVE_MAX_MEMBERS",
    "TRAINER_ARCHIVE_MAX_DEPTH",
    "WEIGHTS_MIRROR_URL",
    "MLFLOW_EXPERIMENT_NAME",
)


def default_weights_cache() -> Path:
    """The host's own torch hub cache: weights torchvision fetched on this machine are found there too."""
    torch_home = (
        os.environ.get("TORCH_HOME") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "torch"
    )
    return Path(torch_home) / "hub" / "checkpoints"


class Containers:
    def __init__(self, gpu: bool, weights_cache: Path | None):
        try:
            found = container_engine.setup()
        except container_engine.EngineError as exc:
            sys.exit(f"no container engine: {exc}")
        self.cli, self.env = found.cli, found.env
        self.train_image = images.train_image()
        self.serve_variant = "gpu" if gpu else "cpu"
        self.serve_image = images.serve_image(self.serve_variant)
        self.gpu_flags = container_engine.gpu_flags(self.cli) if gpu else []
        self.weights_cache = (weights_cache or default_weights_cache()).resolve()
        self.tracking_env: dict | None = None  # run_local.py --mlflow: the server's settings (tracking_server.py)

    def image_id(self, image: str) -> str:
        out = subprocess.run(
            [self.cli, "image", "inspect", "--format", "{{.Id}}", image], env=self.env, capture_output=True, text=True
        )
        return out.stdout.strip()

    def in_training_image(self, *args: str, mounts: Sequence[str] = (), flags: Sequence[str] = ()) -> list[str]:
        """A command run in the training image, with the repository mounted read-only at /src;
        `mounts`: further run arguments made by container_engine.bind."""
        volumes = [*bind(ROOT, "/src", read_only=True), *mounts]
        return [
            self.cli,
            "run",
            "--rm",
            *label_flags(),
            *self.gpu_flags,
            *self.trainer_flags(),
            *flags,
            *volumes,
            self.train_image,
            *args,
        ]

    def tracking_flags(self, run_name: str | None = None) -> list[str]:
        """With --mlflow: the server's URL (and the stage's run name) for a training or tuning container, on
        the host's network: the server listens on the host's 127.0.0.1 only."""
        if self.tracking_env is None:
            return []
        env = {**self.tracking_env, **({RUN_NAME_ENV: run_name} if run_name else {})}
        return ["--network", "host", *[item for name, value in env.items() for item in ("-e", f"{name}={value}")]]

    def storage_flags(self, url: str | None) -> list[str]:
        """With --storage: the URL for the tuner in the container, by name only (docker and podman take the
        value from their own environment, so the password is in no command line), PGPASSWORD likewise;
        the host's network when the database listens on the host's loopback and --mlflow has not set it."""
        if not url:
            return []
        self.env[STORAGE_ENV] = url
        flags = ["-e", STORAGE_ENV]
        if os.environ.get("PGPASSWORD"):
            self.env["PGPASSWORD"] = os.environ["PGPASSWORD"]
            flags += ["-e", "PGPASSWORD"]
        if on_loopback(url) and self.tracking_env is None:
            flags += ["--network", "host"]
        return flags

    def trainer_flags(self) -> list[str]:
        """What every trainer run gets: the host's weights cache as the image's hub cache, forwarded settings."""
        self.weights_cache.mkdir(parents=True, exist_ok=True)
        env = [item for name in FORWARDED_ENV if name in os.environ for item in ("-e", f"{name}={os.environ[name]}")]
        return [*bind(self.weights_cache, IMAGE_HUB_CACHE), *env]
