"""Server settings, from the environment SageMaker (or whoever runs the image) sets.

    SM_MODEL_DIR                    /opt/ml/model
    SAGEMAKER_BIND_TO_PORT          8080
    SAGEMAKER_BIND_HOST             0.0.0.0 (tests bind 127.0.0.1)
    SAGEMAKER_MODEL_SERVER_WORKERS  one per GPU; on CPU as many as cores and memory fit
    SAGEMAKER_MODEL_SERVER_TIMEOUT  60 s: gunicorn's worker timeout; in-flight requests
                                    may still run SHUTDOWN_GRACE_S after SIGTERM
    SAGEMAKER_MAX_PAYLOAD_IN_MB     6 (batch transform sets its MaxPayloadInMB)
    SAGEMAKER_MAX_IMAGES_PER_REQUEST  64: images in one JSON or NPY body (413 above)
    SAGEMAKER_MAX_PIXELS_PER_REQUEST  64000000: pixels all of a request's images
                                    decode to, together (413 above); one image
                                    alone is also bounded by it
    SAGEMAKER_DECODE_PIXELS_PER_WORKER  pixels one worker's request threads may decode
                                    at once, together (decode_budget.py): a request
                                    waits for its share, SAGEMAKER_DECODE_WAIT_S at
                                    most (then 503), and one image needing more than
                                    all of it is refused (413). Default: three quarters
                                    of the memory a worker has beyond its model, at
                                    DECODE_BYTES_PER_PIXEL
    SAGEMAKER_DECODE_WAIT_S         10: longest a request waits for decode budget
    SAGEMAKER_BODY_READ_TIMEOUT_S   10: the whole body must arrive within this; a
                                    slower client gets 408 and its connection closed
    SAGEMAKER_PREDICT_TIMEOUT_S     30: longest a request waits for its forward pass
                                    (queue included), then 503. The three deadlines
                                    add up to less than SageMaker's 60 s per invocation
    SAGEMAKER_BATCH_SIZE            8: most images in one forward pass
    SAGEMAKER_BATCH_WAIT_MS         5: longest a request waits for others to join
                                    its forward pass; 0: never wait (batching.py)
    SAGEMAKER_MODEL_SERVER_THREADS  concurrent requests per worker, default
                                    max(16, 2 x batch size) so batches can fill
    SAGEMAKER_TORCH_THREADS         torch CPU threads per worker, default
                                    cores // workers, so workers do not oversubscribe
    SM_NUM_GPUS                     GPUs to spread workers over (default: counted)
    SAGEMAKER_MODEL_PRECISION       fp32 (default) | bf16 | int8 | fp16 (GPU only):
                                    the numbers the model runs in (precision.py)
    SAGEMAKER_MODEL_COMPILE         none (default) | jit: trace and freeze the model
                                    (folds batch norm, fuses oneDNN ops; CPU only)
    SAGEMAKER_CPU_FLAGS             the instruction sets precision.py decides by,
                                    default read from /proc/cpuinfo (tests override it)
    CUDA_VISIBLE_DEVICES            the GPUs this server may use (each worker gets one)
    SAGEMAKER_MULTI_MODEL           true: a multi-model endpoint (multi_model.py): models
                                    are loaded through POST /models, none from SM_MODEL_DIR
    SAGEMAKER_MULTI_MODEL_ROOT      multi-model: the folder every model's url must lie in, links
                                    followed (default /opt/ml/models, where SageMaker puts them)
    SAGEMAKER_MODEL_MEMORY_BUDGET_MB  multi-model: the memory one worker's loaded models
                                    may take (multi_model.model_cost); the least
                                    recently used are unloaded above it. Default: half of
                                    what memory leaves each worker
    SAGEMAKER_SERVER_RUN_DIR        the server's scratch: the multi-model registry and the
                                    metrics files (default /tmp/byoc-serve-PORT); a new or empty
                                    folder, or one the server marked (rundir.py); others are refused
    PROMETHEUS_MULTIPROC_DIR        where prometheus_client's worker files live
                                    (default RUN_DIR/metrics); the same rule

The names without SAGEMAKER's documentation behind them (BIND_HOST, BATCH_*,
MODEL_SERVER_THREADS, TORCH_THREADS, MAX_IMAGES_*, MAX_PIXELS_*, DECODE_*, *_TIMEOUT_S, MODEL_PRECISION,
MODEL_COMPILE, CPU_FLAGS, MODEL_MEMORY_*, MULTI_MODEL_ROOT, SERVER_RUN_DIR) are this project's.
This module is the only one that reads the
environment (prometheus_client reads PROMETHEUS_MULTIPROC_DIR itself, as exported here). `serve` resolves the
defaults that probe the host once and exports the result, so gunicorn's
config and every worker read the same numbers.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import overload

from contract.spec.artifact import WEIGHTS_FILE

# SageMaker sends SIGKILL 30 s after SIGTERM: in-flight requests get this
# long to finish, and the server is gone before the SIGKILL.
SHUTDOWN_GRACE_S = 25

# What one CPU worker needs besides its weights: torch's libraries, the
# request threads' decode buffers, activations. Weights count four times:
# the loaded state dict, the model, and headroom for activations of a batch.
WORKER_BASE_BYTES = 512 << 20
WEIGHTS_FACTOR = 4
# The most memory one pixel of an image takes while it is decoded, at the
# peak of contract.preprocess.load_rgb: the decoder's output (RGBA, CMYK: 4
# bytes; a progressive JPEG's DCT coefficients: up to 8 at its full size),
# its RGB copy (PIL keeps RGB in 4 bytes), a transposed copy; measured 8-9.
DECODE_BYTES_PER_PIXEL = 12

PRECISIONS = ("fp32", "bf16", "int8", "fp16")
COMPILE_MODES = ("none", "jit")
# The /proc/cpuinfo flags that decide which precision runs well here.
PRECISION_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


@dataclass(frozen=True)
class Settings:
    model_dir: str
    host: str
    port: int
    workers: int
    timeout: int
    max_payload_mb: int
    batch_size: int
    batch_wait_ms: int
    request_threads: int
    torch_threads: int
    gpus: int
    max_images_per_request: int = 64
    max_pixels_per_request: int = 64_000_000
    decode_pixels_per_worker: int = 256_000_000
    decode_wait_s: int = 10
    body_read_timeout_s: int = 10
    predict_timeout_s: int = 30
    precision: str = "fp32"
    compile: str = "none"
    cpu_flags: str = ""  # space-separated, only PRECISION_FLAGS
    multi_model: bool = False
    multi_model_root: str = "/opt/ml/models"
    model_memory_budget_mb: int = 1024
    run_dir: str = ""
    metrics_dir: str = ""
    cuda_visible_devices: str = ""

    @property
    def max_payload_bytes(self) -> int:
        return self.max_payload_mb * 1024 * 1024

    @property
    def model_memory_budget_bytes(self) -> int:
        return self.model_memory_budget_mb << 20

    @property
    def registry_dir(self) -> str:
        return os.path.join(self.run_dir, "models")

    @classmethod
    def from_env(cls, env=os.environ) -> Settings:
        """Raises ValueError naming the variable that is not a valid number."""
        model_dir = env.get("SM_MODEL_DIR", "/opt/ml/model")
        multi_model = _bool(env, "SAGEMAKER_MULTI_MODEL")
        gpus = _int(env, "SM_NUM_GPUS", None, minimum=0)
        gpus = count_gpus() if gpus is None else gpus
        cores = cpu_cores()
        weights = 0 if multi_model else model_bytes(model_dir)
        workers = _int(env, "SAGEMAKER_MODEL_SERVER_WORKERS", None, minimum=1)
        if workers is None:
            workers = gpus or cpu_workers(cores, memory_bytes(), weights)
        batch_size = _int(env, "SAGEMAKER_BATCH_SIZE", 8, minimum=1)
        port = _int(env, "SAGEMAKER_BIND_TO_PORT", 8080, minimum=1)
        run_dir = env.get("SAGEMAKER_SERVER_RUN_DIR") or os.path.join(tempfile.gettempdir(), f"byoc-serve-{port}")
        default_budget = max(1, (memory_bytes() // workers - WORKER_BASE_BYTES) // 2 >> 20)
        return cls(
            model_dir=model_dir,
            host=env.get("SAGEMAKER_BIND_HOST", "0.0.0.0"),
            port=port,
            workers=workers,
            timeout=_int(env, "SAGEMAKER_MODEL_SERVER_TIMEOUT", 60, minimum=1),
            max_payload_mb=_int(env, "SAGEMAKER_MAX_PAYLOAD_IN_MB", 6, minimum=1),
            batch_size=batch_size,
            batch_wait_ms=_int(env, "SAGEMAKER_BATCH_WAIT_MS", 5, minimum=0),
            request_threads=_int(env, "SAGEMAKER_MODEL_SERVER_THREADS", max(16, 2 * batch_size), minimum=1),
            torch_threads=_int(env, "SAGEMAKER_TORCH_THREADS", max(1, cores // workers), minimum=1),
            gpus=gpus,
            max_images_per_request=_int(env, "SAGEMAKER_MAX_IMAGES_PER_REQUEST", cls.max_images_per_request, minimum=1),
            max_pixels_per_request=_int(env, "SAGEMAKER_MAX_PIXELS_PER_REQUEST", cls.max_pixels_per_request, minimum=1),
            decode_pixels_per_worker=_int(
                env, "SAGEMAKER_DECODE_PIXELS_PER_WORKER", decode_pixels_per_worker(workers, weights), minimum=1
            ),
            decode_wait_s=_int(env, "SAGEMAKER_DECODE_WAIT_S", cls.decode_wait_s, minimum=0),
            body_read_timeout_s=_int(env, "SAGEMAKER_BODY_READ_TIMEOUT_S", cls.body_read_timeout_s, minimum=1),
            predict_timeout_s=_int(env, "SAGEMAKER_PREDICT_TIMEOUT_S", cls.predict_timeout_s, minimum=1),
            precision=_choice(env, "SAGEMAKER_MODEL_PRECISION", PRECISIONS),
            compile=_choice(env, "SAGEMAKER_MODEL_COMPILE", COMPILE_MODES),
            cpu_flags=" ".join(sorted(set(env["SAGEMAKER_CPU_FLAGS"].split()) & set(PRECISION_FLAGS)))
            if "SAGEMAKER_CPU_FLAGS" in env
            else cpu_flags(),
            multi_model=multi_model,
            multi_model_root=env.get("SAGEMAKER_MULTI_MODEL_ROOT") or cls.multi_model_root,
            model_memory_budget_mb=_int(env, "SAGEMAKER_MODEL_MEMORY_BUDGET_MB", default_budget, minimum=1),
            run_dir=run_dir,
            metrics_dir=env.get("PROMETHEUS_MULTIPROC_DIR") or os.path.join(run_dir, "metrics"),
            cuda_visible_devices=env.get("CUDA_VISIBLE_DEVICES", ""),
        )

    def to_env(self) -> dict[str, str]:
        names = {
            "model_dir": "SM_MODEL_DIR",
            "host": "SAGEMAKER_BIND_HOST",
            "port": "SAGEMAKER_BIND_TO_PORT",
            "workers": "SAGEMAKER_MODEL_SERVER_WORKERS",
            "timeout": "SAGEMAKER_MODEL_SERVER_TIMEOUT",
            "max_payload_mb": "SAGEMAKER_MAX_PAYLOAD_IN_MB",
            "batch_size": "SAGEMAKER_BATCH_SIZE",
            "batch_wait_ms": "SAGEMAKER_BATCH_WAIT_MS",
            "request_threads": "SAGEMAKER_MODEL_SERVER_THREADS",
            "torch_threads": "SAGEMAKER_TORCH_THREADS",
            "gpus": "SM_NUM_GPUS",
            "max_images_per_request": "SAGEMAKER_MAX_IMAGES_PER_REQUEST",
            "max_pixels_per_request": "SAGEMAKER_MAX_PIXELS_PER_REQUEST",
            "decode_pixels_per_worker": "SAGEMAKER_DECODE_PIXELS_PER_WORKER",
            "decode_wait_s": "SAGEMAKER_DECODE_WAIT_S",
            "body_read_timeout_s": "SAGEMAKER_BODY_READ_TIMEOUT_S",
            "predict_timeout_s": "SAGEMAKER_PREDICT_TIMEOUT_S",
            "precision": "SAGEMAKER_MODEL_PRECISION",
            "compile": "SAGEMAKER_MODEL_COMPILE",
            "cpu_flags": "SAGEMAKER_CPU_FLAGS",
            "multi_model": "SAGEMAKER_MULTI_MODEL",
            "multi_model_root": "SAGEMAKER_MULTI_MODEL_ROOT",
            "model_memory_budget_mb": "SAGEMAKER_MODEL_MEMORY_BUDGET_MB",
            "run_dir": "SAGEMAKER_SERVER_RUN_DIR",
            "metrics_dir": "PROMETHEUS_MULTIPROC_DIR",
            "cuda_visible_devices": "CUDA_VISIBLE_DEVICES",
        }
        env = {names[key]: str(value) for key, value in dataclasses.asdict(self).items()}
        env["SAGEMAKER_MULTI_MODEL"] = "true" if self.multi_model else "false"
        if not self.cuda_visible_devices:
            del env["CUDA_VISIBLE_DEVICES"]  # set but empty would hide every GPU
        return env


def _bool(env, name: str) -> bool:
    text = env.get(name, "").strip().lower()
    if text in ("", "false", "0", "no"):
        return False
    if text in ("true", "1", "yes"):
        return True
    raise ValueError(f"{name}={text!r}: expected true or false")


@overload
def _int(env, name: str, default: int, minimum: int) -> int: ...


@overload
def _int(env, name: str, default: None, minimum: int) -> int | None: ...


def _int(env, name: str, default: int | None, minimum: int) -> int | None:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise ValueError(f"{name}={text!r}: expected a whole number >= {minimum}")
    return value


def _choice(env, name: str, choices: tuple[str, ...]) -> str:
    text = env.get(name, "").strip().lower() or choices[0]
    if text not in choices:
        raise ValueError(f"{name}={text!r}: expected one of {', '.join(choices)}")
    return text


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The PRECISION_FLAGS this CPU has (its first processor's), space-separated."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return " ".join(sorted(set(line.split(":", 1)[1].split()) & set(PRECISION_FLAGS)))
    except OSError:
        pass
    return ""


def count_gpus() -> int:
    # Importing torch takes seconds and memory the gunicorn master would keep:
    # ask a child process, and only where an NVIDIA device exists at all.
    if not glob.glob("/dev/nvidia[0-9]*"):
        return 0
    probe = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    return int(probe.stdout.strip()) if probe.returncode == 0 else 0


def cpu_cores() -> int:
    cores = len(os.sched_getaffinity(0))
    quota = cgroup_cpu_quota()  # a container's CPU quota (docker run --cpus) is not in the affinity mask
    return min(cores, max(1, int(quota))) if quota else cores


def cgroup_cpu_quota(root: str = "/sys/fs/cgroup") -> float | None:
    """CPUs the container may use (quota / period): cgroup v2's cpu.max, else v1's
    cpu.cfs_quota_us (-1: none), as memory_bytes reads both; None without a quota."""
    try:
        quota_text, period_text = Path(root, "cpu.max").read_text().split()
        return None if quota_text == "max" else int(quota_text) / int(period_text)
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path(root, "cpu", "cpu.cfs_quota_us").read_text())
        period = int(Path(root, "cpu", "cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


# A container's memory limit: cgroup v2, then v1 (Amazon Linux 2 hosts, podman
# on cgroup v1), where no limit reads as a number larger than any memory.
CGROUP_MEMORY_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def memory_bytes() -> int:
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in CGROUP_MEMORY_LIMITS:
        try:
            limit = Path(path).read_text().strip()
        except OSError:
            continue
        if limit.isdigit():
            total = min(total, int(limit))
    return total


def model_bytes(model_dir) -> int:
    weights = Path(model_dir) / WEIGHTS_FILE
    return weights.stat().st_size if weights.is_file() else 0


def cpu_workers(cores: int, memory: int, weights: int) -> int:
    """Two or more torch threads per worker (a forward pass parallelises well),
    and no more workers than memory holds."""
    by_memory = memory // (WORKER_BASE_BYTES + WEIGHTS_FACTOR * weights)
    return max(1, min(max(cores // 2, 1), by_memory))


def decode_pixels_per_worker(workers: int, weights: int) -> int:
    """Three quarters of what memory leaves each worker beyond its base and its
    model, in decoded pixels; at least one image of 1000x1000."""
    spare = memory_bytes() // workers - WORKER_BASE_BYTES - WEIGHTS_FACTOR * weights
    return max(1_000_000, spare * 3 // 4 // DECODE_BYTES_PER_PIXEL)
