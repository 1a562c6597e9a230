"""The servers the comparison benchmark starts: ours, the seed-style Flask app, TorchServe through
AWS's toolkit; each a process group on a free port of 127.0.0.1, stopped as a whole."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import proctree
from benchmarks.harness.loadgen import REQUEST_TIMEOUT, invoke, request
from benchmarks.harness.workload import HEAD, NUM_CLASSES
from contract import artifact
from localnet import free_port

ROOT = Path(__file__).resolve().parents[3]
CONTAINER = ROOT / "container"
BENCH = ROOT / "scripts" / "benchmarks" / "baselines"
START_TIMEOUT = 240.0  # seconds for a server to answer its first /invocations


def process_tree(root: int) -> list[int]:
    """`root` first, then its live descendants."""
    return [root, *proctree.descendants(root)]


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Server:
    """A server command in its own session (process group), stoppable as a whole."""

    running: list[Server] = []

    def __init__(self, name: str, cmd: list[str], port: int, env: dict, log_path: Path, cwd: Path | None = None):
        self.name, self.port, self.log_path = name, port, log_path
        for attempt in range(3):  # a shared machine's interpreter links can vanish for a moment
            try:
                self.started = time.perf_counter()
                with open(log_path, "wb") as log:
                    self.process = subprocess.Popen(
                        cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                    )
                break
            except FileNotFoundError:
                if attempt == 2:
                    raise
                time.sleep(2)
        Server.running.append(self)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.process.poll() is None

    def cold_start(self, probe: bytes) -> tuple[float, float]:
        """Seconds from process start to the first 200 on /ping, and to the first answered /invocations."""
        deadline = self.started + START_TIMEOUT
        ping = None
        while time.perf_counter() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            if ping is None and request(self.port, "GET", "/ping", timeout=5)[0] == 200:
                ping = time.perf_counter() - self.started
            if ping is not None:
                remaining = max(1.0, deadline - time.perf_counter())
                status, _ = request(
                    self.port,
                    "POST",
                    "/invocations",
                    probe,
                    {"Content-Type": "image/jpeg"},
                    timeout=min(REQUEST_TIMEOUT * 2, remaining),
                )
                if status == 200:
                    return ping, time.perf_counter() - self.started
            time.sleep(0.05)
        raise RuntimeError(f"{self.name}: no answered /invocations within {START_TIMEOUT:.0f} s:\n{self.log_tail()}")

    def rss(self) -> tuple[int, int]:
        """(sum of RSS over the process tree, number of processes)."""
        pids = process_tree(self.process.pid)
        return sum(rss_bytes(pid) for pid in pids), len(pids)

    def stop(self) -> None:
        """SIGTERM to the group, SIGKILL to what is left after 5 s."""
        pids = process_tree(self.process.pid)
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and (self.alive() or any(map(proctree.running, pids[1:]))):
            time.sleep(0.1)
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for pid in pids:  # descendants that left the group, if any
            if proctree.running(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            print(f"warning: {self.name} (pid {self.process.pid}) did not exit", file=sys.stderr)
        if self in Server.running:
            Server.running.remove(self)


def server_env(**extra: str) -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("SM_", "SAGEMAKER_"))}
    env.pop("PYTHONPATH", None)
    env.update(extra)
    return env


def start_ours(model_dir: Path, work: Path) -> Server:
    port = free_port()
    env = server_env(SM_MODEL_DIR=str(model_dir), SAGEMAKER_BIND_HOST="127.0.0.1", SAGEMAKER_BIND_TO_PORT=str(port))
    return Server("ours", [sys.executable, str(CONTAINER / "serve")], port, env, work / "ours.log")


def start_seed_flask(model_dir: Path, work: Path) -> Server:
    port = free_port()
    cmd = [
        sys.executable,
        str(BENCH / "seed_flask_app.py"),
        str(model_dir / artifact.WEIGHTS_FILE),
        str(port),
        str(NUM_CLASSES),
        ",".join(map(str, HEAD)),
    ]
    return Server("(a) seed Flask", cmd, port, server_env(), work / "seed_flask.log")


def torchserve_problem(venv: Path) -> str | None:
    """Why TorchServe cannot run here, or None."""
    if not (venv / "bin" / "torchserve").exists():
        return f"{venv}/bin/torchserve not found: create build/bench-venv as this script's docstring says"
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        return "no java on PATH (TorchServe's frontend is a Java program; it needs JDK 11+)"
    probe = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import yaml, torch, torchvision, ts, sagemaker_inference, sagemaker_pytorch_serving_container",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    if probe.returncode != 0:
        return f"{venv} lacks a module TorchServe's workers import: {probe.stderr.strip().splitlines()[-1]}"
    return None


def start_torchserve(venv: Path, model_dir: Path, work: Path) -> Server:
    """TorchServe the way sagemaker-pytorch-inference's serving.main() starts it,
    minus what needs /opt/ml and /etc: the model directory as --models model=DIR
    (no .mar: TorchServe takes a directory without a manifest and serves it with
    default_service_handler, the toolkit's handler service), the toolkit's own
    default-ts.properties plus the keys it adds, every address on 127.0.0.1."""
    ts_root = work / "torchserve"
    model = ts_root / "base" / "model"
    (model / "code").mkdir(parents=True)
    (ts_root / "store").mkdir()
    (ts_root / "tmp").mkdir()
    (ts_root / "logs").mkdir()
    shutil.copy(model_dir / artifact.WEIGHTS_FILE, model / "model.pth")
    shutil.copy(BENCH / "torchserve_inference.py", model / "code" / "inference.py")
    toolkit = Path(
        glob.glob(str(venv / "lib" / "python*" / "site-packages" / "sagemaker_pytorch_serving_container"))[0]
    )
    defaults = (toolkit / "etc" / "default-ts.properties").read_text()
    port, management, metrics = free_port(), free_port(), free_port()
    lines = []
    for line in defaults.splitlines():
        if line.startswith("vmargs="):  # keep the toolkit's flags; the JVM's temp files go to our folder
            line += f" -Djava.io.tmpdir={ts_root / 'tmp'}"
        lines.append(line)
    lines += [
        "default_response_timeout=60",  # the toolkit's SAGEMAKER_MODEL_SERVER_TIMEOUT default
        f"inference_address=http://127.0.0.1:{port}",
        f"management_address=http://127.0.0.1:{management}",
        f"metrics_address=http://127.0.0.1:{metrics}",
        "default_service_handler=sagemaker_pytorch_serving_container.handler_service:handle",
    ]
    (ts_root / "config.properties").write_text("\n".join(lines) + "\n")
    env = server_env(
        PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        PYTHONPATH=str(model / "code"),  # as the toolkit's _set_python_path does
        SAGEMAKER_BASE_DIR=str(ts_root / "base"),
        TMPDIR=str(ts_root / "tmp"),
        LOG_LOCATION=str(ts_root / "logs"),
        METRICS_LOCATION=str(ts_root / "logs"),
        BENCH_NUM_CLASSES=str(NUM_CLASSES),
        BENCH_HEAD=",".join(map(str, HEAD)),
    )
    env.pop("VIRTUAL_ENV", None)
    cmd = [
        str(venv / "bin" / "torchserve"),
        "--start",
        "--foreground",
        "--model-store",
        str(ts_root / "store"),
        "--models",
        f"model={model}",
        "--ts-config",
        str(ts_root / "config.properties"),
        "--log-config",
        str(toolkit / "etc" / "log4j2.xml"),
    ]
    return Server("(b) TorchServe", cmd, port, env, work / "torchserve.log", cwd=ts_root)


# ---------------------------------------------------------------- checks and reports


def seed_probabilities(port: int, data: bytes) -> np.ndarray | None:
    status, body = invoke(port, data)
    if status != 200:
        return None
    return np.asarray(json.loads(body)["probabilities"], np.float32)


def image_size_mb(ref: str) -> str:
    if shutil.which("podman") is None:
        return "podman not installed"
    try:
        out = subprocess.run(
            ["podman", "image", "inspect", "--format", "{{.Size}}", ref], capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        return "podman timed out"
    if out.returncode != 0 or not out.stdout.strip().isdigit():
        return "not present"
    return f"{int(out.stdout.strip()) / 1e6:,.0f} MB"
