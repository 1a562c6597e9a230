"""The serving half of the proof: the project's server (container/serve: gunicorn and its workers) on
127.0.0.1, per precision mode, with dynamic batching up to a large batch: the mode in effect, top-1
agreement with fp32 (torch in this process, on the CPU) on the data set's test images, req/s at high
concurrency against the in-process forward limit of the same converted model and batch, and that
gunicorn's master never initialised CUDA (probe/sitecustomize.py watches it from inside). Then one
server whose model has a code/inference.py that touches CUDA at import: it must still serve."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from benchmarks.gpu_proof import loadgen
from benchmarks.gpu_proof.profile import Profile
from benchmarks.gpu_proof.report import Report
from contract import artifact
from contract.model import Architecture, build_classifier
from contract.preprocess import ImageDecodeError, Preprocessing, decode_image, eval_transform
from localnet import free_port, wait_healthy

CONTAINER = Path(__file__).resolve().parents[3] / "container"
PROBE_DIR = Path(__file__).resolve().parent / "probe"
PROBE_ENV = "GPU_PROOF_MASTER_PROBE"  # probe/sitecustomize.py's
START_TIMEOUT_S = 240.0
# server/preload.py's lines when the master could not load the model or a worker could not start it:
# /ping then never answers 200, and waiting for it would spend the run's budget
LOAD_FAILED = re.compile(r"(loading the model from \S+|starting the model in worker \d+) failed")
MIN_START_S = 30.0  # a server started near the end of the budget still gets this long
AGREEMENT_BAR = 0.99
AGREEMENT_TIMEOUT_S = 30.0  # one request of the agreement pass
# A flip where fp32 itself barely chose (top-1 minus top-2 probability at most this) is rounding, not an error.
NEAR_TIE = 0.05
PART = "serving"
USER_CODE_LABEL = "inference.py touching CUDA at import"
USER_CODE = """\
    # What many users put at the top of inference.py: on a GPU host it initialises CUDA at import.
    import torch

    DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    WARM = torch.zeros(1, device=DEVICE)
