"""Prometheus metrics, served as text on GET /metrics (what SageMaker inference
components' ContainerMetricsConfig scrapes), summed over gunicorn's workers.

prometheus_client's multiprocess mode: each process writes its samples to its
own files under PROMETHEUS_MULTIPROC_DIR (settings.py exports it before this
module is first imported, so every metric below is a file-backed one); a scrape
in any worker reads them all. rundir.py empties the directory when the server
starts (stale files would be counted), `worker_exited` drops a dead worker's
live gauges. Outside a server (unit tests) the metrics live in the
process.

The metrics are the objects below and `_ModelsLoaded`; their help strings are
docs/serving.md's table (scripts/docs_tables.py generates it from them).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import GaugeMetricFamily

# Whether prometheus_client found PROMETHEUS_MULTIPROC_DIR when it was imported.
MULTIPROCESS = values.ValueClass is not values.MutexValue

# Bounded label values: a client cannot grow the series count with odd headers.
KNOWN_CONTENT_TYPES = frozenset(
    {
        "image/jpeg",
        "image/png",
        "application/x-image",
        "image/webp",
        "image/bmp",
        "image/gif",
        "image/tiff",
        "application/json",
        "application/x-npy",
        "",
    }
)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

REQUESTS = Counter(
    "byoc_requests",
    "HTTP requests answered; route: the URL rule (/invocations, /models/<name>/invoke, ...), status: the "
    "HTTP code sent, content_type: the request's media type (image/jpeg, application/json, ...; others as other)",
    ["route", "status", "content_type"],
)
REQUEST_SECONDS = Histogram(
    "byoc_request_seconds", "Time from a request's start to its answer", ["route"], buckets=LATENCY_BUCKETS
)
FORWARD_BATCH_SIZE = Histogram(
    "byoc_forward_batch_size", "Images in one forward pass (dynamic batching)", buckets=BATCH_BUCKETS
)
QUEUE_WAIT_SECONDS = Histogram(
    "byoc_queue_wait_seconds", "Wait of a request for its forward pass to start", buckets=LATENCY_BUCKETS
)
MODEL_LOAD_SECONDS = Histogram(
    "byoc_model_load_seconds",
    "Loading one model (model_fn), warm-up included",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
MODELS_IN_MEMORY = Gauge(
    "byoc_models_in_memory", "Multi-model: models held in memory, all workers together", multiprocess_mode="livesum"
)
MODEL_EVICTIONS = Counter("byoc_model_evictions", "Multi-model: models a worker unloaded for the memory budget")


def content_type_label(header: str | None) -> str:
    kind = (header or "").split(";", 1)[0].strip().lower()
    return kind if kind in KNOWN_CONTENT_TYPES else "other"


def worker_exited(pid: int, metrics_dir: str) -> None:
    if MULTIPROCESS:
        multiprocess.mark_process_dead(pid, metrics_dir)


class _ModelsLoaded:
    """byoc_models_loaded, read from the multi-model registry at scrape time:
    the registry is the truth every worker shares."""

    def __init__(self, count: Callable[[], int]):
        self.count = count

    def collect(self):
        yield GaugeMetricFamily(
            "byoc_models_loaded",
            "Multi-model: models loaded (POST /models), read from the registry",
            value=self.count(),
        )


def exposition(models_loaded: Callable[[], int] | None = None) -> tuple[bytes, str]:
    """-> (the text format of every process's metrics, its content type)."""
    registry = REGISTRY
    if MULTIPROCESS:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    body = generate_latest(registry)
    if models_loaded is not None:
        extra = CollectorRegistry()
        extra.register(_ModelsLoaded(models_loaded))
        body += generate_latest(extra)
    return body, CONTENT_TYPE_LATEST
