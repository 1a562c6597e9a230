"""Server settings, from the environment SageMaker (or whoever runs the image) sets.

VARIABLES below names each variable once: the Settings field it sets, its default and its
meaning; `Settings.from_env` reads them, `Settings.to_env` exports them, and docs/serving.md's
table is generated from them (scripts/docs_tables.py). Most SAGEMAKER_ names are this project's:
SageMaker itself documents only the port, workers, timeout, payload and multi-model ones.

This module is the only one that reads the server's variables, and gunicorn's master
(master.py) is the only caller of `from_env`: it reads them once, before any worker forks,
and hands the frozen Settings to gunicorn's config and every worker. It exports them
(`to_env`) only for what reads the environment itself (prometheus_client its directory).
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

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
RUNTIMES = ("torch", "openvino", "onnxruntime")
# The /proc/cpuinfo flags that decide which precision runs well here.
PRECISION_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


@dataclass(frozen=True)
class Variable:
    """One environment variable: the Settings field it sets, its name, its default (None where
    from_env works it out from the host or other settings; `shown` then says how), its meaning.
    `meaning` and `shown` are Markdown: they are docs/serving.md's table cells."""

    field: str
    name: str
    default: int | str | bool | None
    meaning: str
    shown: str = ""

    @property
    def default_text(self) -> str:
        """The default as the manual shows it."""
        return self.shown or _export(self.default)


