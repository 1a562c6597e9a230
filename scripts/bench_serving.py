#!/usr/bin/env python3
"""Serving benchmark: our server against a seed-style Flask app and AWS's own stack, on this machine.

    .venv/bin/python scripts/bench_serving.py [--quick] [--skip-torchserve] [--cell-seconds 40]

Three servers, each a subprocess (its own process group, stopped as a whole
at the end, on Ctrl-C or on any error) on a free port of 127.0.0.1. They start
one at a time, so each cold start is measured alone, then stay up together:
every cell (image size x concurrency) runs against the three back to back, so
load from a neighbour on a shared machine hits all three alike.

  ours  container/serve (gunicorn + Flask + dynamic batching), default settings
  (a)   scripts/bench/seed_flask_app.py: one process, Flask's built-in server
        (threaded=False), PIL + torchvision transforms, fp32 (the seeds' style)
  (b)   TorchServe through AWS's sagemaker-pytorch-inference toolkit, with
        scripts/bench/torchserve_inference.py as code/inference.py; needs
        build/bench-venv (see --bench-venv), which holds torch, torchvision,
        torchserve, torch-model-archiver, sagemaker-pytorch-inference,
        sagemaker-inference and pyyaml (torchserve's workers import yaml but
        the wheel does not require it):
            python3 -m venv build/bench-venv && build/bench-venv/bin/pip install \\
              torch==2.14.1 torchvision==0.29.2 torchserve torch-model-archiver \\
              sagemaker-pytorch-inference sagemaker-inference pyyaml

All three serve the same ResNet50 with a 256-unit head and 133 classes, with
seeded random weights (no weights can be downloaded here), on synthetic
photo-like JPEGs at 500x375 and 1600x1200 (no real photos offline). Per server
and image size: requests/s and p50/p90/p99 latency at concurrency 1, 4, 16
(a bounded number of requests per cell, each cell capped in time); cold start
(process start to the first 200 on /ping and to the first answered
/invocations); resident memory of the server's process tree after the load.
In-process: the model's forward time at batch 1 (the floor) and the JPEG
decode + preprocess time per size, measured around each size's cells and, for
the p50 target, paired with every concurrency-1 request (run_paired_cell: on a
shared machine the floor drifts too much to compare numbers taken minutes
apart). Our server's probabilities are checked
against the model run in-process with contract.preprocess.eval_transform.
Prints markdown tables and a verdict against the targets.
"""
from __future__ import annotations

import argparse
import glob
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import container_path  # noqa: F401  (first: container/ on the import path)
import proctree
from contract import artifact
from contract.preprocess import Preprocessing, decode_image, eval_transform
from localnet import free_port
from serving_bench.loadgen import REQUEST_TIMEOUT, cell_summary, invoke, request, run_cell
from serving_bench.workload import HEAD, IMAGE_SIZES, NUM_CLASSES, make_images, make_model_dir

ROOT = Path(__file__).resolve().parent.parent
CONTAINER = ROOT / "container"
BENCH = ROOT / "scripts" / "bench"

CONCURRENCY = (1, 4, 16)
START_TIMEOUT = 240.0  # seconds for a server to answer its first /invocations
TOLERANCE = 1e-4
TARGET_THROUGHPUT_RATIO = 1.3
TARGET_P50_SLACK = 0.15
AWS_IMAGE_MB = {"cpu": 4900, "gpu": 14000}


# ---------------------------------------------------------------- in-process floor

