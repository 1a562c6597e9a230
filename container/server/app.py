"""The HTTP side of SageMaker's hosting contract (Flask, run by gunicorn):

    GET  /ping                  200: the model is loaded and warmed; 500 if loading
                                failed (while the master loads, it answers 503 itself);
                                a multi-model endpoint: 200 (it starts with no model)
    POST /invocations           request -> handler stages (service.py) -> response;
                                asynchronous (SAGEMAKER_ASYNC_INFERENCE): a zip, tar or
                                JSON lines of images -> JSON lines (async_transport.py)
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

import logging
import time

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from server import metrics
from server.async_transport import invoke_async, is_async_request
from server.errors import Overloaded, RequestError
from server.preload import MODEL
from server.settings import Settings
from server.transport import TARGET_MODEL_HEADER, error_response, internal_error, invoke

LOG_FORMAT = "%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s"
log = logging.getLogger(__name__)


def unavailable() -> tuple[Response, int]:
    # MODEL.failure (exception text: paths, file names) is in the log already (preload.py)
    return error_response(500, "the model failed to load: the server's log says why")


def create_app(settings: Settings) -> Flask:
    """The app of one worker, with the settings its master read (master.py): none read here."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
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
        if settings.async_inference and is_async_request(request):
            return invoke_async(MODEL.service, settings, request)
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
        code = exc.code or 500  # werkzeug's own exceptions all have one
        return internal_error(exc) if code >= 500 else error_response(code, exc.description or "")

    @app.errorhandler(Exception)
    def server_error(exc: Exception):
        return internal_error(exc)

    return app
