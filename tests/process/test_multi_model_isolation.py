"""A multi-model endpoint's models kept apart, against the real server (container/serve,
one gunicorn worker on 127.0.0.1): a url must lie inside SAGEMAKER_MULTI_MODEL_ROOT,
each model's code/ has its own modules, a model counts what it loads against the memory
budget, and loading and unloading over and over returns what it took."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import requests

from helpers.code_models import make_code_model
from helpers.serving import ServerProcess, encode, multi_model_server, sample_image

BUDGET_MB = 100
JPEG = encode(sample_image(), "JPEG")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def server(root, tmp_path_factory):
    with multi_model_server(
        tmp_path_factory, "isolation", root, SAGEMAKER_MODEL_MEMORY_BUDGET_MB=str(BUDGET_MB)
    ) as process:
        yield process


def load(server: ServerProcess, name: str, url) -> requests.Response:
    return requests.post(server.url + "/models", json={"model_name": name, "url": str(url)}, timeout=60)


def top_class(server: ServerProcess, name: str) -> int:
    response = requests.post(
        server.url + f"/models/{name}/invoke", data=JPEG, headers={"Content-Type": "image/jpeg"}, timeout=60
    )
    assert response.status_code == 200, response.text
    return response.json()["predictions"][0]["index"]


def worker_rss_bytes(server: ServerProcess) -> int:
    [pid] = server.worker_pids()
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_a_url_outside_the_root_is_one_400_whatever_exists(server, root, tmp_path):
    outside = make_code_model(tmp_path / "outside")  # a real model, where no model may come from
    (root / "link-out").symlink_to(outside)
    (root / "not-a-model").mkdir()
    urls = {
        "absolute, outside": outside,
        "absolute, missing": tmp_path / "missing",
        "a system folder": "/etc",
        "relative": os.path.relpath(make_code_model(root / "relative"), os.getcwd()),
        "dot-dot out of the root": f"{root}/../{outside.relative_to(tmp_path.parent)}",
        "a link inside pointing out": root / "link-out",
        "inside, missing": root / "missing",
        "inside, no model": root / "not-a-model",
        "a NUL byte": f"{root}/a\x00b",
        "a name too long": f"{root}/{'x' * 5000}",
    }
    answers = {case: load(server, f"m{i}", url) for i, (case, url) in enumerate(urls.items())}
    assert {case: answer.status_code for case, answer in answers.items()} == dict.fromkeys(urls, 400)
    messages = {answer.json()["error"] for answer in answers.values()}
    assert len(messages) == 1, messages  # nothing tells which paths exist
    assert server.get("/models").json() == {"models": []}
    assert load(server, "inside", make_code_model(root / "inside")).status_code == 200
    assert server.delete_ok("/models/inside")


def test_same_named_helpers_stay_each_models_own(server, root):
    first = make_code_model(root / "first", probabilities=(0.9, 0.1))
    second = make_code_model(root / "second", probabilities=(0.1, 0.9))
    assert load(server, "first", first).status_code == 200
    assert load(server, "second", second).status_code == 200
    try:
        for _ in range(3):  # one worker holds both: each answers with its own helper.py
            assert (top_class(server, "first"), top_class(server, "second")) == (0, 1)
    finally:
        server.delete_ok("/models/first")
        server.delete_ok("/models/second")


def test_a_model_counts_the_tensors_its_model_fn_made(server, root):
    # no model.pt: only what model_fn builds (64 MB, twice that counted) shows how large it is
    big = make_code_model(root / "big", tensor_bytes=64 << 20)
    response = load(server, "big", big)
    assert response.status_code == 507, response.text
    assert "SAGEMAKER_MODEL_MEMORY_BUDGET_MB" in response.json()["error"]
    assert server.get("/models").json() == {"models": []}
    assert top_class_after_load(server, make_code_model(root / "small", tensor_bytes=1 << 20)) == 0


def top_class_after_load(server: ServerProcess, model: Path) -> int:
    assert load(server, "small", model).status_code == 200
    try:
        return top_class(server, "small")
    finally:
        server.delete_ok("/models/small")


def test_loading_and_unloading_a_hundred_times_returns_the_memory(server, root):
    # each load's inference.py holds 4 MB: kept after unloading, 100 loads would keep 400 MB
    model = make_code_model(root / "cycled", ballast_bytes=4 << 20)
    pids = server.worker_pids()

    def cycle() -> None:
        assert load(server, "cycled", model).status_code == 200
        assert top_class(server, "cycled") == 0
        assert server.delete_ok("/models/cycled")

    for _ in range(10):  # allocator pools and caches settle
        cycle()
    before = worker_rss_bytes(server)
    for _ in range(100):
        cycle()
    grown = worker_rss_bytes(server) - before
    assert grown < 40 << 20, f"the worker grew {grown >> 20} MB over 100 loads"
    assert server.worker_pids() == pids
