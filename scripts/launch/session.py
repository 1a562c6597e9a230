"""SageMaker sessions: a real one, or local mode that needs no AWS account.

Local mode runs the jobs with docker-compose against the engine that
scripts/engine.sh sets up (podman behind DOCKER_HOST where no Docker daemon
answers). Offline it needs a region, no credentials, no instance metadata
lookups, and the SDK's telemetry turned off (it would call an AWS host).
"""

from __future__ import annotations

import os
import subprocess
import time

import container_engine
from launch.config import Config, complete_from_session

# a compose `up` starts what it creates within seconds; one still "created" after this never will
NEVER_STARTED_S = 600.0

LOCAL_SDK_CONFIG = {
    "SchemaVersion": "1.0",
    "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}},
}


def prepare_local_environment(config: Config) -> None:
    """Engine, compose and the AWS settings local mode needs, in this process's environment."""
    os.environ.setdefault("AWS_REGION", config.region)
    os.environ.setdefault("AWS_DEFAULT_REGION", config.region)
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    if not os.environ.get("DOCKER_HOST"):
        try:
            found = container_engine.setup()
        except container_engine.EngineError as exc:
            raise SystemExit(f"no container engine for local mode: {exc}") from None
        if found.env.get("DOCKER_HOST"):
            os.environ["DOCKER_HOST"] = found.env["DOCKER_HOST"]


def remove_local_containers(cli: str | None = None, never_started_for_s: float = NEVER_STARTED_S) -> None:
    """Local mode runs `docker-compose up` and never `down`: its finished job and
    endpoint containers (v2: <random>-algo-N-<random>; v3's training: <job>_algo-N_1) stay behind. Remove them:
    only this project's (they carry its label), never a name alike of someone else's. Exited ones, and ones
    still "created" `never_started_for_s` after their creation (an `up` whose attach failed leaves them;
    a younger one may be another job's, about to start)."""
    cli = cli or ("podman" if "podman" in os.environ.get("DOCKER_HOST", "") else "docker")
    stale = container_engine.project_containers(cli, "status=exited")
    now = time.time()
    for name, created in container_engine.project_containers_created(cli, "status=created"):
        if now - created >= never_started_for_s:
            stale.append(name)
    for name in [n for n in stale if "-algo-" in n or "_algo-" in n]:
        # one at a time: podman 4.3's `rm -f A B` skips B when A is gone meanwhile
        subprocess.run([cli, "rm", "-f", name], capture_output=True)


def make_session(config: Config):
    import boto3

    os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")  # v2 is this path's choice

    if config.is_local:
        prepare_local_environment(config)
        from sagemaker.local import LocalSession

        session = LocalSession(boto_session=boto3.Session(region_name=config.region), sagemaker_config=LOCAL_SDK_CONFIG)
        session.config = {"local": {"local_code": True}}
        return session
    import sagemaker

    session = sagemaker.Session(boto_session=boto3.Session(region_name=config.region or None))
    complete_from_session(config, session)
    return session
