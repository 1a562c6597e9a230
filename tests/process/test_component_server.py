"""The serving image's program as one copy of an inference component: the real server (gunicorn and
its workers on 127.0.0.1) started with the environment deploy-component gives the component
(server/reservation.py from the artifact's weights), whatever the host has: it answers /ping and
/metrics, runs the reserved workers and torch threads with the reserved decode budget, classifies,
and holds less memory than the component reserves."""

from __future__ import annotations

import re

import pytest

from helpers.serving import ServerProcess, encode, make_model_dir, sample_image
from server.reservation import reservation
from server.settings import model_bytes

pytestmark = pytest.mark.process
CORES = 4  # two workers of two torch threads (the reservation's cores, not this machine's)


@pytest.fixture(scope="module")
def component(tmp_path_factory):
    folder = tmp_path_factory.mktemp("component")
    model_dir = make_model_dir(folder / "model")
    held = reservation(CORES, model_bytes(model_dir))
    # no SAGEMAKER_MODEL_SERVER_WORKERS of the test helper's: the component's environment alone
    with ServerProcess(model_dir, folder / "server.log", **held.environment()) as server:
        yield server, held


def test_the_copy_runs_as_reserved(component):
    server, held = component
    assert held.workers == 2
    assert len(server.wait_for_workers(held.workers)) == held.workers
    started = re.search(r"serve: Settings\((.*)\); allocator", server.log())
    assert started, server.log()
    assert f"workers={held.workers}," in started.group(1)
    assert f"torch_threads={held.torch_threads}," in started.group(1)
    assert f"decode_pixels_per_worker={held.decode_pixels_per_worker}," in started.group(1)


def test_ping_metrics_and_answers_inside_the_reservation(component):
    server, held = component
    server.wait_for_workers(held.workers)
    assert server.get("/ping").status_code == 200
    for seed in range(8):
        response = server.invoke(
            encode(sample_image(seed), "JPEG"), headers={"X-Amzn-SageMaker-Custom-Attributes": "top_k=2"}
        )
        assert response.status_code == 200, response.text
        assert len(response.json()["predictions"]) == 2
    metrics = server.get("/metrics")
    assert metrics.status_code == 200
    assert re.search(r'byoc_requests_total\{[^}]*status="200"[^}]*\} 8\.0', metrics.text), metrics.text[:2000]
    assert server.pss_bytes() < held.memory_bytes
