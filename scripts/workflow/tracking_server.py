"""run_local.py --mlflow: a real MLflow server for the run, from the training image, on 127.0.0.1.

The store lies under the workflow's output folder (workdir/mlflow: mlflow.db, artifacts/), so the
runs outlive the server; the server itself lives only as long as the workflow (stopped and removed
at the end, on failure and on Ctrl-C too). It shares the host's network and listens on 127.0.0.1
only; the training containers get --network host as well, so the URL means the same in them.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

from container_engine import bind, label_flags
from localnet import free_port, wait_healthy

from .containers import Containers
from .stages import StageFailed

START_LIMIT_S = 180  # the server imports MLflow and migrates a fresh SQLite store first
STORE_IN_CONTAINER = "/mlflow"
STORE_DIR = "mlflow"  # under the workdir


def store_uri(store: Path) -> str:
    """What `mlflow ui --backend-store-uri` or `mlflow server` takes to browse the runs afterwards."""
    return f"sqlite:///{store / 'mlflow.db'}"


class TrackingServer:
    """`with TrackingServer(containers, workdir) as server:` server.url while the block runs."""

    def __init__(self, containers: Containers, workdir: Path):
        self.box = containers
        self.store = workdir / STORE_DIR
        self.name = f"byoc-mlflow-{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        box = self.box
        return [
            box.cli,
            "run",
            "-d",
            "--name",
            self.name,
            *label_flags(),
            "--network",
            "host",
            *bind(self.store, STORE_IN_CONTAINER),
            box.train_image,
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{STORE_IN_CONTAINER}/mlflow.db",
            "--artifacts-destination",
            f"{STORE_IN_CONTAINER}/artifacts",
        ]

    def __enter__(self) -> TrackingServer:
        self.store.mkdir(parents=True, exist_ok=True)
        started = subprocess.run(self.command(), env=self.box.env, capture_output=True, text=True)
        if started.returncode != 0:
            raise SystemExit(f"the MLflow server did not start: {started.stderr.strip()[-500:]}")
        try:
            seconds = wait_healthy(self.url, timeout_s=START_LIMIT_S, check=self.running, path="/health")
        except (TimeoutError, StageFailed) as exc:
            self.stop()
            raise SystemExit(f"MLflow server: {exc}\n{self.logs()}") from None
        except BaseException:  # Ctrl-C while waiting
            self.stop()
            raise
        print(f"  {'mlflow':<9} {self.url} (ready in {seconds:.0f} s, store {self.store})")
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def running(self) -> None:
        state = subprocess.run(
            [self.box.cli, "inspect", "--format", "{{.State.Running}}", self.name],
            env=self.box.env,
            capture_output=True,
            text=True,
        ).stdout.strip()
        if state != "true":
            raise StageFailed("its container exited")

    def logs(self) -> str:
        out = subprocess.run(
            [self.box.cli, "logs", "--tail", "20", self.name], env=self.box.env, capture_output=True, text=True
        )
        return "\n".join(f"    | {line}" for line in (out.stdout + out.stderr).splitlines())

    def stop(self) -> None:
        # SIGTERM first: the server finishes its requests and closes the SQLite store
        subprocess.run([self.box.cli, "stop", "-t", "10", self.name], env=self.box.env, capture_output=True)
        subprocess.run([self.box.cli, "rm", "-f", self.name], env=self.box.env, capture_output=True)

    def env(self) -> dict:
        """What a training or tuning container gets (Containers.tracking_flags adds the stage's run name)."""
        return {"MLFLOW_TRACKING_URI": self.url}
