"""Fixtures the serving tests of several modules share (test_precision.py, test_runtimes.py)."""

from __future__ import annotations

import pytest

from helpers.serving import ServerProcess

TEST_IMAGES = 16


@pytest.fixture(scope="module")
def sample_images(sample_data) -> list[bytes]:
    """The data set's held-out JPEGs and PNGs, as a client would send them."""
    files = sorted(p for p in (sample_data / "test").rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return [p.read_bytes() for p in files[:TEST_IMAGES]]


@pytest.fixture
def serve(tmp_path):
    """start(model_dir, **env) -> a ready ServerProcess; every one started is stopped afterwards."""
    started = []

    def start(model_dir, **env):
        server = ServerProcess(model_dir, tmp_path / f"server{len(started)}.log", **env)
        started.append(server)
        server.wait_ready(timeout=240)
        return server

    yield start
    for server in started:
        server.stop()
