"""scripts/engine.sh seen from Python: which engine CLI to run, and with what environment.

engine.sh's engine_setup picks Docker where a daemon answers, else sets up
podman behind DOCKER_HOST (and builds the local base image once). Python
scripts and tests call it through here, so they all agree on the result.
Standard library only: scripts/run_local.py needs nothing else on the host.
"""

from __future__ import annotations

import csv
import datetime
import io
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETUP_TIMEOUT_S = 900  # a first run may install podman and debootstrap the base image

# Set on every image build_image.sh builds (containers inherit it) and every container the scripts start:
# what the scripts look their containers up by, never a name pattern, which could match anyone's.
PROJECT_LABEL = "org.byoc.project=byoc"

GB = 10**9
# Free space one build needs in the engine's storage. The finished images' sizes are measured (README,
# "Image sizes", podman image inspect): train 6.7 GB, serve:gpu 4.8 GB, serve:cpu 0.9 GB. A build needs
# more while it runs: pip's downloaded wheels inside the RUN that installs torch (about 3 GB for CUDA
# torch and its nvidia-* wheels, 0.3 GB for CPU torch), the builder stages' layers, kept as the next
# build's cache (serve: the venv stage before slimming, 5.2 GB on GPU, 1.4 GB on CPU; train: the wheels
# stage, under 1 GB), and a margin for the context and the engine's temporary files.
BUILD_SPACE_BYTES = {
    "train": 12 * GB,  # 6.7 image + 3 wheels + 1 wheels stage + 1.3 margin
    "serve-gpu": 14 * GB,  # 4.8 image + 5.2 venv stage + 3 wheels + 1 margin
    "serve-cpu": 4 * GB,  # 0.9 image + 1.4 venv stage + 0.3 wheels + 1.4 margin
}
# A rebuild of an image that is there: its layers are cached, and only the changed ones are made again.
REBUILD_SPACE_BYTES = 2 * GB


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


def bind(source, target, read_only: bool = False) -> list[str]:
    """`run` arguments that mount the host's `source` at `target`: --mount, whose fields Docker and podman
    read as one CSV line, so a path may hold ':' (which `-v a:b` splits on) and, quoted, ','. Unlike -v,
    --mount does not make a missing `source`: the callers make their folders first."""
    fields = ["type=bind", f"source={Path(source).resolve()}", f"target={target}"] + (["readonly"] if read_only else [])
    if any(char in field for field in fields for char in "\r\n"):
        raise ValueError(f"a mount path holds a line break: {source!r}")
    line = io.StringIO()
    csv.writer(line, lineterminator="").writerow(fields)
    return ["--mount", line.getvalue()]


def channel_mount(data: Path, channel) -> list[str]:
    """A read-only mount for a data set as SageMaker delivers a channel: a folder is the channel;
    an archive lies in the channel folder (the trainer unpacks it)."""
    data = Path(data)
    return bind(data, channel if data.is_dir() else f"{channel}/{data.name}", read_only=True)


def label_flags() -> list[str]:
    """`run` arguments that mark a container as this project's (PROJECT_LABEL)."""
    return ["--label", PROJECT_LABEL]


def _project_ps(cli: str, filters: tuple[str, ...], template: str, env: dict | None) -> list[str]:
    args = [cli, "ps", "-a", "--filter", f"label={PROJECT_LABEL}"]
    for extra in filters:
        args += ["--filter", extra]
    out = subprocess.run([*args, "--format", template], env=env, capture_output=True, text=True)
    return out.stdout.splitlines()


def project_containers(cli: str, *filters: str, env: dict | None = None) -> list[str]:
    """Names of this project's containers (PROJECT_LABEL), with further `--filter`s (e.g. status=exited)."""
    return [line.strip() for line in _project_ps(cli, filters, "{{.Names}}", env) if line.strip()]


def project_containers_created(cli: str, *filters: str, env: dict | None = None) -> list[tuple[str, float]]:
    """(name, creation time as a Unix timestamp) of this project's containers, as `project_containers`.
    Both engines print CreatedAt as `2026-12-06 10:25:59[.fraction] +0000 UTC`."""
    found = []
    for line in _project_ps(cli, filters, "{{.Names}}|{{.CreatedAt}}", env):
        name, _, created = line.partition("|")
        fields = created.split()
        if not name or len(fields) < 3:
            continue
        stamp = f"{fields[0]} {fields[1].split('.')[0]} {fields[2]}"
        try:
            found.append((name, datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S %z").timestamp()))
        except ValueError:
            continue  # a format neither engine prints: leave the container alone
    return found


def space_shortfall(build: str, free_bytes: int, cached: bool, where: str) -> str | None:
    """Why a build of `build` (a BUILD_SPACE_BYTES key) should not start with `free_bytes` free in the
    engine's storage at `where`, or None. `cached`: the image is there already (a rebuild)."""
    needed = REBUILD_SPACE_BYTES if cached else BUILD_SPACE_BYTES[build]
    if free_bytes >= needed:
        return None
    return (
        f"building {build} needs about {needed / GB:.0f} GB free in {where} (the container engine's storage); "
        f"{free_bytes / GB:.1f} GB are free. Make room (`podman system prune`, `podman rmi` of old images) "
        "or point the engine's storage at a larger disk"
    )


def storage_dir(cli: str, env: dict | None = None) -> str:
    """Where the engine keeps images and build layers."""
    template = "{{.Store.GraphRoot}}" if Path(cli).name == "podman" else "{{.DockerRootDir}}"
    out = subprocess.run([cli, "info", "--format", template], env=env, capture_output=True, text=True)
    return out.stdout.strip() or "/var/lib/containers/storage"


def check_build_space(cli: str, build: str, tag: str) -> str | None:
    """space_shortfall for this machine: the storage's free bytes, whether `tag` is there."""
    where = storage_dir(cli)
    probe = Path(where)
    while not probe.exists():  # the storage is made by the first build
        probe = probe.parent
    cached = subprocess.run([cli, "image", "inspect", tag], capture_output=True).returncode == 0
    return space_shortfall(build, shutil.disk_usage(probe).free, cached, where)


if __name__ == "__main__":
    # build_image.sh: `container_engine.py check-space ENGINE BUILD TAG`, `container_engine.py label`
    if sys.argv[1:2] == ["label"]:
        print(PROJECT_LABEL)
    elif sys.argv[1:2] == ["check-space"] and len(sys.argv) == 5:
        reason = check_build_space(*sys.argv[2:])
        if reason:
            sys.exit(f"[build] {reason}")
    else:
        sys.exit("usage: container_engine.py label | check-space ENGINE BUILD TAG")
