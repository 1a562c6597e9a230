"""GET /metrics against the real server (container/serve, 2 gunicorn workers):
after a bounded load run, the counts add up to the requests sent, by status,
whichever worker answers the scrape, and after a worker died."""

from __future__ import annotations

import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from helpers.serving import ServerProcess, encode, make_model_dir, sample_image

WORKERS = 2
GOOD, MALFORMED, TOO_LARGE, UNSUPPORTED = 40, 6, 3, 2  # requests of each kind in the load run
SAMPLE = re.compile(r"^(\w+)(?:\{(.*)\})? (\S+)$")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("metrics")
    with ServerProcess(
        make_model_dir(root / "model"),
        root / "server.log",
        SAGEMAKER_MODEL_SERVER_WORKERS=str(WORKERS),
        SAGEMAKER_MAX_PAYLOAD_IN_MB="1",
    ) as process:
        yield process


def scrape(server: ServerProcess) -> dict[tuple, float]:
    """{(name, frozenset of label pairs): value}, from the text format."""
    response = server.get("/metrics")
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for line in response.text.splitlines():
        if line and not line.startswith("#"):
            name, labels, value = SAMPLE.match(line).groups()
            pairs = frozenset(re.findall(r'(\w+)="([^"]*)"', labels or ""))
            samples[name, pairs] = float(value)
    return samples


def value(samples: dict, name: str, **labels) -> float:
    wanted = set(labels.items())
    return sum(v for (n, pairs), v in samples.items() if n == name and wanted <= pairs)


def send(server: ServerProcess, kind: str) -> int:
    image = encode(sample_image(1), "JPEG")
    body, content_type = {
        "good": (image, "image/jpeg"),
        "malformed": (b"not an image", "image/jpeg"),
        "too_large": (b"x" * (2 << 20), "image/jpeg"),
        "unsupported": (image, "text/plain"),
    }[kind]
    return server.invoke(body, content_type, timeout=60).status_code


def test_counts_add_up_across_workers(server):
    kinds = ["good"] * GOOD + ["malformed"] * MALFORMED + ["too_large"] * TOO_LARGE + ["unsupported"] * UNSUPPORTED
    deadline = time.monotonic() + 120
    with ThreadPoolExecutor(6) as pool:  # concurrent, so both workers and batches of several serve them
        statuses = list(pool.map(lambda kind: send(server, kind), kinds))
    assert time.monotonic() < deadline
    assert sorted(statuses) == sorted([200] * GOOD + [400] * MALFORMED + [413] * TOO_LARGE + [415] * UNSUPPORTED)

    # every scrape sums both workers' files, whichever worker answers it
    scrapes = [scrape(server) for _ in range(6)]
    for samples in scrapes:
        route = {"route": "/invocations"}
        assert value(samples, "byoc_requests_total", status="200", content_type="image/jpeg", **route) == GOOD
        assert value(samples, "byoc_requests_total", status="400", **route) == MALFORMED
        assert value(samples, "byoc_requests_total", status="413", **route) == TOO_LARGE
        assert value(samples, "byoc_requests_total", status="415", content_type="other", **route) == UNSUPPORTED
        assert value(samples, "byoc_request_seconds_count", **route) == len(kinds)
        assert value(samples, "byoc_request_seconds_bucket", le="+Inf", **route) == len(kinds)
        # one image per good request went through the forward passes, warm-up not counted
        assert value(samples, "byoc_forward_batch_size_sum") == GOOD
        assert value(samples, "byoc_queue_wait_seconds_count") == GOOD
        assert 1 <= value(samples, "byoc_forward_batch_size_count") <= GOOD
        assert value(samples, "byoc_model_load_seconds_count") == 1  # once, in the master
    pids = {pid for pid in server.worker_pids()}
    assert len(pids) == WORKERS

    # a worker killed: gunicorn starts another; what the dead one counted stays
    os.kill(next(iter(pids)), signal.SIGKILL)
    deadline = time.monotonic() + 120
    while (
        len(set(server.worker_pids()) - pids) < 1 or len(server.worker_pids()) < WORKERS
    ) and time.monotonic() < deadline:
        time.sleep(0.5)
    server.wait_ready()
    samples = scrape(server)
    assert value(samples, "byoc_requests_total", status="200", route="/invocations") == GOOD
    assert value(samples, "byoc_forward_batch_size_sum") == GOOD
