"""Hostile clients against the real server (container/serve on 127.0.0.1), issue #21:
a burst of images that are small on the wire and huge once decoded, a client that trickles
its body, a user input_fn of mixed sizes. Every answer comes, no worker dies."""

from __future__ import annotations

import io
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from PIL import Image, ImageDraw

from helpers.serving import CLASS_NAMES, Reference, ServerProcess, encode, make_model_dir, sample_image
from server.settings import DECODE_BYTES_PER_PIXEL

WORKERS = 2
THREADS = 16
# One 8000x8000 image at a time per worker, and then some: the burst must queue for it.
DECODE_PIXELS_PER_WORKER = 100_000_000
BURST_SIZE = 2 * WORKERS * THREADS
SIDE = 8000


@pytest.fixture
def start_server(tmp_path):
    """Starts servers (optionally with a code/inference.py); stops them all afterwards."""
    started = []

    def start(inference_code: str | None = None, **env) -> ServerProcess:
        model_dir = make_model_dir(tmp_path / f"model{len(started)}", inference_code=inference_code)
        process = ServerProcess(model_dir, tmp_path / f"server{len(started)}.log", **env)
        started.append(process)
        process.wait_ready()
        return process

    yield start
    for process in started:
        process.stop()


def blocks(mode: str, seed: int, size: tuple[int, int] = (SIDE, SIDE)) -> Image.Image:
    """Large flat rectangles: a few hundred KB as PNG, 64 million pixels decoded."""
    rng = np.random.default_rng(seed)
    image = Image.new(mode, size)
    draw = ImageDraw.Draw(image)
    bands = len(image.getbands())
    for _ in range(100):
        x, y = (int(v) for v in rng.integers(0, size[0], 2))
        colour = tuple(int(v) for v in rng.integers(0, 256, bands))
        draw.rectangle([x, y, x + size[0] // 8, y + size[1] // 8], fill=colour if bands > 1 else colour[0])
    return image


def hostile_images() -> dict[str, tuple[bytes, str]]:
    """{name: (body, content type)}: each within the per-request budget (64 Mpx) or refused by it."""
    palette = blocks("P", 2)
    palette.putpalette(bytes(range(256)) * 3)
    grey16 = Image.fromarray(np.asarray(blocks("L", 1, (1000, 1000)), np.uint16) * 257).resize((SIDE, SIDE))
    images = {
        "RGBA PNG": (encode(blocks("RGBA", 0), "PNG"), "image/png"),
        "16-bit grey PNG": (encode(grey16, "PNG"), "image/png"),
        "palette PNG with transparency": (save(palette, "PNG", transparency=bytes(range(256))), "image/png"),
        "progressive JPEG": (save(blocks("RGB", 3), "JPEG", quality=30, progressive=True), "image/jpeg"),
        # drafted to 1375x1375, but libjpeg would hold 11000x11000x3 coefficients: refused
        "progressive JPEG of 121 Mpx": (
            save(Image.new("RGB", (11000, 11000), (90, 120, 200)), "JPEG", quality=10, progressive=True, subsampling=0),
            "image/jpeg",
        ),
    }
    for name, (body, _) in images.items():
        assert len(body) < 2_000_000, (name, len(body))  # small on the wire
    return images


def save(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


class PeakMemory:
    """Samples the resident memory of the server (master and workers) every 20 ms while in use.
    RSS, not PSS: reading it is cheap enough to catch a peak; shared pages count once per
    process, the same at rest and in the burst, so the difference is what the burst took."""

    def __init__(self, server: ServerProcess):
        self.server = server
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample)

    def rss(self) -> int:
        total = 0
        for pid in [self.server.process.pid, *self.server.worker_pids()]:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:  # a worker gone: the test fails on its pid, not here
                continue
            total += next(int(line.split()[1]) << 10 for line in status.splitlines() if line.startswith("VmRSS:"))
        return total

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.rss())

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def test_a_burst_of_decompression_bombs_within_budget_kills_no_worker(start_server):
    """2 workers x 16 threads, 64 requests of images a few hundred KB each that decode to
    64 Mpx (before the worker budget: ~1.4 GB apiece at once, tens of GB in all). Each
    worker decodes at most DECODE_PIXELS_PER_WORKER at once, at most DECODE_BYTES_PER_PIXEL
    each: the burst may add no more than that per worker to the server's memory."""
    images = hostile_images()
    server = start_server(
        SAGEMAKER_MODEL_SERVER_WORKERS=str(WORKERS),
        SAGEMAKER_MODEL_SERVER_THREADS=str(THREADS),
        SAGEMAKER_DECODE_PIXELS_PER_WORKER=str(DECODE_PIXELS_PER_WORKER),
        SAGEMAKER_DECODE_WAIT_S="20",  # under 60 s with the decode itself: a slow CI machine gets 200s, not 503s
    )
    workers = server.wait_for_workers(WORKERS)
    names = list(images)
    start = threading.Barrier(BURST_SIZE)

    def one(i: int) -> tuple[str, int, dict]:
        body, content_type = images[names[i % len(names)]]
        start.wait(timeout=30)
        try:
            response = server.invoke(body, content_type, timeout=60)
        except requests.RequestException as exc:
            return names[i % len(names)], 0, {"error": f"{type(exc).__name__}: {exc}"}
        return names[i % len(names)], response.status_code, response.json()

    with PeakMemory(server) as memory:
        at_rest = memory.rss()
        started = time.monotonic()
        with ThreadPoolExecutor(BURST_SIZE) as pool:
            answers = list(pool.map(one, range(BURST_SIZE)))
        took = time.monotonic() - started
    grew = memory.peak - at_rest
    print(f"burst of {BURST_SIZE} in {took:.0f} s; server RSS {at_rest >> 20} MiB at rest, +{grew >> 20} MiB at peak")
    statuses = {name: sorted(status for n, status, _ in answers if n == name) for name in names}
    print(statuses)
    assert took < 240
    assert all(status in (200, 413, 503) for _, status, _ in answers), answers
    assert all(status == 413 for status in statuses["progressive JPEG of 121 Mpx"]), statuses
    assert any(status == 200 for _, status, _ in answers), statuses  # the burst is served, not only refused
    for _, status, document in answers:
        assert ("predictions" in document) if status == 200 else (set(document) == {"error"}), document
    assert server.worker_pids() == workers, server.log()
    log = server.log()  # gunicorn's words for a worker killed (OOM: SIGKILL) or gone, and replaced
    assert "was sent" not in log and "exited with" not in log and log.count("Booting worker") == WORKERS, log[-3000:]
    assert grew < WORKERS * DECODE_PIXELS_PER_WORKER * DECODE_BYTES_PER_PIXEL, f"+{grew >> 20} MiB"
    assert server.invoke(encode(sample_image(0), "JPEG")).status_code == 200
    for name in names[:4]:  # and each kind is served once the burst is over (in the burst, which of them
        body, content_type = images[name]  # got the budget first depends on the machine's speed)
        answer = server.invoke(body, content_type, timeout=60)
        assert answer.status_code == 200 and "predictions" in answer.json(), (name, answer.text)


BODY_FOLLOWS = (
    b"POST /invocations HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/jpeg\r\nContent-Length: 1000\r\n\r\n"
)
HEADERS_FOLLOW = b"POST /invocations HTTP/1.1\r\nX-Slow: "
CHUNKS_FOLLOW = b"POST /invocations HTTP/1.1\r\nContent-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n\r\n1"


def trickle(port: int, seconds: float, results: dict, head: bytes = BODY_FOLLOWS) -> None:
    """`head`, then one byte a second; records the status line (empty: closed) and when it came."""
    with socket.create_connection(("127.0.0.1", port), timeout=seconds + 10) as connection:
        connection.sendall(head)
        started = time.monotonic()
        connection.settimeout(1.0)
        while time.monotonic() - started < seconds:
            try:
                connection.sendall(b"\xff")
                reply = connection.recv(4096)
            except TimeoutError:
                continue  # no answer yet: another byte
            except OSError:  # reset: the server dropped us
                reply = b""
            results["status_line"] = reply.split(b"\r\n", 1)[0]
            results["after_s"] = time.monotonic() - started
            return


@pytest.mark.parametrize("head", [BODY_FOLLOWS, CHUNKS_FOLLOW, HEADERS_FOLLOW], ids=["body", "chunked body", "headers"])
def test_a_client_that_trickles_is_dropped_and_frees_its_thread(start_server, head):
    """One worker, one thread: while the slow client holds it, nobody else is served.
    The read deadline (3 s) drops it, and the waiting request is answered: a slow body
    gets 408 (a chunked one too: gunicorn's reader raised on the closed socket, and it was a 500), a client
    still sending headers is disconnected."""
    server = start_server(SAGEMAKER_MODEL_SERVER_THREADS="1", SAGEMAKER_BODY_READ_TIMEOUT_S="3")
    slow: dict = {}
    slow_client = threading.Thread(target=trickle, args=(server.port, 20, slow, head))
    slow_client.start()
    time.sleep(1)  # the slow client holds the only thread now
    started = time.monotonic()
    response = server.invoke(encode(sample_image(0), "JPEG"), timeout=15)
    waited = time.monotonic() - started
    slow_client.join(timeout=30)
    assert response.status_code == 200, response.text
    assert waited < 10, waited
    assert "status_line" in slow and slow["after_s"] < 8, slow
    if head == HEADERS_FOLLOW:
        assert not slow["status_line"], slow
    else:
        assert slow["status_line"].startswith(b"HTTP/1.1 408"), slow
    assert server.invoke(encode(sample_image(1), "JPEG"), timeout=15).status_code == 200


MIXED_SIZE_INPUT_FN = """
    import torch

    def input_fn(request_body, content_type):
        # the body names the size: b"64" or b"80"
        size = int(request_body)
        return torch.rand(3, size, size, generator=torch.Generator().manual_seed(size))
"""


def test_inputs_of_mixed_sizes_in_one_batch_are_all_answered(start_server, tmp_path):
    """A user input_fn returning (3,64,64) and (3,80,80) tensors, batched together (each
    waits 300 ms for company): before, torch.cat ended the model thread and every
    request from then on waited for ever. Each size gets its own forward pass now."""
    server = start_server(MIXED_SIZE_INPUT_FN, SAGEMAKER_BATCH_WAIT_MS="300")
    reference = Reference(make_model_dir(tmp_path / "reference"))
    expected = {
        size: reference.probabilities(
            torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(size)).numpy()
        )[0]
        for size in (64, 80)
    }
    sizes = [64, 80] * 4
    start = threading.Barrier(len(sizes))

    def one(size: int) -> requests.Response:
        start.wait(timeout=30)
        return server.invoke(str(size).encode(), "text/plain", {"X-Amzn-SageMaker-Custom-Attributes": "top_k=6"}, 20)

    with ThreadPoolExecutor(len(sizes)) as pool:
        responses = list(pool.map(one, sizes))
    assert [r.status_code for r in responses] == [200] * len(sizes), [r.text for r in responses]
    assert max(int(r.headers["X-Forward-Batch-Size"]) for r in responses) > 1  # they did share passes
    for size, response in zip(sizes, responses, strict=True):
        served = np.zeros(len(CLASS_NAMES), np.float32)
        for entry in response.json()["predictions"]:
            served[entry["index"]] = entry["probability"]
        np.testing.assert_allclose(served, expected[size], atol=1e-4)
    assert server.invoke(b"64", "text/plain", timeout=20).status_code == 200
