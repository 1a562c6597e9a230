"""The HTTP side of an asynchronous request (SAGEMAKER_ASYNC_INFERENCE=true): a zip, a tar or
JSON lines of images in, one JSON line per image out, streamed as each chunk is classified.

SageMaker's asynchronous endpoints fetch the request from S3, POST it to /invocations and write
the answer to S3: up to 1 GB, up to an hour. So the body is spooled to an unnamed file in the
server's scratch folder (zip needs random access; nothing of it stays in memory), bounded in bytes
(SAGEMAKER_ASYNC_MAX_PAYLOAD_IN_MB) and, with the answer, in time
(SAGEMAKER_ASYNC_REQUEST_TIMEOUT_S). Whatever is wrong with the request as a whole (its size, its
count of images, a malformed archive, a bad Accept or top_k) is a 4xx before the first line; once
lines flow the status is 200, and an image's own fault is its own line (async_inference.py). A
fault of the server's after that is a closing line {"error": "internal server error (request id
...)"}, with the traceback in the log under that id.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from flask import Request, Response

from server import async_input
from server.async_inference import answer_lines, line
from server.errors import RequestError, UnsupportedAccept
from server.handlers import media_type
from server.parsing import shown
from server.service import requested_top_k
from server.settings import VARIABLE, Settings
from server.spool_room import SpoolRoom
from server.transport import CUSTOM_ATTRIBUTES_HEADER, copy_body

ANSWER_TYPE = async_input.JSON_LINES
ACCEPTED = frozenset({"", "*/*", "application/*", "application/json", *async_input.JSON_LINES_ALIASES})
log = logging.getLogger(__name__)


def is_async_request(request: Request) -> bool:
    return media_type(request.headers.get("Content-Type")) in async_input.KINDS


def invoke_async(service, settings: Settings, request: Request) -> Response:
    deadline = time.monotonic() + settings.async_timeout_s
    accept = request.headers.get("Accept")
    if not any(media_type(item) in ACCEPTED for item in (accept or "").split(",")):
        raise UnsupportedAccept(
            f"cannot answer with {shown(accept or '', 80)}: an asynchronous answer is {ANSWER_TYPE}"
        )
    top_k = requested_top_k(request.headers.get(CUSTOM_ATTRIBUTES_HEADER))
    limits = async_input.Limits(
        max_entries=settings.async_max_images,
        max_image_bytes=settings.max_payload_bytes,
        max_total_bytes=settings.async_max_payload_bytes,
    )
    declared = request.content_length
    room = min(declared, settings.async_max_payload_bytes) if declared is not None else settings.async_max_payload_bytes
    ticket = SpoolRoom(settings.run_dir).take(room)
    try:
        spool = tempfile.TemporaryFile(dir=settings.run_dir)  # unnamed: gone with its last descriptor
    except BaseException:
        SpoolRoom.give_back(ticket)
        raise
    try:
        size = copy_body(
            spool.write,
            settings.async_max_payload_bytes,
            settings.async_timeout_s,
            VARIABLE["async_max_payload_mb"].name,
            VARIABLE["async_timeout_s"].name,
        )
        if not size:
            raise RequestError("empty request body")
        entries = async_input.entries(media_type(request.headers.get("Content-Type")), spool, limits)
    except BaseException:
        spool.close()
        SpoolRoom.give_back(ticket)
        raise
    lines = answer_lines(service, entries, top_k, deadline, settings.async_timeout_s)
    release = _release_once(spool, ticket)
    response = Response(_closing(lines, release), content_type=ANSWER_TYPE)
    # also when the stream never starts (the client gone before the first line): a generator not yet
    # started runs no `finally` when closed
    response.call_on_close(release)
    return response


def _release_once(spool, ticket: Path):
    """Closes the spooled body and gives its disk room back, the first time it is called."""
    done = threading.Event()

    def release() -> None:
        if not done.is_set():
            done.set()
            spool.close()
            SpoolRoom.give_back(ticket)

    return release


def _closing(lines: Iterator[bytes], release) -> Iterator[bytes]:
    """The lines, then the spooled body closed, however the stream ends (the client gone too)."""
    try:
        yield from lines
    except Exception:
        request_id = uuid.uuid4().hex
        log.exception("asynchronous request %s failed", request_id)
        yield line(error=f"internal server error (request id {request_id}, in the server's log)")
    finally:
        release()