"""


class Server:
    """container/serve in its own process group on a free port; stopped as a whole."""

    def __init__(self, model_dir: Path, work: Path, name: str, env: dict[str, str]):
        self.port, self.name = free_port(), name
        self.log_path, self.probe_path = work / f"serve-{name}.log", work / f"probe-{name}.json"
        server_env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "SAGEMAKER_"))}
        server_env.update(
            {
                "SM_MODEL_DIR": str(model_dir),
                "SAGEMAKER_BIND_HOST": "127.0.0.1",
                "SAGEMAKER_BIND_TO_PORT": str(self.port),
                "SAGEMAKER_SERVER_RUN_DIR": str(work / f"serve-{name}.run"),
                "PYTHONPATH": os.pathsep.join(filter(None, [str(PROBE_DIR), os.environ.get("PYTHONPATH")])),
                PROBE_ENV: str(self.probe_path),
                **env,
            }
        )
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(CONTAINER / "serve")],
                env=server_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, deadline: float) -> float:
        def running() -> None:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited with {self.process.returncode}: {self.log()[-600:]}")
            failed = LOAD_FAILED.search(self.log())
            if failed:
                raise RuntimeError(f"{failed.group(0)}: {self.log()[failed.start() :][:600]}")

        timeout = min(START_TIMEOUT_S, max(MIN_START_S, deadline - time.monotonic()))
        return wait_healthy(f"http://127.0.0.1:{self.port}", timeout, interval_s=0.2, check=running)

    def in_effect(self) -> str:
        """The precision line the server logged at load: the mode in effect, or its fallback and why."""
        for line in self.log().splitlines():
            if " in effect" in line or "falls back to fp32" in line:
                return line.split("] ", 1)[-1].strip()[:160]
        return "no precision line in the log"

    def master_cuda(self) -> tuple[bool, str]:
        """(CUDA never initialised in gunicorn's master, what was seen): torch's own answer from inside
        the master, and the GPU device files the master holds open."""
        try:
            state = json.loads(self.probe_path.read_text())
        except (OSError, ValueError):
            return False, "the master's probe wrote nothing"
        devices = []
        fd_dir = Path(f"/proc/{self.process.pid}/fd")
        for fd in fd_dir.iterdir() if fd_dir.is_dir() else []:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("/dev/nvidia"):
                devices.append(target)
        clean = state["torch_imported"] and not state["ever"]
        seen = f"torch imported {state['torch_imported']}, torch.cuda.is_initialized() ever {state['ever']}"
        return clean, f"{seen}; /dev/nvidia* open: {', '.join(sorted(set(devices))) or 'none'}"

    def stop(self) -> None:
        for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(timeout=wait_s)
                return
            except subprocess.TimeoutExpired:
                continue


def test_images(data: Path) -> list[Path]:
    """The readable images of the generated data set's test split (the corrupt file is in train/)."""
    return sorted(path for path in (data / "test").rglob("*") if path.is_file())


def reference_probabilities(model_dir: Path, images: list[bytes]) -> np.ndarray:
    """fp32 torch on the CPU, the model exactly as the artifact loads: what every mode is held to."""
    model, config = artifact.load(model_dir)
    prep = artifact.preprocessing(config)
    rows = []
    with torch.inference_mode():
        for start in range(0, len(images), 32):
            chunk = images[start : start + 32]
            batch = torch.from_numpy(np.stack([eval_transform(decode_image(data, prep), prep) for data in chunk]))
            rows.append(torch.softmax(model.eval()(batch), 1).numpy())
    return np.concatenate(rows)


def served_probabilities(port: int, images: list[bytes], clients: int) -> np.ndarray:
    """Each image's probabilities from the server (x-npy), `clients` at a time so batches form."""

    def one(data: bytes) -> np.ndarray:
        status, body = post_npy(port, data)
        if status != 200:
            raise RuntimeError(f"/invocations answered {status}: {body[:200]!r}")
        return np.load(io.BytesIO(body)).reshape(-1)

    pool = ThreadPoolExecutor(clients)
    try:
        return np.stack(list(pool.map(one, images)))
    finally:  # after a failure, the images not yet sent are not sent: bounded by one request's timeout
        pool.shutdown(wait=True, cancel_futures=True)


def post_npy(port: int, data: bytes) -> tuple[int, bytes]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=AGREEMENT_TIMEOUT_S)
    try:
        conn.request(
            "POST", "/invocations", data, {"Content-Type": "application/x-image", "Accept": "application/x-npy"}
        )
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def batching(port: int) -> str:
    """The forward passes' mean batch and the bucket of the largest, from the server's /metrics
    (byoc_forward_batch_size, all passes since start: warm-up, agreement and the load cell)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=AGREEMENT_TIMEOUT_S)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode(errors="replace")
    finally:
        conn.close()
    values: dict[str, float] = {}
    buckets: list[tuple[float, float]] = []
    for line in text.splitlines():
        name, _, number = line.rpartition(" ")
        if name.startswith("byoc_forward_batch_size_bucket"):
            bound = name.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float(bound), float(number)))
        elif name.startswith(("byoc_forward_batch_size_sum", "byoc_forward_batch_size_count")):
            values[name.split("{")[0]] = float(number)
    count, total = values.get("byoc_forward_batch_size_count", 0.0), values.get("byoc_forward_batch_size_sum", 0.0)
    largest = min((bound for bound, seen in buckets if seen >= count), default=float("nan"))
    return f"{count:.0f} passes, mean {total / count if count else 0:.1f}, largest <= {largest:g}"


def agreement(served: np.ndarray, reference: np.ndarray) -> tuple[bool, str]:
    """Top-1 agreement of at least AGREEMENT_BAR, or flips only where fp32 itself barely chose."""
    agrees = served.argmax(1) == reference.argmax(1)
    ranked = np.sort(reference, axis=1)
    gaps = ranked[:, -1] - ranked[:, -2]
    worst_flip = float(gaps[~agrees].max()) if not agrees.all() else 0.0
    ok = bool(agrees.mean() >= AGREEMENT_BAR or worst_flip <= NEAR_TIE)
    diff = float(np.abs(served - reference).max())
    flips = f", {int((~agrees).sum())} flips where fp32's top-2 gap <= {worst_flip:.3f}" if not agrees.all() else ""
    return ok, f"{agrees.mean():.1%} of {len(agrees)}{flips}; largest probability difference {diff:.4f}"


def load_cell(port: int, payloads: Path, profile: Profile, work: Path, name: str) -> dict:
    """`concurrency` clients over `loadgen_processes` processes for `cell_seconds`: req/s and latency."""
    processes = min(profile.loadgen_processes, profile.concurrency)
    threads = [profile.concurrency // processes + (i < profile.concurrency % processes) for i in range(processes)]
    start = time.time() + 2.0 + 0.2 * processes  # after every process's start and warm-up request
    outputs = [open(work / f"loadgen-{name}-{i}.json", "w+") for i in range(processes)]
    try:
        children = [
            subprocess.Popen(
                [
                    sys.executable,
                    loadgen.__file__,
                    str(port),
                    str(payloads),
                    str(count),
                    str(start),
                    str(profile.cell_seconds),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            for count, out in zip(threads, outputs, strict=True)
        ]
        for child in children:
            child.wait(timeout=profile.cell_seconds + loadgen.REQUEST_TIMEOUT_S + 30)
        results = []
        for out in outputs:
            out.seek(0)
            results.append(json.loads(out.read().strip().splitlines()[-1]))
    finally:
        for out in outputs:
            out.close()
    latencies = np.asarray([x for r in results for x in r["latencies"]]) * 1000
    wall = max(r["finished"] for r in results) - start
    return {
        "ok": sum(r["ok"] for r in results),
        "errors": sum(r["errors"] for r in results),
        "first_error": next((r["first_error"] for r in results if r["first_error"]), ""),
        "rps": len(latencies) / wall if wall > 0 else 0.0,
        "p50": float(np.percentile(latencies, 50)) if len(latencies) else float("nan"),
        "p99": float(np.percentile(latencies, 99)) if len(latencies) else float("nan"),
    }


def forward_limit(model_dir: Path, precision_name: str, profile: Profile, gpu: bool) -> tuple[float, str]:
    """Images/s of the model as the server converts it for `precision_name` (server/precision.py; its
    CPU fallback where the mode cannot run here), on this machine's device, batches of serve_batch."""
    from server import precision, settings

    model, _ = artifact.load(model_dir)
    model = model.eval().to(memory_format=torch.channels_last)
    reason = precision.fallback_reason(precision_name, "none", set(settings.cpu_flags().split()), int(gpu), 1)
    served = model if reason else precision.convert(model, precision_name, "none", torch.zeros(0))
    device = torch.device("cuda" if gpu else "cpu")
    served = served.to(device)
    size = (profile.serve_batch, 3, profile.image_size, profile.image_size)
    batch = torch.randn(size, device=device).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        for _ in range(3):
            served(batch)
        synchronize(gpu)
        done, began = 0, time.perf_counter()
        while time.perf_counter() - began < profile.limit_seconds or done < 3 * profile.serve_batch:
            served(batch)
            done += profile.serve_batch
        synchronize(gpu)
    rate = done / (time.perf_counter() - began)
    del served, batch
    if gpu:
        torch.cuda.empty_cache()
    return rate, "fp32 (the server's fallback here)" if reason else precision_name


