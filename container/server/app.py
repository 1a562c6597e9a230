"""The HTTP side of SageMaker's hosting contract (Flask, run by gunicorn):

    GET  /ping                  200 once the model is loaded and warmed,
                                503 while it loads, 500 if loading failed
    POST /invocations           request -> handler stages (service.py) -> response
    GET  /execution-parameters  batch transform's defaults for this container

Every error is JSON {"error": reason}, and none ends the worker.
"""
from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from server.errors import RequestError
from server.settings import Settings

if TYPE_CHECKING:
    from server.service import InferenceService

CUSTOM_ATTRIBUTES_HEADER = "X-Amzn-SageMaker-Custom-Attributes"
log = logging.getLogger(__name__)


def error_response(status: int, reason: str) -> tuple[Response, int]:
    return jsonify(error=reason), status


def read_body(max_bytes: int) -> bytes:
    """The request body; 413 from its Content-Length before reading, or, for
    a chunked body, as soon as more than `max_bytes` arrived. (Werkzeug's
    MAX_CONTENT_LENGTH would silently cut a chunked body at the limit.)"""
    too_large = RequestEntityTooLarge(f"payload larger than {max_bytes >> 20} MB (SAGEMAKER_MAX_PAYLOAD_IN_MB)")
    if (request.content_length or 0) > max_bytes:
        raise too_large
    stream = request.environ["wsgi.input"]  # gunicorn ends it at Content-Length or the last chunk
    body = bytearray()
    while len(body) <= max_bytes:
        chunk = stream.read(min(1 << 16, max_bytes + 1 - len(body)))
        if not chunk:
            return bytes(body)
        body += chunk
    raise too_large


class ModelLoader:
    """Loads the model in a thread, so the worker answers /ping at once and
    keeps heartbeating to gunicorn's master however long loading takes."""

    def __init__(self, settings: Settings):
        self.service: InferenceService | None = None
        self.failure: str | None = None
        threading.Thread(target=self._load, args=(settings,), name="model-loader", daemon=True).start()

    def _load(self, settings: Settings) -> None:
        # torch is imported here, not by the worker's main thread: from a cold
        # disk that takes long enough to matter for /ping and the heartbeat.
        import torch

        from server.service import InferenceService

        torch.set_num_threads(settings.torch_threads)  # process-wide, the model thread included
        try:
            service = InferenceService(settings.model_dir, settings.batch_size, settings.batch_wait_ms)
        except Exception as exc:
            log.exception("loading the model from %s failed", settings.model_dir)
            self.failure = f"{type(exc).__name__}: {exc}"
        else:
            log.info("model from %s ready", settings.model_dir)
            self.service = service

    def unavailable(self) -> tuple[Response, int]:
        if self.failure:
            return error_response(500, f"the model failed to load: {self.failure}")
        return error_response(503, "the model is loading")


def create_app(settings: Settings | None = None) -> Flask:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s")
    settings = settings or Settings.from_env()
    loader = ModelLoader(settings)
    app = Flask(__name__)

    @app.get("/ping")
    def ping():
        return ("", 200) if loader.service else loader.unavailable()

    @app.post("/invocations")
    def invocations():
        service = loader.service
        if service is None:
            return loader.unavailable()
        body, content_type = service.invoke(
            read_body(settings.max_payload_bytes), request.headers.get("Content-Type"),
            request.headers.get("Accept"), request.headers.get(CUSTOM_ATTRIBUTES_HEADER))
        return Response(body, content_type=content_type)

    @app.get("/execution-parameters")
    def execution_parameters():
        # SINGLE_RECORD: SageMaker local mode raises on MULTI_RECORD unless the
        # caller names a strategy itself; every record is one request anyway.
        return jsonify(MaxConcurrentTransforms=settings.workers, BatchStrategy="SINGLE_RECORD",
                       MaxPayloadInMB=settings.max_payload_mb)

    @app.errorhandler(RequestError)
    def client_error(exc: RequestError):
        return error_response(exc.status, str(exc))

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return error_response(exc.code, exc.description)

    @app.errorhandler(Exception)
    def server_error(exc: Exception):
        log.exception("invocation failed")
        return error_response(500, f"{type(exc).__name__}: {exc}")

    return app
