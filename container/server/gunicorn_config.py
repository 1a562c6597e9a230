"""gunicorn's configuration for `serve`, made from the settings the master read (server/master.py).

The hooks close over those settings: the master's run in the master, the workers' in each
worker, which inherited them through the fork; none reads the environment again."""

from __future__ import annotations

import logging
import os
from collections import Counter
from typing import Any

from server import allocator, metrics, preload, read_deadline, rundir, spool_room
from server.settings import SHUTDOWN_GRACE_S, Settings


def config(settings: Settings) -> dict[str, Any]:
    """gunicorn's settings by name (as a config file would set them), hooks included."""

    def when_ready(server):
        # The master, listening, before it forks any worker: load the model once.
        # A multi-model endpoint starts with none (POST /models loads them in the workers).
        if not settings.multi_model:
            preload.load_while_answering(server, settings)

    def post_worker_init(worker):
        # A worker, before its first accept.
        read_deadline.bound_header_reads(settings.body_read_timeout_s)
        if allocator.start_background_purging():
            logging.getLogger(__name__).info("worker %d: jemalloc returns idle memory in the background", worker.pid)
        if settings.multi_model:
            preload.set_torch_threads(settings)
        else:
            preload.start_in_worker(settings, worker.notify)

    def child_exit(server, worker):
        # The master, after a worker exited: its live gauges leave /metrics, its spooled bodies' disk room
        # is free again.
        metrics.worker_exited(worker.pid, settings.metrics_dir)
        spool_room.forget_worker(settings.run_dir, worker.pid)

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
        rundir.remove(settings)

    def pre_fork(server, worker):
        # Runs in the master, which knows the live workers: one GPU each, or the
        # least shared GPU when there are more workers than GPUs.
        if settings.gpus:
            in_use = Counter(getattr(other, "gpu", None) for other in server.WORKERS.values())
            worker.gpu = min(range(settings.gpus), key=lambda gpu: in_use[gpu])

    def post_fork(server, worker):
        # Before the worker imports torch: the worker then sees its GPU as cuda:0.
        if settings.gpus:
            visible = settings.cuda_visible_devices
            devices = visible.split(",") if visible else [str(gpu) for gpu in range(settings.gpus)]
            os.environ["CUDA_VISIBLE_DEVICES"] = devices[worker.gpu]

    return {
        "bind": f"{settings.host}:{settings.port}",
        "workers": settings.workers,
        # gthread: one worker serves several requests at once, which is what lets
        # the dynamic batcher put them into one forward pass.
        "worker_class": "gthread",
        "threads": settings.request_threads,
        # Workers heartbeat while they warm up (preload.start_in_worker) and the
        # master loads the model before any worker exists, so this timeout catches
        # hung workers, not slow model loading.
        "timeout": settings.timeout,
        # On SIGTERM, in-flight requests may finish: the server is gone before
        # SageMaker's SIGKILL, 30 s after its SIGTERM.
        "graceful_timeout": SHUTDOWN_GRACE_S,
        # gunicorn's control socket: nothing in a container uses it, and two
        # servers on one host (tests) would share its default path.
        "control_socket_disable": True,
        "errorlog": "-",
        "loglevel": "info",
        "when_ready": when_ready,
        "post_worker_init": post_worker_init,
        "child_exit": child_exit,
        "on_exit": on_exit,
        "pre_fork": pre_fork,
        "post_fork": post_fork,
    }
