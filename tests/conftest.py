"""Fixtures for every tier, and the tiers themselves: a test's tier is its folder (tests/unit, process,
container, aws), or `container` wherever a test needs the container engine (it runs an image), so
`pytest -m "not container"` runs everything that needs no image."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

# as scripts/test.sh and the training image set them: smdebug's protobuf code
# needs the pure-Python protobuf
os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")

import container_engine  # noqa: E402  (container/, scripts/ and tests/ are on the path: pyproject.toml)

TIERS = ("unit", "process", "container", "aws")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "engine" in item.fixturenames:  # it builds or runs an image
            item.add_marker(pytest.mark.container)
        elif not any(item.get_closest_marker(tier) for tier in TIERS):
            folder = Path(str(item.fspath)).parent.name
            if folder in TIERS:
                item.add_marker(getattr(pytest.mark, folder))


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory) -> Path:
    import make_sample_data

    return make_sample_data.make(tmp_path_factory.mktemp("sample") / "dogImages")


@pytest.fixture(scope="session")
def engine() -> container_engine.Engine:
    """The container engine as scripts/engine.sh sets it up; BASE_IMAGE in its env for build_image.sh."""
    found = container_engine.setup()
    return dataclasses.replace(found, env=dict(found.env, BASE_IMAGE=found.base_image))


@pytest.fixture
def containers_left_by_this_test(engine):
    """A function naming this project's containers that appeared during the test and are still there.
    Those of other runs (a crashed job, someone else's session on the same engine) are not this test's."""
    before = set(container_engine.project_containers(engine.cli, env=engine.env))

    def left() -> list[str]:
        return sorted(set(container_engine.project_containers(engine.cli, env=engine.env)) - before)

    return left