VARIABLES = (
    Variable("port", "SAGEMAKER_BIND_TO_PORT", 8080, "port"),
    Variable("host", "SAGEMAKER_BIND_HOST", "0.0.0.0", "address to listen on (the tests use 127.0.0.1)"),
    Variable("model_dir", "SM_MODEL_DIR", "/opt/ml/model", "the model directory"),
    Variable("gpus", "SM_NUM_GPUS", None, "GPUs to spread the workers over", shown="counted"),
    Variable(
        "cuda_visible_devices",
        "CUDA_VISIBLE_DEVICES",
        "",
        "the GPUs this server may use (each worker gets one)",
        shown="(unset: all)",
    ),
    Variable(
        "workers",
        "SAGEMAKER_MODEL_SERVER_WORKERS",
        None,
        "gunicorn workers",
        shown="one per GPU; on CPU what cores and memory fit",
    ),
    Variable(
        "timeout",
        "SAGEMAKER_MODEL_SERVER_TIMEOUT",
        60,
        f"gunicorn's worker timeout, seconds (in-flight requests get {SHUTDOWN_GRACE_S} s after SIGTERM)",
    ),
    Variable(
        "max_payload_mb",
        "SAGEMAKER_MAX_PAYLOAD_IN_MB",
        6,
        "request size limit (413 above it); batch transform sets it to its MaxPayloadInMB",
    ),
    Variable(
        "max_images_per_request",
        "SAGEMAKER_MAX_IMAGES_PER_REQUEST",
        64,
        "images in one JSON or NPY body (413 above it)",
    ),
    Variable(
        "max_pixels_per_request",
        "SAGEMAKER_MAX_PIXELS_PER_REQUEST",
        64_000_000,
        "pixels a request's images decode to, together (413 above it); one image alone is bounded by it too",
    ),
    Variable(
        "decode_pixels_per_worker",
        "SAGEMAKER_DECODE_PIXELS_PER_WORKER",
        None,
        "pixels a worker's requests decode at once (decode_budget.py); a request waits for its share "
        "(503 after the wait), one image above it is 413",
        shown=f"3/4 of a worker's spare memory, {DECODE_BYTES_PER_PIXEL} bytes a pixel",
    ),
    Variable(
        "decode_wait_s",
        "SAGEMAKER_DECODE_WAIT_S",
        10,
        "longest a request waits for decode budget, seconds (then 503 with Retry-After)",
    ),
    Variable(
        "body_read_timeout_s",
        "SAGEMAKER_BODY_READ_TIMEOUT_S",
        10,
        "the whole body must arrive within it, seconds (408 and the connection closed)",
    ),
    Variable(
        "predict_timeout_s",
        "SAGEMAKER_PREDICT_TIMEOUT_S",
        30,
        "longest a request waits for its forward pass, queue included, seconds (then 503); "
        "the three deadlines add up to less than SageMaker's 60 s per invocation",
    ),
    Variable("batch_size", "SAGEMAKER_BATCH_SIZE", 8, "most images in one forward pass (dynamic batching)"),
    Variable(
        "batch_wait_ms",
        "SAGEMAKER_BATCH_WAIT_MS",
        5,
        "longest a request waits for others to join its forward pass, milliseconds; 0 = never",
    ),
    Variable(
        "request_threads",
        "SAGEMAKER_MODEL_SERVER_THREADS",
        None,
        "concurrent requests per worker (enough for batches to fill)",
        shown="max(16, 2 x batch)",
    ),
    Variable(
        "torch_threads",
        "SAGEMAKER_TORCH_THREADS",
        None,
        "torch CPU threads per worker (so that workers do not oversubscribe the cores)",
        shown="cores / workers",
    ),
    Variable(
        "precision",
        "SAGEMAKER_MODEL_PRECISION",
        PRECISIONS[0],
        "`fp32`, `bf16` (batch norm folded, bfloat16 weights, channels-last; only with native bf16: "
        "AVX-512 BF16 or AMX, else fp32 with a warning), `int8` (torch.ao FX static quantization, x86 "
        "backend, calibrated on the artifact's `calibration/*.jpg`, which training writes; without them "
        "fp32 with a warning; CPU only), `fp16` (GPU only)",
    ),
    Variable(
        "compile",
        "SAGEMAKER_MODEL_COMPILE",
        COMPILE_MODES[0],
        "`jit`: torch.jit.trace + freeze at load (folds batch norm, fuses oneDNN ops; CPU only; "
        "needs no C++ compiler, unlike torch.compile)",
    ),
    Variable(
        "runtime",
        "SAGEMAKER_MODEL_RUNTIME",
        RUNTIMES[0],
        "`torch`, `openvino` (fp32, bf16 by its precision hint, int8 by FakeQuantize calibrated on the "
        "artifact's `calibration/*.jpg`), `onnxruntime` (fp32; its packages are not in the CPU image): "
        "converted once at start-up and checked against fp32 torch, else torch with a warning "
        "([Runtimes](#runtimes))",
    ),
    Variable(
        "cpu_flags",
        "SAGEMAKER_CPU_FLAGS",
        None,
        "the instruction sets the precision is chosen by (tests set it)",
        shown="read from /proc/cpuinfo",
    ),
    Variable(
        "multi_model",
        "SAGEMAKER_MULTI_MODEL",
        False,
        "true: a multi-model endpoint ([Multi-model endpoints](multi-model.md)): models are loaded "
        "through `POST /models`, none from the model directory",
    ),
    Variable(
        "multi_model_root",
        "SAGEMAKER_MULTI_MODEL_ROOT",
        "/opt/ml/models",
        "multi-model: every model's `url` must resolve (links followed) inside it; the default is where "
        "SageMaker puts them",
    ),
    Variable(
        "model_memory_budget_mb",
        "SAGEMAKER_MODEL_MEMORY_BUDGET_MB",
        None,
        "multi-model: memory one worker's models may take (multi_model.model_cost); the least recently "
        "used are unloaded above it",
        shown="half of memory / workers",
    ),
    Variable(
        "async_inference",
        "SAGEMAKER_ASYNC_INFERENCE",
        False,
        "true: an asynchronous endpoint ([Asynchronous inference](async-inference.md)): `/invocations` also "
        "takes a zip, a tar or JSON lines of images and answers one JSON line per image",
    ),
    Variable(
        "async_max_payload_mb",
        "SAGEMAKER_ASYNC_MAX_PAYLOAD_IN_MB",
        1024,
        "asynchronous: request size limit (413 above it; SageMaker's own is 1 GB), and the most an archive's "
        "images may unpack to, together",
    ),
    Variable(
        "async_max_images",
        "SAGEMAKER_ASYNC_MAX_IMAGES_PER_REQUEST",
        100_000,
        "asynchronous: archive members (folders and links included) or lines in one request (413 above it, "
        "before any image is read)",
    ),
    Variable(
        "async_timeout_s",
        "SAGEMAKER_ASYNC_REQUEST_TIMEOUT_S",
        3600,
        "asynchronous: the whole request, body and answer, seconds (SageMaker's longest is 3600); images "
        "still unread then get one closing error line",
    ),
    Variable(
        "run_dir",
        "SAGEMAKER_SERVER_RUN_DIR",
        None,
        "scratch: the model registry and metric files; a new or empty folder, or one this server marked "
        "as its own (emptied at start, rundir.py); one holding other files is refused",
        shown="/tmp/byoc-serve-PORT",
    ),
    Variable(
        "metrics_dir",
        "PROMETHEUS_MULTIPROC_DIR",
        None,
        "prometheus_client's per-worker files; the same rule as the run folder",
        shown="RUN_DIR/metrics",
    ),
)
VARIABLE = {variable.field: variable for variable in VARIABLES}


