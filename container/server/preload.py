"""The model is loaded once, in gunicorn's master, before it forks the workers.

So the workers share the weights' pages (copy-on-write), and a worker takes
its first connection only once it can answer /invocations: /ping 200 from
any worker means every worker is ready (gunicorn_config.py calls these):

    load_while_answering  master, listeners bound, no worker yet: loads the
                          model in a thread and meanwhile answers every
                          connection itself, 503 "the model is loading"
    start_in_worker       each worker, before its first accept: the model on
                          its device, the batcher's thread, warm-up passes;
                          on a GPU host the whole load (user code included),
                          so CUDA starts in the workers only

Fork safety: libgomp (torch's OpenMP) does not survive a fork once its thread
pool has run, and a child's next parallel region then hangs for ever. So the
master loads with one torch thread, which never starts the pool, and runs no
forward pass; each worker sets its own thread count and warms up after the fork.

A model that fails to load does not stop the server (gunicorn would exit and
the container restart in a loop): the workers start anyway and answer /ping
and /invocations with 500 and the reason.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from server import children
from server.settings import Settings

if TYPE_CHECKING:
    from server.service import InferenceService

LOADING_REASON = "the model is loading"
log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    service: InferenceService | None = None
    failure: str | None = None


# Filled in by the master; every worker inherits it through the fork.
MODEL = LoadedModel()


def load(settings: Settings) -> None:
    """In the master: fills MODEL.service, or MODEL.failure with the reason; never raises.

    Not on a GPU host: a user's inference.py often asks torch.cuda at import (is_available(), a
    device), and CUDA started in the master does not survive the fork; the fp16/bf16 check must run
    on the GPU the model will serve on too. There each worker loads after the fork (start_in_worker)."""
    if settings.gpus:
        log.info("a GPU host: each worker loads the model and its code on its own GPU")
        return
    import torch

    torch.set_num_threads(1)  # no OpenMP pool in the master: see the module's docstring
    build(settings)


def build(settings: Settings) -> None:
    """MODEL.service, or MODEL.failure with the reason; never raises."""
    from server.metrics import MODEL_LOAD_SECONDS
    from server.service import InferenceService

    started = time.monotonic()
    try:
        MODEL.service = InferenceService(settings.model_dir, settings)
    except Exception as exc:
        log.exception("loading the model from %s failed", settings.model_dir)
        MODEL.failure = f"{type(exc).__name__}: {exc}"
    else:
        MODEL_LOAD_SECONDS.observe(time.monotonic() - started)
        log.info("model from %s loaded in %.2f s", settings.model_dir, time.monotonic() - started)


def set_torch_threads(settings: Settings) -> None:
    """Process-wide, the batchers' threads included: workers do not oversubscribe the cores."""
    import torch

    torch.set_num_threads(settings.torch_threads)


def load_while_answering(server, settings: Settings) -> None:
    """In the master (gunicorn's when_ready): load, answering 503 until done."""
    loader = threading.Thread(target=load, args=(settings,), name="model-loader", daemon=True)
    loader.start()
    listeners = [listener.sock for listener in server.LISTENERS]
    # gunicorn's own handlers only queue a signal for its main loop, which
    # starts after this: until then a stop (docker stop, SageMaker) ends here.
    stop_signals = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
    stopped = threading.Event()
    gunicorn_handlers = {sig: signal.signal(sig, lambda *_: stopped.set()) for sig in stop_signals}
    while loader.is_alive():
        if stopped.is_set():
            log.info("stopped while loading the model")
            children.kill_all()  # a converter (runtimes/) would go on without its master
            os._exit(0)  # the loader thread may be inside torch: no interpreter teardown
        readable, _, _ = select.select(listeners, [], [], 0.1)
        for listener in readable:
            try:
                connection, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                continue  # another process took it
            answer_loading(connection, settings.max_payload_bytes)
    for sig, handler in gunicorn_handlers.items():
        signal.signal(sig, handler)
    # Workers forked from here share these objects' pages: keep the garbage
    # collector of each worker from writing to (and so copying) all of them.
    gc.collect()
    gc.freeze()


def answer_loading(connection: socket.socket, max_body_bytes: int) -> None:
    """One HTTP answer, 503 with a JSON reason, to whatever was asked; then close.
    Each step is bounded in time and bytes, so no client holds the master up."""
    body = json.dumps({"error": LOADING_REASON}).encode()
    response = (
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
    )
    deadline = time.monotonic() + 2.0
    with connection:
        try:
            connection.settimeout(1.0)
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536 and time.monotonic() < deadline:
                chunk = connection.recv(65536)
                if not chunk:
                    return
                head += chunk
            connection.sendall(response)
            connection.shutdown(socket.SHUT_WR)
            # Read what the client still sends (a body), so closing does not
            # reset the connection before the client has read the answer.
            drained = 0
            while drained <= max_body_bytes and time.monotonic() < deadline:
                chunk = connection.recv(65536)
                if not chunk:
                    break
                drained += len(chunk)
        except OSError:
            pass


def start_in_worker(settings: Settings, heartbeat: Callable[[], None]) -> None:
    """In each worker, before its first accept (gunicorn's post_worker_init).
    `heartbeat` tells gunicorn's master the worker lives while this runs."""
    if MODEL.service is None and not settings.gpus:
        return  # loading failed: the worker answers with the reason
    set_torch_threads(settings)
    done = threading.Event()

    def beat() -> None:
        while not done.wait(1.0):
            heartbeat()

    threading.Thread(target=beat, name="heartbeat", daemon=True).start()
    try:
        if MODEL.service is None:  # a GPU host: loaded here, after the fork (see load)
            build(settings)
        if MODEL.service is None:
            return  # loading failed: the worker answers with the reason
        MODEL.service.start_in_worker()
    except Exception as exc:
        log.exception("starting the model in worker %d failed", os.getpid())
        MODEL.service, MODEL.failure = None, f"{type(exc).__name__}: {exc}"
    else:
        log.info("worker %d ready", os.getpid())
    finally:
        done.set()
