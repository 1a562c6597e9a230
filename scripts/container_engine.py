"""scripts/engine.sh seen from Python: which engine CLI to run, and with what environment.

engine.sh's engine_setup picks Docker where a daemon answers, else sets up
podman behind DOCKER_HOST (and builds the local base image once). Python
scripts and tests call it through here, so they all agree on the result.
Standard library only: scripts/run_local.py needs nothing else on the host.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETUP_TIMEOUT_S = 900  # a first run may install podman and debootstrap the base image


class EngineError(RuntimeError):
    """No container engine could be set up; the message is engine.sh's last line."""


@dataclass
class Engine:
    cli: str  # "docker" or "podman"
    env: dict  # os.environ plus DOCKER_HOST where podman serves the Docker API
    base_image: str  # what build_image.sh builds FROM


def setup() -> Engine:
    out = subprocess.run(
        [
            "bash",
            "-c",
            "source scripts/engine.sh && engine_setup >/dev/null && "
            'echo "$ENGINE" && echo "${DOCKER_HOST:-}" && echo "$BASE_IMAGE"',
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=SETUP_TIMEOUT_S,
    )
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines()
        raise EngineError(lines[-1] if lines else f"engine.sh exited with {out.returncode}")
    cli, docker_host, base_image = out.stdout.split("\n")[:3]
    env = dict(os.environ)
    if docker_host:
        env["DOCKER_HOST"] = docker_host
    return Engine(cli, env, base_image)


def untag(cli: str, registry: str, env: dict | None = None) -> None:
    """Drop the local tags a push to `registry` (host:port) made: they would keep every old image version on disk."""
    names = subprocess.run(
        [cli, "images", "--format", "{{.Repository}}:{{.Tag}}"], env=env, capture_output=True, text=True
    ).stdout.split()
    pushed = [name for name in names if name.startswith(f"{registry}/")]
    if pushed:
        subprocess.run([cli, "rmi", *pushed], env=env, capture_output=True)


def gpu_flags(cli: str, device: str = "all") -> list[str]:
    """`run` flags that give a container the GPU `device` (an index, or "all"): Docker's --gpus, podman's CDI."""
    if Path(cli).name == "docker":
        return ["--gpus", "all" if device == "all" else f"device={device}"]
    return ["--device", f"nvidia.com/gpu={device}"]


def channel_mount(data: Path, channel) -> str:
    """A read-only volume for a data set as SageMaker delivers a channel: a folder is the channel;
    an archive lies in the channel folder (the trainer unpacks it)."""
    data = Path(data)
    return f"{data}:{channel}:ro" if data.is_dir() else f"{data}:{channel}/{data.name}:ro"
