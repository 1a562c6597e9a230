"""What every route shares: reading a request's body (bounded in bytes and time), one
request through a model's handler stages, and the JSON error answers. app.py (the single
model's routes) and multi_model_routes.py (the /models API) both build on it, so neither
imports the other.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable

from flask import Response, jsonify, request
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge, RequestTimeout

from server.read_deadline import READ_DEADLINES
from server.settings import VARIABLE, Settings

CUSTOM_ATTRIBUTES_HEADER = "X-Amzn-SageMaker-Custom-Attributes"
TARGET_MODEL_HEADER = "X-Amzn-SageMaker-Target-Model"
BATCH_SIZE_HEADER = "X-Forward-Batch-Size"
REQUEST_ID_HEADER = "X-Request-Id"  # on a 500: the log line with its traceback
log = logging.getLogger(__name__)


def error_response(status: int, reason: str) -> tuple[Response, int]:
    return jsonify(error=reason), status


def read_body(
    max_bytes: int,
    timeout_s: float = float(str(VARIABLE["body_read_timeout_s"].default)),
    limit: str = "SAGEMAKER_MAX_PAYLOAD_IN_MB",
) -> bytes:
    """The request body, in memory (copy_body's bounds)."""
    body = bytearray()
    copy_body(body.extend, max_bytes, timeout_s, limit)
    return bytes(body)


def copy_body(
    write: Callable[[bytes], object],
    max_bytes: int,
    timeout_s: float,
    limit: str,
    deadline: str = "SAGEMAKER_BODY_READ_TIMEOUT_S",
) -> int:
    """The request body handed to `write` 64 KB at a time; -> its size. 413 from its
    Content-Length before reading, or, for a chunked body, as soon as more than `max_bytes`
    arrived. (Werkzeug's MAX_CONTENT_LENGTH would silently cut a chunked body at the limit.)
    408 when the whole body has not arrived within `timeout_s` (read_deadline.py); 400 for a
    chunked body that breaks its encoding or stops before its last chunk."""
    size = f"{max_bytes >> 20} MB" if max_bytes >= 1 << 20 else f"{max_bytes >> 10} KB"
    too_large = RequestEntityTooLarge(f"payload larger than {size} ({limit})")
    if (request.content_length or 0) > max_bytes:
        raise too_large
    stream = request.environ["wsgi.input"]  # gunicorn ends it at Content-Length or the last chunk
    connection = request.environ.get("gunicorn.socket")
    copied = 0
    with READ_DEADLINES.watching(connection, timeout_s) if connection else contextlib.nullcontext() as watch:
        while copied <= max_bytes:
            try:
                chunk = stream.read(min(1 << 16, max_bytes + 1 - copied))
            except OSError:  # gunicorn's chunked reader: a malformed chunk, or the connection ended mid-body
                chunk = None
            if watch is not None and watch.expired:  # what came is cut short: no body
                raise RequestTimeout(f"the request body did not arrive within {timeout_s:g} s ({deadline})")
            if chunk is None:
                raise BadRequest("malformed request body: its chunked encoding is broken or it ended early")
            if not chunk:
                return copied
            write(chunk)
            copied += len(chunk)
    raise too_large


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