def synchronize(gpu: bool) -> None:
    if gpu:
        torch.cuda.synchronize()


def fallback_model_dir(folder: Path, profile: Profile) -> Path:
    """Seeded random weights in the trainer's layout, for when training failed: serving is proven anyway."""
    torch.manual_seed(0)
    arch = Architecture(backbone=profile.backbone, num_classes=profile.classes)
    names = [f"{i:03d}.class" for i in range(1, profile.classes + 1)]
    artifact.save(
        folder, build_classifier(arch).state_dict(), arch, Preprocessing.for_image_size(profile.image_size), names
    )
    return folder


def prove(report: Report, work: Path, model_dir: Path, data: Path, profile: Profile, deadline: float) -> None:
    """Every serving row; no server starts after `deadline` (time.monotonic()): a failed row says so."""
    files = test_images(data)
    payloads = work / "payloads"
    payloads.mkdir(exist_ok=True)
    images = []
    prep = artifact.preprocessing(artifact.read_config(model_dir))
    for path in files:
        try:
            decode_image(path.read_bytes(), prep)
        except ImageDecodeError:
            continue
        images.append(path.read_bytes())
        shutil.copy(path, payloads / path.name)
    reference = reference_probabilities(model_dir, images)
    for precision_name, workers in profile.serving:
        if out_of_time(report, deadline, f"{precision_name}, {workers or 'default'} workers"):
            continue
        prove_mode(report, work, model_dir, images, reference, payloads, profile, precision_name, workers, deadline)
    if not out_of_time(report, deadline, USER_CODE_LABEL):
        prove_user_code(report, work, model_dir, images, reference, profile, deadline)


