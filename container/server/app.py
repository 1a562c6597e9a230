"""The HTTP side of SageMaker's hosting contract (Flask, run by gunicorn):

    GET  /ping                  200: the model is loaded and warmed; 500 if loading
                                failed (while the master loads, it answers 503 itself);
                                a multi-model endpoint: 200 (it starts with no model)
    POST /invocations           request -> handler stages (service.py) -> response;
                                X-Forward-Batch-Size: images in the forward pass
                                that served it (dynamic batching, batching.py).
                                Multi-model: the model named by X-Amzn-SageMaker-Target-Model
    GET  /execution-parameters  batch transform's defaults for this container
    GET  /metrics               Prometheus text format, all workers (metrics.py)
    /models...                  multi-model endpoints only (multi_model_routes.py)

A single model comes loaded from gunicorn's master (preload.py): a worker takes
connections only once it can answer /invocations.
Every error is JSON {"error": reason}, and none ends the worker. A 4xx says what
was wrong with the request; a 500 says only a request id, which the log line
holding the traceback also has (no exception text: it can name paths).
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge, RequestTimeout

from server import metrics
from server.errors import Overloaded, RequestError
from server.preload import MODEL
from server.read_deadline import READ_DEADLINES
from server.settings import Settings

CUSTOM_ATTRIBUTES_HEADER = "X-Amzn-SageMaker-Custom-Attributes"
TARGET_MODEL_HEADER = "X-Amzn-SageMaker-Target-Model"
BATCH_SIZE_HEADER = "X-Forward-Batch-Size"
REQUEST_ID_HEADER = "X-Request-Id"  # on a 500: the log line with its traceback
LOG_FORMAT = "%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s"
log = logging.getLogger(__name__)


def error_response(status: int, reason: str) -> tuple[Response, int]:
    return jsonify(error=reason), status


def read_body(max_bytes: int, timeout_s: float = Settings.body_read_timeout_s) -> bytes:
    """The request body; 413 from its Content-Length before reading, or, for
    a chunked body, as soon as more than `max_bytes` arrived. (Werkzeug's
    MAX_CONTENT_LENGTH would silently cut a chunked body at the limit.)
    408 when the whole body has not arrived within `timeout_s` (read_deadline.py)."""
    too_large = RequestEntityTooLarge(f"payload larger than {max_bytes >> 20} MB (SAGEMAKER_MAX_PAYLOAD_IN_MB)")
    if (request.content_length or 0) > max_bytes:
        raise too_large
    stream = request.environ["wsgi.input"]  # gunicorn ends it at Content-Length or the last chunk
    connection = request.environ.get("gunicorn.socket")
    body = bytearray()
    with READ_DEADLINES.watching(connection, timeout_s) if connection else contextlib.nullcontext() as watch:
        while len(body) <= max_bytes:
            chunk = stream.read(min(1 << 16, max_bytes + 1 - len(body)))
            if watch is not None and watch.expired:  # what came is cut short: no body
                raise RequestTimeout(
                    f"the request body did not arrive within {timeout_s:g} s (SAGEMAKER_BODY_READ_TIMEOUT_S)"
                )
            if not chunk:
                return bytes(body)
            body += chunk
    raise too_large


def unavailable() -> tuple[Response, int]:
    # MODEL.failure (exception text: paths, file names) is in the log already (preload.py)
    return error_response(500, "the model failed to load: the server's log says why")


def internal_error(exc: BaseException) -> tuple[Response, int]:
    """A 500 that says nothing of the server's insides: the traceback goes to the log
    under a request id, which the client gets to quote."""
    request_id = uuid.uuid4().hex
    log.error("request %s (%s %r) failed", request_id, request.method, request.path, exc_info=exc)
    response, status = error_response(500, f"internal server error (request id {request_id}, in the server's log)")
    response.headers[REQUEST_ID_HEADER] = request_id
    return response, status


def invoke(service, settings: Settings) -> Response:
    """One request through `service`'s handler stages."""
    body, content_type = service.invoke(
        read_body(settings.max_payload_bytes, settings.body_read_timeout_s),
        request.headers.get("Content-Type"),
        request.headers.get("Accept"),
        request.headers.get(CUSTOM_ATTRIBUTES_HEADER),
    )
    response = Response(body, content_type=content_type)
    batch_size = service.last_batch_size()
    if batch_size is not None:
        response.headers[BATCH_SIZE_HEADER] = str(batch_size)
    return response


def create_app(settings: Settings | None = None) -> Flask:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    settings = settings or Settings.from_env()
    app = Flask(__name__)
    models = None
    if settings.multi_model:
        from server import multi_model_routes

        models = multi_model_routes.add_routes(app, settings)

    @app.before_request
    def start_clock():
        g.started = time.perf_counter()

    @app.after_request
    def count(response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule else "unmatched"
        metrics.REQUESTS.labels(
            route, str(response.status_code), metrics.content_type_label(request.headers.get("Content-Type"))
        ).inc()
        metrics.REQUEST_SECONDS.labels(route).observe(time.perf_counter() - g.get("started", time.perf_counter()))
        return response

    @app.get("/ping")
    def ping():
        return ("", 200) if models is not None or MODEL.service else unavailable()

    @app.post("/invocations")
    def invocations():
        if models is not None:
            name = request.headers.get(TARGET_MODEL_HEADER)
            if not name:
                raise RequestError(
                    f"a multi-model endpoint needs the {TARGET_MODEL_HEADER} header (or POST /models/<name>/invoke)"
                )
            with models.using(name) as service:
                return invoke(service, settings)
        if MODEL.service is None:
            return unavailable()
        return invoke(MODEL.service, settings)

    @app.get("/execution-parameters")
    def execution_parameters():
        # SINGLE_RECORD: SageMaker local mode raises on MULTI_RECORD unless the
        # caller names a strategy itself; every record is one request anyway.
        return jsonify(
            MaxConcurrentTransforms=settings.workers,
            BatchStrategy="SINGLE_RECORD",
            MaxPayloadInMB=settings.max_payload_mb,
        )

    @app.get("/metrics")
    def prometheus_metrics():
        body, content_type = metrics.exposition((lambda: len(models.registry.ready())) if models is not None else None)
        return Response(body, content_type=content_type)

    @app.errorhandler(RequestError)
    def client_error(exc: RequestError):
        response, status = error_response(exc.status, str(exc))
        if isinstance(exc, Overloaded):
            response.headers["Retry-After"] = str(exc.retry_after_s)
        return response, status

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return internal_error(exc) if exc.code >= 500 else error_response(exc.code, exc.description)

    @app.errorhandler(Exception)
    def server_error(exc: Exception):
        return internal_error(exc)

    return app
