"""The multi-model registry and one worker's models (server/registry.py,
server/multi_model.py) without HTTP: two WorkerModels on one registry stand
for two gunicorn workers."""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from helpers.code_models import make_code_model
from helpers.serving import CLASS_NAMES, encode, make_model_dir, sample_image
from server.errors import Overloaded
from server.multi_model import InsufficientMemory, WorkerModels, model_cost
from server.registry import AlreadyLoaded, ModelNotLoaded, ModelRegistry
from server.service import InferenceService
from server.settings import Settings
from server.user_code import ModelCode


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("mme-units")
    return [make_model_dir(root / f"m{i}", class_names=CLASS_NAMES[: i + 2]) for i in range(3)]


MODELS = [("first", (0.9, 0.1)), ("second", (0.1, 0.9))]  # each one's helper.py makes a different class win


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
    entry = registry.reserve("m", "/x")
    with pytest.raises(AlreadyLoaded):  # its loader (this process) is alive: the name is taken
        registry.reserve("m", "/x")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    registry._write(dataclasses.replace(entry, owner_pid=int(dead.stdout)))
    with pytest.raises(ModelNotLoaded):  # a dead loader's reservation is nobody's model
        registry.get("m")
    again = registry.reserve("m", "/x")  # no 409: its loader is gone
    assert again.generation != entry.generation and again.owner_pid == os.getpid()


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


def rss_bytes() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def top_class(service) -> int:
    body, _ = service.invoke(encode(sample_image(), "JPEG"), "image/jpeg", None, None)
    return json.loads(body)["predictions"][0]["index"]


def test_a_thousand_loads_of_same_named_helpers_stay_apart_and_leave_nothing(tmp_path):
    """Two models whose code/ both hold helper.py, loaded, invoked and closed 500 times each
    (as a multi-model worker does, each load under its own tag): each answers with its own
    helper, and sys.path, sys.modules and the memory (each load's module holds 256 KB) stay flat."""
    settings = Settings.from_env({"SAGEMAKER_MODEL_SERVER_WORKERS": "1", "SM_NUM_GPUS": "0"})
    models = [make_code_model(tmp_path / name, winner, ballast_bytes=256 << 10) for name, winner in MODELS]

    def cycle(i: int) -> None:
        service = InferenceService(models[i % 2], settings, code_tag=f"cycle{i}")
        try:
            assert top_class(service) == i % 2
        finally:
            service.close()

    for i in range(10):
        cycle(i)
    gc.collect()
    path, modules, rss = list(sys.path), set(sys.modules), rss_bytes()
    for i in range(1000):
        cycle(i)
    gc.collect()
    assert sys.path == path
    assert set(sys.modules) == modules
    assert rss_bytes() - rss < 32 << 20, f"grew {(rss_bytes() - rss) >> 20} MB"


def test_two_models_loading_at_once_in_threads_each_get_their_own_helper(tmp_path):
    settings = Settings.from_env({"SAGEMAKER_MODEL_SERVER_WORKERS": "1", "SM_NUM_GPUS": "0"})
    models = [make_code_model(tmp_path / name, winner) for name, winner in MODELS]
    wrong = []

    def load_many(which: int) -> None:
        for i in range(50):
            service = InferenceService(models[which], settings, code_tag=f"thread{which}_{i}")
            try:
                if top_class(service) != which:
                    wrong.append((which, i))
            finally:
                service.close()

    threads = [threading.Thread(target=load_many, args=(which,)) for which in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not wrong and not any(thread.is_alive() for thread in threads)


PACKAGE_USER = {
    "inference.py": """
        import helpers.numbers
        from helpers import words
        from . import flat

        def answer():
            import helpers.numbers as late  # at request time, from a function
            return helpers.numbers.N, words.WORD, flat.FLAT, late.N
    """,
    "flat.py": "FLAT = 'flat'\n",
    "helpers/__init__.py": "",
    "helpers/numbers.py": "from .words import WORD\nN = len(WORD)\n",
    "helpers/words.py": "WORD = 'own'\n",
}


def test_a_models_code_imports_its_packages_its_own_way_and_leaves_with_it(tmp_path):
    for name, source in PACKAGE_USER.items():
        (tmp_path / "code" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "code" / name).write_text(textwrap.dedent(source))
    before, ours = set(sys.modules), sys.modules["helpers"]  # this test suite's own helpers package
    code = ModelCode(tmp_path, "packages")
    # the model's helpers/, not the one Python already holds under that name
    assert code.module.answer() == (3, "own", "flat", 3)
    assert sys.modules["helpers"] is ours and "flat" not in sys.modules  # nothing under the plain names
    code.unload()
    assert set(sys.modules) == before


def test_a_request_waits_a_bounded_time_for_another_threads_load(tmp_path, model_dirs, monkeypatch):
    """A model whose load in this worker hangs (a slow model_fn, say) costs its other requests
    LOAD_WAIT_S and a 503 they may retry, not a thread each held for ever."""
    from server import multi_model

    monkeypatch.setattr(multi_model, "LOAD_WAIT_S", 0.5)
    worker, other = workers(tmp_path, model_dirs, models_per_worker=2)
    other.load("m0", str(model_dirs[0]))  # loaded through the other worker: this one loads lazily
    resident = worker._admit(worker.registry.get("m0"), 1)
    resident.lock.acquire()  # as a thread of this worker would while loading it
    try:
        started = time.monotonic()
        with pytest.raises(Overloaded, match="still loading"):
            with worker.using("m0"):
                pass
        assert 0.4 < time.monotonic() - started < 5
    finally:
        resident.lock.release()
        worker._done_with(resident)
    with worker.using("m0") as service:  # the load lock free again: served
        assert classes_answered(service) == 2


def test_the_registry_lock_is_waited_for_a_bounded_time(tmp_path, monkeypatch):
    """A process that holds the registry's lock (hung mid-update) delays the others'
    loads LOCK_WAIT_S, then they answer 503; a dead holder's lock is freed by the kernel."""
    from server import registry as registry_module

    monkeypatch.setattr(registry_module, "LOCK_WAIT_S", 0.5)
    registry = ModelRegistry(tmp_path)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import fcntl, time; f = open({str(tmp_path / '.lock')!r}, 'a+b'); "
            "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with pytest.raises(Overloaded, match="busy"):
            registry.reserve("m", "/x")
        assert 0.4 < time.monotonic() - started < 5
    finally:
        holder.kill()
        holder.wait(timeout=10)
    assert registry.reserve("m", "/x").name == "m"  # the dead holder's lock went with it