def _export(value) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


@dataclass(frozen=True)
class Settings:
    """What the server runs with; each field is set by its VARIABLES record."""

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
    max_images_per_request: int
    max_pixels_per_request: int
    decode_pixels_per_worker: int
    decode_wait_s: int
    body_read_timeout_s: int
    predict_timeout_s: int
    precision: str
    compile: str
    runtime: str
    cpu_flags: str  # space-separated, only PRECISION_FLAGS
    multi_model: bool
    multi_model_root: str
    model_memory_budget_mb: int
    async_inference: bool
    async_max_payload_mb: int
    async_max_images: int
    async_timeout_s: int
    run_dir: str
    metrics_dir: str
    cuda_visible_devices: str

    @property
    def max_payload_bytes(self) -> int:
        return self.max_payload_mb * 1024 * 1024

    @property
    def async_max_payload_bytes(self) -> int:
        return self.async_max_payload_mb << 20

    @property
    def model_memory_budget_bytes(self) -> int:
        return self.model_memory_budget_mb << 20

    @property
    def registry_dir(self) -> str:
        return os.path.join(self.run_dir, "models")

    @classmethod
    def from_env(cls, env=os.environ) -> Settings:
        """Raises ValueError naming the variable that is not a valid number."""
        model_dir = _string(env, "model_dir")
        multi_model = _bool(env, "multi_model")
        gpus = _int(env, "gpus", minimum=0)
        gpus = count_gpus() if gpus is None else gpus
        cores = cpu_cores()
        weights = 0 if multi_model else model_bytes(model_dir)
        workers = _int(env, "workers", minimum=1)
        if workers is None:
            workers = gpus or cpu_workers(cores, memory_bytes(), weights)
        batch_size = _count(env, "batch_size", minimum=1)
        port = _count(env, "port", minimum=1)
        run_dir = _string(env, "run_dir", blank=os.path.join(tempfile.gettempdir(), f"byoc-serve-{port}"))
        default_budget = max(1, (memory_bytes() // workers - WORKER_BASE_BYTES) // 2 >> 20)
        flags = _text(env, "cpu_flags")
        return cls(
            model_dir=model_dir,
            host=_string(env, "host"),
            port=port,
            workers=workers,
            timeout=_count(env, "timeout", minimum=1),
            max_payload_mb=_count(env, "max_payload_mb", minimum=1),
            batch_size=batch_size,
            batch_wait_ms=_count(env, "batch_wait_ms", minimum=0),
            request_threads=_count(env, "request_threads", minimum=1, computed=max(16, 2 * batch_size)),
            torch_threads=_count(env, "torch_threads", minimum=1, computed=max(1, cores // workers)),
            gpus=gpus,
            max_images_per_request=_count(env, "max_images_per_request", minimum=1),
            max_pixels_per_request=_count(env, "max_pixels_per_request", minimum=1),
            decode_pixels_per_worker=_count(
                env, "decode_pixels_per_worker", minimum=1, computed=decode_pixels_per_worker(workers, weights)
            ),
            decode_wait_s=_count(env, "decode_wait_s", minimum=0),
            body_read_timeout_s=_count(env, "body_read_timeout_s", minimum=1),
            predict_timeout_s=_count(env, "predict_timeout_s", minimum=1),
            precision=_choice(env, "precision", PRECISIONS),
            compile=_choice(env, "compile", COMPILE_MODES),
            runtime=_choice(env, "runtime", RUNTIMES),
            cpu_flags=cpu_flags() if flags is None else " ".join(sorted(set(flags.split()) & set(PRECISION_FLAGS))),
            multi_model=multi_model,
            multi_model_root=_string(env, "multi_model_root", blank=str(VARIABLE["multi_model_root"].default)),
            model_memory_budget_mb=_count(env, "model_memory_budget_mb", minimum=1, computed=default_budget),
            async_inference=_bool(env, "async_inference"),
            async_max_payload_mb=_count(env, "async_max_payload_mb", minimum=1),
            async_max_images=_count(env, "async_max_images", minimum=1),
            async_timeout_s=_count(env, "async_timeout_s", minimum=1),
            run_dir=run_dir,
            metrics_dir=_string(env, "metrics_dir", blank=os.path.join(run_dir, "metrics")),
            cuda_visible_devices=_string(env, "cuda_visible_devices"),
        )

    def to_env(self) -> dict[str, str]:
        env = {variable.name: _export(getattr(self, variable.field)) for variable in VARIABLES}
        if not self.cuda_visible_devices:
            del env[VARIABLE["cuda_visible_devices"].name]  # set but empty would hide every GPU
        return env


def _text(env, field: str, blank: str | None = None) -> str | None:
    """The variable as it is set, else its default; with `blank`, set but empty counts as unset
    and `blank` is the default."""
    variable = VARIABLE[field]
    if blank is not None:
        return env.get(variable.name) or blank
    default = variable.default
    return env.get(variable.name, default if isinstance(default, str) else None)


def _count(env, field: str, minimum: int, computed: int | None = None) -> int:
    """_int for a variable that always has a value (its default or `computed`)."""
    value = _int(env, field, minimum, computed)
    if value is None:
        raise LookupError(f"{VARIABLE[field].name} has no default")  # a record without one: a bug here
    return value


def _string(env, field: str, blank: str | None = None) -> str:
    """_text for a variable that always has a value."""
    value = _text(env, field, blank)
    if value is None:
        raise LookupError(f"{VARIABLE[field].name} has no default")
    return value


def _bool(env, field: str) -> bool:
    name = VARIABLE[field].name
    text = env.get(name, "").strip().lower()
    if text in ("", "false", "0", "no"):
        return False
    if text in ("true", "1", "yes"):
        return True
    raise ValueError(f"{name}={text!r}: expected true or false")


def _int(env, field: str, minimum: int, computed: int | None = None) -> int | None:
    """The variable as a whole number >= minimum; unset: its default, else `computed`, else None."""
    variable = VARIABLE[field]
    text = env.get(variable.name, "").strip()
    if not text:
        return variable.default if isinstance(variable.default, int) else computed
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise ValueError(f"{variable.name}={text!r}: expected a whole number >= {minimum}")
    return value


def _choice(env, field: str, choices: tuple[str, ...]) -> str:
    variable = VARIABLE[field]
    text = env.get(variable.name, "").strip().lower() or variable.default
    if text not in choices:
        raise ValueError(f"{variable.name}={text!r}: expected one of {', '.join(choices)}")
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


def decode_pixels_per_worker(workers: int, weights: int, memory: int | None = None) -> int:
    """Three quarters of what memory (default: memory_bytes()) leaves each worker beyond its
    base and its model, in decoded pixels; at least one image of 1000x1000."""
    spare = (memory_bytes() if memory is None else memory) // workers - WORKER_BASE_BYTES - WEIGHTS_FACTOR * weights
    return max(1_000_000, spare * 3 // 4 // DECODE_BYTES_PER_PIXEL)