def median_ms(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def forward_floor_ms(model_dir: Path, repeats: int) -> dict[str, float]:
    """Batch-1 forward time of the model alone: channels_last (as our server
    runs it) and contiguous (as the seeds run it)."""
    model, config = artifact.load(model_dir)
    size = artifact.preprocessing(config).image_size
    x = torch.randn(1, 3, size, size)
    result = {}
    with torch.inference_mode():
        result["contiguous"] = median_ms(lambda: model(x), repeats)
        model_cl = model.to(memory_format=torch.channels_last)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        result["channels_last"] = median_ms(lambda: model_cl(x_cl), repeats)
    return result


def decode_ms(images: dict[str, list[bytes]], prep: Preprocessing, repeats: int) -> dict[str, dict[str, float]]:
    """Per size: our decode (draft-mode JPEG) + eval_transform, and the seeds'
    PIL decode + torchvision transforms."""
    from torchvision import transforms
    seed_transform = transforms.Compose([
        transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    result = {}
    for name, datas in images.items():
        data = datas[0]
        ours = median_ms(lambda data=data: torch.from_numpy(eval_transform(decode_image(data, prep), prep)), repeats)
        seeds = median_ms(lambda data=data: seed_transform(Image.open(io.BytesIO(data)).convert("RGB")), repeats)
        result[name] = {"ours": ours, "seeds": seeds}
    return result


class InProcess:
    """The model run in this process as our server runs it (channels_last, batch 1): the floor."""

    def __init__(self, model_dir: Path, prep: Preprocessing):
        model, _ = artifact.load(model_dir)
        self.model, self.prep = model.eval().to(memory_format=torch.channels_last), prep

    def measure(self, data: bytes) -> tuple[float, float]:
        """(decode + preprocess ms, forward ms) for one payload."""
        began = time.perf_counter()
        x = torch.from_numpy(eval_transform(decode_image(data, self.prep), self.prep))[None]
        decoded = time.perf_counter()
        with torch.inference_mode():
            self.model(x.contiguous(memory_format=torch.channels_last))
        return (decoded - began) * 1000, (time.perf_counter() - decoded) * 1000


def run_paired_cell(port: int, payloads: list[bytes], count: int, time_cap: float, floor: InProcess) -> dict:
    """Concurrency 1, each request right after the in-process decode and forward of the same image.

    The floor and the request then see the same machine: on a shared host the
    speed of a forward pass drifts by a third within minutes, so a floor
    measured before or after the cell misjudges the server's overhead."""
    latencies, decodes, forwards, errors = [], [], [], []
    deadline = time.perf_counter() + time_cap
    for index in range(count):
        if time.perf_counter() >= deadline:
            break
        data = payloads[index % len(payloads)]
        decode_ms, forward_ms = floor.measure(data)
        time.sleep(0.005)  # let this process's idle OpenMP threads stop spinning before the request
        began = time.perf_counter()
        status, body = invoke(port, data)
        elapsed = time.perf_counter() - began
        if status == 200:
            latencies.append(elapsed)
            decodes.append(decode_ms)
            forwards.append(forward_ms)
        else:
            errors.append(f"{status} {body[:120]!r}")
    wall = sum(latencies)  # request time only: the in-process work between requests is not the server's
    return {**cell_summary(latencies, errors, wall, count),
            "floor_ms": float(np.median(forwards)) if forwards else float("nan"),
            "decode_ms": float(np.median(decodes)) if decodes else float("nan")}


# ---------------------------------------------------------------- processes

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
                    self.process = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                                    start_new_session=True)
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
                status, _ = request(self.port, "POST", "/invocations", probe, {"Content-Type": "image/jpeg"},
                                 timeout=min(REQUEST_TIMEOUT * 2, remaining))
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
    cmd = [sys.executable, str(BENCH / "seed_flask_app.py"), str(model_dir / artifact.WEIGHTS_FILE), str(port),
           str(NUM_CLASSES), ",".join(map(str, HEAD))]
    return Server("(a) seed Flask", cmd, port, server_env(), work / "seed_flask.log")


def torchserve_problem(venv: Path) -> str | None:
    """Why TorchServe cannot run here, or None."""
    if not (venv / "bin" / "torchserve").exists():
        return f"{venv}/bin/torchserve not found: create build/bench-venv as this script's docstring says"
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        return "no java on PATH (TorchServe's frontend is a Java program; it needs JDK 11+)"
    probe = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import yaml, torch, torchvision, ts, sagemaker_inference, "
                            "sagemaker_pytorch_serving_container"], capture_output=True, text=True, timeout=180)
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
    toolkit = Path(glob.glob(str(venv / "lib" / "python*" / "site-packages" / "sagemaker_pytorch_serving_container"))[0])
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
        SAGEMAKER_BASE_DIR=str(ts_root / "base"), TMPDIR=str(ts_root / "tmp"),
        LOG_LOCATION=str(ts_root / "logs"), METRICS_LOCATION=str(ts_root / "logs"),
        BENCH_NUM_CLASSES=str(NUM_CLASSES), BENCH_HEAD=",".join(map(str, HEAD)))
    env.pop("VIRTUAL_ENV", None)
    cmd = [str(venv / "bin" / "torchserve"), "--start", "--foreground", "--model-store", str(ts_root / "store"),
           "--models", f"model={model}", "--ts-config", str(ts_root / "config.properties"),
           "--log-config", str(toolkit / "etc" / "log4j2.xml")]
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
        out = subprocess.run(["podman", "image", "inspect", "--format", "{{.Size}}", ref],
                             capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "podman timed out"
    if out.returncode != 0 or not out.stdout.strip().isdigit():
        return "not present"
    return f"{int(out.stdout.strip()) / 1e6:,.0f} MB"


def fmt(value: float, digits: int = 1) -> str:
    return "n/a" if value != value else f"{value:.{digits}f}"


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def bring_up(server: Server, images: dict[str, list[bytes]], cell_seconds: float, results: dict, check=None) -> None:
    """Cold start, the correctness check, and a warm-up that every worker sees each size in."""
    ping_s, first_s = server.cold_start(images["500x375"][0])
    print(f"  {server.name}: /ping 200 after {ping_s:.1f} s, first /invocations answered after {first_s:.1f} s",
          flush=True)
    record = results.setdefault(server.name, {"cells": {}})
    record.update(ping_s=ping_s, first_s=first_s)
    if check:
        record["max_abs_diff"] = check(server)
    for payloads in images.values():
        run_cell(server.port, payloads, 2, 4, cell_seconds)


def interrupted(signum, frame):
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests and shorter caps (~4 minutes)")
    parser.add_argument("--cell-seconds", type=float, default=None, help="time cap per cell (default 40, quick 15)")
    parser.add_argument("--skip-torchserve", action="store_true")
    parser.add_argument("--bench-venv", type=Path, default=ROOT / "build" / "bench-venv")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs) and print its path")
    args = parser.parse_args()
    counts = {1: 10, 4: 20, 16: 20} if args.quick else {1: 40, 4: 80, 16: 80}
    cell_seconds = args.cell_seconds or (15.0 if args.quick else 40.0)
    repeats = 8 if args.quick else 20

    # Ctrl-C raises KeyboardInterrupt; SIGTERM does the same, so `finally` stops every server.
    signal.signal(signal.SIGTERM, interrupted)
    load_before = loadavg()
    began = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench_serving."))
    results: dict = {}
    notes: list[str] = []
    servers: list[Server] = []
    try:
        print(f"load average before: {load_before}; CPU x{len(os.sched_getaffinity(0))}, "
              f"torch {torch.__version__} ({torch.get_num_threads()} threads)", flush=True)
        images = make_images()
        model_dir = make_model_dir(work / "model", images["500x375"][:2])
        model, config = artifact.load(model_dir)
        prep = artifact.preprocessing(config)

        def probabilities(data: bytes) -> np.ndarray:  # in this process, as the reference
            with torch.inference_mode():
                x = torch.from_numpy(eval_transform(decode_image(data, prep), prep))[None]
                return torch.softmax(model(x), 1)[0].numpy()

        def check_ours(server: Server) -> float:
            """Largest |p_server - p_in_process| over every image (full probability rows, as .npy)."""
            worst = 0.0
            for name, datas in images.items():
                for data in datas:
                    status, body = invoke(server.port, data, accept="application/x-npy")
                    if status != 200:
                        raise RuntimeError(f"ours answered {status} for a {name} image: {body[:200]!r}")
                    served = np.load(io.BytesIO(body), allow_pickle=False).reshape(-1)
                    worst = max(worst, float(np.abs(served - probabilities(data)).max()))
            print(f"  ours: max |p - p_in_process| = {worst:.2e}", flush=True)
            return worst

        def check_seed(server: Server) -> float:
            """Informational: the seeds' preprocessing differs (full decode, torchvision)."""
            worst = 0.0
            for datas in images.values():
                served = seed_probabilities(server.port, datas[0])
                if served is not None:
                    worst = max(worst, float(np.abs(served - probabilities(datas[0])).max()))
            return worst

        # Servers start one at a time (cold starts measured alone) and then all
        # stay up, idle but for their turn: each cell runs against every server
        # back to back, so a neighbour's load on this shared CPU hits all alike.
        servers.append(start_ours(model_dir, work))
        bring_up(servers[-1], images, cell_seconds, results, check_ours)
        servers.append(start_seed_flask(model_dir, work))
        bring_up(servers[-1], images, cell_seconds, results, check_seed)
        ts_problem = "skipped (--skip-torchserve)" if args.skip_torchserve else torchserve_problem(args.bench_venv)
        if ts_problem is None:
            torchserve = start_torchserve(args.bench_venv, model_dir, work)
            servers.append(torchserve)
            try:
                bring_up(torchserve, images, cell_seconds, results)
            except RuntimeError as exc:
                ts_problem = f"TorchServe failed to start: {str(exc).splitlines()[0]}"
                print(f"  {ts_problem}\n{torchserve.log_tail()}", flush=True)
                results.pop(torchserve.name, None)
                servers.remove(torchserve)
                torchserve.stop()
        if ts_problem:
            notes.append(f"(b) TorchServe not benchmarked: {ts_problem}")

        floor: dict[str, dict[str, float]] = {}
        decode: dict[str, dict[str, float]] = {}
        in_process = InProcess(model_dir, prep)
        turn = 0
        for name, payloads in images.items():
            # For the table: the floor right before and after this size's cells, with
            # every server idle; the smaller of the two. (The p50 verdict uses the
            # floor measured with each concurrency-1 request instead.)
            floor[name] = forward_floor_ms(model_dir, repeats)
            decode[name] = decode_ms({name: payloads}, prep, repeats)[name]
            for concurrency in CONCURRENCY:
                for i in range(len(servers)):
                    server = servers[(turn + i) % len(servers)]  # rotate who goes first
                    if concurrency == 1:
                        cell = run_paired_cell(server.port, payloads, counts[1], cell_seconds, in_process)
                    else:
                        cell = run_cell(server.port, payloads, concurrency, counts[concurrency], cell_seconds)
                    results[server.name]["cells"][(name, concurrency)] = cell
                    print(f"  {server.name} {name} c={concurrency}: {cell['ok']} ok, {cell['errors']} errors, "
                          f"{cell['rps']:.2f} req/s, p50 {fmt(cell['p50'])} ms"
                          + (f" (first error: {cell['first_error']})" if cell["errors"] else "")
                          + (" (time cap reached)" if cell["capped"] else "") + f" [load {loadavg()}]", flush=True)
                turn += 1
            after = forward_floor_ms(model_dir, repeats)
            floor[name] = {key: min(value, after[key]) for key, value in floor[name].items()}
            print(f"  in-process {name}: forward {floor[name]}, decode {decode[name]}", flush=True)
        for server in servers:
            rss, processes = server.rss()
            results[server.name].update(rss_mb=rss / 2**20, processes=processes)
            if not server.alive():
                notes.append(f"{server.name} exited during the load: {server.log_tail(3)}")
        for server in list(servers):
            server.stop()
        report(results, floor, decode, images, notes, counts, cell_seconds)
    except KeyboardInterrupt:
        print("interrupted: stopping servers", file=sys.stderr)
        return 130
    finally:
        for server in list(Server.running):
            server.stop()
        if args.keep:
            print(f"work folder (logs): {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
        print(f"\nload average before: {load_before}; after: {loadavg()}; "
              f"wall time {time.perf_counter() - began:.0f} s")
    return 0


def report(results: dict, floor: dict, decode: dict, images: dict, notes: list, counts: dict, cell_seconds: float):
    cpu = f"CPU x{len(os.sched_getaffinity(0))}"
    kb = {name: np.mean([len(d) for d in datas]) / 1024 for name, datas in images.items()}
    print(f"\n## Serving benchmark: ResNet50 (+256 head, 133 classes), {cpu}, torch {torch.__version__}\n")
    print("Random weights (seeded; no weights can be downloaded here). Images: synthetic photo-like JPEGs "
          "(smooth random colour fields, blurred shapes, texture, grain; quality 90; mean "
          + ", ".join(f"{name} {size:.0f} KB" for name, size in kb.items())
          + "), no real photos being available offline. One request per connection, all on 127.0.0.1; "
          f"requests per cell: c=1 {counts[1]}, c=4 {counts[4]}, c=16 {counts[16]}, at most {cell_seconds:.0f} s "
          "per cell (p99 of so few requests is close to the maximum).\n")
    print("At concurrency 1 each request follows the in-process decode and forward pass of the same image "
          "(the floor column, medians); req/s there counts request time only.\n")
    print("| server | image | concurrency | ok / errors | req/s | p50 ms | p90 ms | p99 ms | floor + decode ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for server, record in results.items():
        for (name, concurrency), cell in record["cells"].items():
            paired = f"{cell['floor_ms']:.1f} + {cell['decode_ms']:.1f}" if "floor_ms" in cell else ""
            print(f"| {server} | {name} | {concurrency} | {cell['ok']} / {cell['errors']}"
                  f"{' (capped)' if cell['capped'] else ''} | {cell['rps']:.2f} | {fmt(cell['p50'])} | "
                  f"{fmt(cell['p90'])} | {fmt(cell['p99'])} | {paired} |")
    print("\n| server | /ping 200 after start | first /invocations answered | RSS after load (processes) "
          "| max abs diff vs in-process eval_transform |")
    print("|---|---|---|---|---|")
    for server, record in results.items():
        diff = record.get("max_abs_diff")
        print(f"| {server} | {record['ping_s']:.1f} s | {record['first_s']:.1f} s | "
              f"{record['rss_mb']:,.0f} MB ({record['processes']}) | {'-' if diff is None else f'{diff:.1e}'} |")
    print("\n| in-process, batch 1 | " + " | ".join(IMAGE_SIZES) + " |")
    print("|---|" + "---|" * len(IMAGE_SIZES))
    print("| forward, channels_last (ours) | "
          + " | ".join(f"{floor[name]['channels_last']:.1f} ms" for name in IMAGE_SIZES) + " |")
    print("| forward, contiguous (seeds) | "
          + " | ".join(f"{floor[name]['contiguous']:.1f} ms" for name in IMAGE_SIZES) + " |")
    print("| decode + preprocess, ours (draft JPEG, eval_transform) | "
          + " | ".join(f"{decode[name]['ours']:.1f} ms" for name in IMAGE_SIZES) + " |")
    print("| decode + preprocess, seeds (PIL, torchvision) | "
          + " | ".join(f"{decode[name]['seeds']:.1f} ms" for name in IMAGE_SIZES) + " |")
    sizes = {variant: image_size_mb(f"byoc-serve:{variant}") for variant in ("cpu", "gpu")}
    print("\n| serving image | uncompressed size | AWS's framework image |")
    print("|---|---|---|")
    for variant, size in sizes.items():
        print(f"| byoc-serve:{variant} | {size} | ~{AWS_IMAGE_MB[variant]:,} MB |")

    print("\n### Verdict\n")
    ours = results.get("ours")
    ts = results.get("(b) TorchServe")
    seed = results.get("(a) seed Flask")
    for name in IMAGE_SIZES:
        if ours and ts:
            ratio = ours["cells"][(name, 16)]["rps"] / max(ts["cells"][(name, 16)]["rps"], 1e-9)
            verdict = "met" if ratio >= TARGET_THROUGHPUT_RATIO else "NOT met"
            print(f"* {name}, concurrency 16: ours {ours['cells'][(name, 16)]['rps']:.2f} req/s vs (b) "
                  f"{ts['cells'][(name, 16)]['rps']:.2f} req/s = {ratio:.2f}x (target >= "
                  f"{TARGET_THROUGHPUT_RATIO}x): {verdict}")
        elif ours:
            print(f"* {name}, concurrency 16: no (b) result, throughput target not judged")
        if ours and seed:
            ratio = ours["cells"][(name, 16)]["rps"] / max(seed["cells"][(name, 16)]["rps"], 1e-9)
            print(f"* {name}, concurrency 16: ours vs (a) seed Flask = {ratio:.2f}x")
        if ours:
            cell = ours["cells"][(name, 1)]
            bound = (cell["floor_ms"] + cell["decode_ms"]) * (1 + TARGET_P50_SLACK)
            verdict = "met" if cell["p50"] <= bound else "NOT met"
            print(f"* {name}, concurrency 1: ours p50 {fmt(cell['p50'])} ms vs floor {cell['floor_ms']:.1f} + decode "
                  f"{cell['decode_ms']:.1f} ms, each measured in-process right before each request "
                  f"(+15% = {bound:.1f} ms): {verdict}")
    if ours:
        diff = ours.get("max_abs_diff", float("nan"))
        print(f"* correctness: ours vs in-process eval_transform, max |dp| {diff:.1e} "
              f"({'within' if diff <= TOLERANCE else 'NOT within'} {TOLERANCE:g})")
    for name in IMAGE_SIZES:
        if floor[name]["channels_last"] > 1.15 * floor[name]["contiguous"]:
            print(f"* note ({name} cells): batch-1 forward in channels_last (how our server runs it) took "
                  f"{floor[name]['channels_last']:.1f} ms vs {floor[name]['contiguous']:.1f} ms contiguous")
    for variant, size in sizes.items():
        if size.endswith(" MB"):
            mb = float(size[:-3].replace(",", ""))
            print(f"* byoc-serve:{variant}: {size}, {mb / AWS_IMAGE_MB[variant]:.2f}x AWS's ~{AWS_IMAGE_MB[variant]:,} MB")
    if ts:
        print("* (b)'s /ping answers 200 before its workers have loaded the model (TorchServe's frontend "
              "reports itself healthy), so its first answered /invocations is its real readiness")
    for note in notes:
        print(f"* {note}")


if __name__ == "__main__":
    sys.exit(main())
