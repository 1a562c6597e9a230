"""The multi-model registry and one worker's models (server/registry.py,
server/multi_model.py) without HTTP: two WorkerModels on one registry stand
for two gunicorn workers."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from helpers.serving import CLASS_NAMES, encode, make_model_dir, sample_image
from server.multi_model import InsufficientMemory, WorkerModels, model_cost
from server.registry import AlreadyLoaded, ModelNotLoaded, ModelRegistry
from server.settings import Settings


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("mme-units")
    return [make_model_dir(root / f"m{i}", class_names=CLASS_NAMES[: i + 2]) for i in range(3)]


def workers(tmp_path, model_dirs, models_per_worker: int) -> tuple[WorkerModels, WorkerModels]:
    budget_mb = (models_per_worker * model_cost(model_dirs[0]) >> 20) + 1
    settings = dataclasses.replace(
        Settings.from_env({"SAGEMAKER_MODEL_SERVER_WORKERS": "1", "SAGEMAKER_BATCH_WAIT_MS": "0"}),
        multi_model=True,
        multi_model_root=str(tmp_path.parent),  # pytest's base folder: model_dirs and tmp_path are in it
        run_dir=str(tmp_path),
        model_memory_budget_mb=budget_mb,
    )
    return WorkerModels(settings), WorkerModels(settings)


def classes_answered(service) -> int:
    body, _ = service.invoke(encode(sample_image(), "JPEG"), "image/jpeg", None, "top_k=100")
    return body.count(b'"label"')


def test_registry_reserve_commit_remove(tmp_path):
    registry = ModelRegistry(tmp_path)
    entry = registry.reserve("a/b c", "/x")  # names are opaque: any string
    with pytest.raises(AlreadyLoaded):
        registry.reserve("a/b c", "/y")
    with pytest.raises(ModelNotLoaded):
        registry.get("a/b c")  # not ready yet
    registry.commit(entry)
    assert [e.name for e in registry.ready()] == ["a/b c"]
    registry.remove("a/b c")
    with pytest.raises(ModelNotLoaded):
        registry.remove("a/b c")


def test_a_dead_loaders_reservation_is_void(tmp_path):
    registry = ModelRegistry(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    entry = registry.reserve("m", "/x")
    registry._write(dataclasses.replace(entry, owner_pid=int(dead.stdout)))
    registry.reserve("m", "/x")  # no 409: its loader is gone


def test_loaded_through_one_worker_served_by_the_other(tmp_path, model_dirs):
    first, second = workers(tmp_path, model_dirs, models_per_worker=3)
    first.load("m0", str(model_dirs[0]))
    with pytest.raises(AlreadyLoaded):
        second.load("m0", str(model_dirs[1]))
    with second.using("m0") as service:  # loaded lazily here
        assert classes_answered(service) == 2
    assert second.in_memory() == ["m0"]
    second.unload("m0")
    with pytest.raises(ModelNotLoaded):
        with first.using("m0"):
            pass
    assert first.in_memory() == []


def test_least_recently_used_leaves_memory(tmp_path, model_dirs):
    worker, _ = workers(tmp_path, model_dirs, models_per_worker=2)
    for i, path in enumerate(model_dirs):
        worker.load(f"m{i}", str(path))
    assert worker.in_memory() == ["m1", "m2"]
    with worker.using("m1"):
        pass
    with worker.using("m0") as service:  # back, lazily; m2 was the least recently used
        assert classes_answered(service) == 2
    assert sorted(worker.in_memory()) == ["m0", "m1"]
    assert [e.name for e in worker.registry.ready()] == ["m0", "m1", "m2"]  # all still loaded


def test_a_model_larger_than_the_budget_is_507(tmp_path, model_dirs):
    worker, _ = workers(tmp_path, model_dirs, models_per_worker=1)
    big = make_model_dir(tmp_path / "big", backbone="resnet34")
    with pytest.raises(InsufficientMemory):
        worker.load("big", str(big))
    assert worker.registry.ready() == []
