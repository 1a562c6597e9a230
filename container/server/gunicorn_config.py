"""gunicorn's configuration for `serve` (gunicorn -c python:server.gunicorn_config)."""

import logging
import os
from collections import Counter

from server import rundir
from server.settings import SHUTDOWN_GRACE_S, Settings

_settings = Settings.from_env()
# Before server.metrics is imported (below): prometheus_client opens its files as metrics are defined.
rundir.prepare(_settings)

from server import allocator, metrics, preload, read_deadline  # noqa: E402
from server.app import LOG_FORMAT  # noqa: E402

logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)

wsgi_app = "server.app:create_app()"
bind = f"{_settings.host}:{_settings.port}"
workers = _settings.workers
# gthread: one worker serves several requests at once, which is what lets
# the dynamic batcher put them into one forward pass.
worker_class = "gthread"
threads = _settings.request_threads
# Workers heartbeat while they warm up (preload.start_in_worker) and the
# master loads the model before any worker exists, so this timeout catches
# hung workers, not slow model loading.
timeout = _settings.timeout
# On SIGTERM, in-flight requests may finish: the server is gone before
# SageMaker's SIGKILL, 30 s after its SIGTERM.
graceful_timeout = SHUTDOWN_GRACE_S
# gunicornc's control socket: nothing in a container uses it, and two
# servers on one host (tests) would share its default path.
control_socket_disable = True
errorlog = "-"
loglevel = "info"


def when_ready(server):
    # The master, listening, before it forks any worker: load the model once.
    # A multi-model endpoint starts with none (POST /models loads them in the workers).
    if not _settings.multi_model:
        preload.load_while_answering(server, _settings)


def post_worker_init(worker):
    # A worker, before its first accept.
    read_deadline.bound_header_reads(_settings.body_read_timeout_s)
    if allocator.start_background_purging():
        logging.getLogger(__name__).info("worker %d: jemalloc returns idle memory in the background", worker.pid)
    if _settings.multi_model:
        preload.set_torch_threads(_settings)
    else:
        preload.start_in_worker(_settings, worker.notify)


def child_exit(server, worker):
    # The master, after a worker exited: its live gauges leave /metrics.
    metrics.worker_exited(worker.pid, _settings.metrics_dir)


def on_exit(server):
    # The master, after gunicorn's stop(): a worker still listed outlived the grace period and was sent
    # SIGKILL a moment ago, and stop() looked once for its exit without waiting. Wait for it (bounded:
    # SageMaker's SIGKILL comes 30 s after its SIGTERM), so no worker outlives the master, orphaned
    # with the model's memory (and a GPU) or left a zombie, and none still writes to the scratch
    # folder removed next.
    import time

    deadline = time.monotonic() + 4
    for pid in list(server.WORKERS):
        try:
            while not os.waitpid(pid, os.WNOHANG)[0] and time.monotonic() < deadline:
                time.sleep(0.02)
        except ChildProcessError:
            pass  # reaped already
    rundir.remove(_settings)


def pre_fork(server, worker):
    # Runs in the master, which knows the live workers: one GPU each, or the
    # least shared GPU when there are more workers than GPUs.
    if _settings.gpus:
        in_use = Counter(getattr(other, "gpu", None) for other in server.WORKERS.values())
        worker.gpu = min(range(_settings.gpus), key=lambda gpu: in_use[gpu])


def post_fork(server, worker):
    # Before the worker imports torch: the worker then sees its GPU as cuda:0.
    if _settings.gpus:
        visible = _settings.cuda_visible_devices
        devices = visible.split(",") if visible else [str(gpu) for gpu in range(_settings.gpus)]
        os.environ["CUDA_VISIBLE_DEVICES"] = devices[worker.gpu]