def out_of_time(report: Report, deadline: float, label: str) -> bool:
    if time.monotonic() < deadline:
        return False
    report.failed(PART, f"{label}: not run", "the proof's time budget was spent before this server's turn")
    return True


def prove_mode(
    report: Report,
    work: Path,
    model_dir: Path,
    images: list[bytes],
    reference: np.ndarray,
    payloads: Path,
    profile: Profile,
    precision_name: str,
    workers: int,
    deadline: float,
) -> None:
    label = f"{precision_name}, {workers or 'default'} workers"
    env = {"SAGEMAKER_MODEL_PRECISION": precision_name, "SAGEMAKER_BATCH_SIZE": str(profile.serve_batch)}
    if workers:
        env["SAGEMAKER_MODEL_SERVER_WORKERS"] = str(workers)
    name = f"{precision_name}-{workers or 'default'}"
    server = Server(model_dir, work, name, env)
    try:
        ready_s = server.wait_ready(deadline)
        effect = server.in_effect()
        report.check(
            PART,
            f"{label}: ready, precision in effect",
            f"precision {precision_name} " in effect,
            f"{ready_s:.0f} s; {effect}",
            True,
        )
        ok, text = agreement(served_probabilities(server.port, images, profile.concurrency), reference)
        report.check(PART, f"{label}: top-1 agreement with fp32 (bar {AGREEMENT_BAR:.0%})", ok, text)
        cell = load_cell(server.port, payloads, profile, work, name)
        report.check(
            PART,
            f"{label}: c={profile.concurrency} requests all answered",
            cell["errors"] == 0 and cell["ok"] > 0,
            f"{cell['ok']} ok, {cell['errors']} errors {cell['first_error'][:120]}".strip(),
        )
        report.figure(
            PART, f"{label}: forward passes (dynamic batching up to {profile.serve_batch})", batching(server.port)
        )
        clean, seen = server.master_cuda()
        report.check(PART, f"{label}: CUDA never initialised in gunicorn's master", clean, seen, True)
    except Exception as exc:  # a server that never became ready: the reason and its log's end
        report.failed(PART, f"{label}: server", f"{type(exc).__name__}: {exc}")
        return
    finally:
        server.stop()
    limit, limit_mode = forward_limit(model_dir, precision_name, profile, report.gpu)
    report.figure(
        PART,
        f"{label}: c={profile.concurrency} req/s (p50 / p99 ms)",
        f"{cell['rps']:.1f} ({cell['p50']:.0f} / {cell['p99']:.0f})",
    )
    report.figure(PART, f"{label}: in-process forward limit, {limit_mode}, batch {profile.serve_batch}, img/s", limit)
    report.figure(PART, f"{label}: endpoint / limit", cell["rps"] / limit if limit else 0.0)


def prove_user_code(
    report: Report,
    work: Path,
    model_dir: Path,
    images: list[bytes],
    reference: np.ndarray,
    profile: Profile,
    deadline: float,
) -> None:
    """A model whose code/inference.py initialises CUDA at import still serves, and the master still has no CUDA."""
    with_code = work / "model-with-code"
    shutil.copytree(model_dir, with_code)
    (with_code / artifact.CODE_DIR).mkdir(exist_ok=True)
    (with_code / artifact.CODE_DIR / "inference.py").write_text(textwrap.dedent(USER_CODE))
    server = Server(with_code, work, "user-code", {"SAGEMAKER_BATCH_SIZE": str(profile.serve_batch)})
    label = USER_CODE_LABEL
    try:
        server.wait_ready(deadline)
        few = min(len(images), 16)
        ok, text = agreement(served_probabilities(server.port, images[:few], 4), reference[:few])
        report.check(PART, f"{label}: serves, top-1 agreement with fp32", ok, text)
        clean, seen = server.master_cuda()
        report.check(PART, f"{label}: CUDA never initialised in gunicorn's master", clean, seen, True)
    except Exception as exc:
        report.failed(PART, f"{label}: server", f"{type(exc).__name__}: {exc}")
    finally:
        server.stop()
