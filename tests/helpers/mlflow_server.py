"""A real `mlflow server` from the test environment on 127.0.0.1 (a free port), stopped afterwards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from localnet import free_port, wait_healthy

START_LIMIT_S = 180  # MLflow's imports and a fresh SQLite store's migrations, on a busy machine


@contextmanager
def mlflow_server(store: Path) -> Iterator[str]:
    """Its URL while the block runs: SQLite store `store`/mlflow.db, artifacts in `store`/artifacts, served
    by it (the layout run_local.py --mlflow leaves, so a test can read a workflow's runs back)."""
    store.mkdir(parents=True, exist_ok=True)
    port = free_port()
    with open(store / "server.log", "a") as log:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
                "--backend-store-uri",
                f"sqlite:///{store / 'mlflow.db'}",
                "--artifacts-destination",
                str(store / "artifacts"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def running():
        if server.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {(store / 'server.log').read_text()[-2000:]}")

    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, timeout_s=START_LIMIT_S, check=running, path="/health")
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
