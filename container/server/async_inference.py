"""An asynchronous request's images classified one chunk at a time: one JSON line per image, in
the request's order, as soon as its chunk is done.

    {"name": "cats/1.jpg", "predictions": [{"label": "cat", "index": 0, "probability": 0.93}, ...]}
    {"name": "notes.txt", "error": "cannot identify image file"}

With the default handlers, this thread decodes a chunk of `batch_size` images (each under the
worker's decode budget, as a real-time request's) while the previous chunk's forward pass runs in
the dynamic batcher (batching.py), which real-time requests share: two chunks in memory at most,
whatever the request's size. With a code/inference.py that overrides input_fn, predict_fn or
output_fn, each image goes through the model's stages alone (as an `application/x-image`
request answered in JSON) and its answer, if a JSON object, becomes its line.

Waiting is fine here: a busy model or decode budget (503 for a real-time request) is waited out,
up to the request's deadline (SAGEMAKER_ASYNC_REQUEST_TIMEOUT_S). Past it, one closing line
{"error": ...} says the remaining images were not classified. Nothing here knows HTTP.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from typing import TypeVar

import torch

from server.async_input import Entry
from server.errors import Overloaded, RequestError

T = TypeVar("T")
SINGLE_IMAGE = "application/x-image"
JSON = "application/json"
CUSTOM_STAGES = ("input_fn", "predict_fn", "output_fn")


class DeadlinePassed(Exception):
    pass


def line(**fields) -> bytes:
    return json.dumps(fields).encode() + b"\n"


RETRY_PAUSE_S = 0.05


def until_deadline(deadline: float, step: Callable[..., T], *args) -> T:
    """step(*args), again while the server is busy (Overloaded), until `deadline`."""
    while True:
        try:
            return step(*args)
        except Overloaded:
            if time.monotonic() >= deadline:
                raise DeadlinePassed from None
            # the busy server's decodes and forward passes need this thread's CPU more than a retry does
            # (with SAGEMAKER_DECODE_WAIT_S=0 the budget refuses at once: no sleep, and this spun)
            time.sleep(RETRY_PAUSE_S)


@dataclass
class Chunk:
    """Some images of the request, by name: each one's line, or None while its tensor waits for
    the forward pass. No image's bytes: an entry is dropped once decoded."""

    names: list[str] = field(default_factory=list)
    lines: list[bytes | None] = field(default_factory=list)
    tensors: list[torch.Tensor] = field(default_factory=list)
    forward: Future | None = None


def answer_lines(service, entries: Iterator[Entry], top_k: int, deadline: float, timeout_s: int) -> Iterator[bytes]:
    """One JSON line per entry; then, if the deadline passed first, one closing error line."""
    try:
        if any(stage in service.overridden for stage in CUSTOM_STAGES):
            yield from _through_stages(service, entries, top_k, deadline)
        else:
            yield from _batched(service, entries, top_k, deadline)
    except DeadlinePassed:
        yield line(
            error=f"the request ran past {timeout_s} s (SAGEMAKER_ASYNC_REQUEST_TIMEOUT_S): "
            "the images after the last line were not classified"
        )


def _batched(service, entries: Iterator[Entry], top_k: int, deadline: float) -> Iterator[bytes]:
    defaults = service.defaults
    batcher = defaults.batcher
    with ThreadPoolExecutor(1, thread_name_prefix="async-forward") as forwarding:
        previous: Chunk | None = None
        while (chunk := _decoded(defaults, entries, batcher.max_batch_size, deadline)).names:
            if chunk.tensors:
                stacked = torch.stack(chunk.tensors)
                chunk.tensors = []
                chunk.forward = forwarding.submit(until_deadline, deadline, batcher.submit, stacked)
            if previous is not None:
                yield from _finished(defaults, previous, top_k)
            previous = chunk
        if previous is not None:
            yield from _finished(defaults, previous, top_k)


def _decoded(defaults, entries: Iterator[Entry], size: int, deadline: float) -> Chunk:
    """The next `size` entries decoded, one image's bytes in memory at a time."""
    chunk = Chunk()
    for entry in islice(entries, size):
        chunk.names.append(entry.name)
        if entry.data is None:
            chunk.lines.append(line(name=entry.name, error=entry.error))
            continue
        if time.monotonic() >= deadline:
            raise DeadlinePassed
        try:
            chunk.tensors.append(until_deadline(deadline, defaults.preprocess_image, entry.data))
            chunk.lines.append(None)  # its line comes with the forward pass
        except RequestError as exc:
            chunk.lines.append(line(name=entry.name, error=str(exc)))
    return chunk


def _finished(defaults, chunk: Chunk, top_k: int) -> Iterator[bytes]:
    rows = iter(chunk.forward.result().numpy() if chunk.forward is not None else ())
    for name, done in zip(chunk.names, chunk.lines, strict=True):
        yield done or line(name=name, predictions=defaults.top_classes(next(rows), top_k))


def _through_stages(service, entries: Iterator[Entry], top_k: int, deadline: float) -> Iterator[bytes]:
    attributes = f"top_k={top_k}"
    for entry in entries:
        if entry.data is None:
            yield line(name=entry.name, error=entry.error)
            continue
        if time.monotonic() >= deadline:
            raise DeadlinePassed
        try:
            body, _ = until_deadline(deadline, service.invoke, entry.data, SINGLE_IMAGE, JSON, attributes)
        except RequestError as exc:
            yield line(name=entry.name, error=str(exc))
            continue
        try:
            answer = json.loads(body)
        except (ValueError, TypeError):
            answer = None
        if not isinstance(answer, dict):
            answer = {"output": answer if answer is not None else "(not JSON: use the default output_fn)"}
        yield line(**{**answer, "name": entry.name})
