"""The multi-model endpoint (SAGEMAKER_MULTI_MODEL=true) against the real server:
container/serve with 2 gunicorn workers on 127.0.0.1, called as SageMaker's
front end calls it, with models our trainer wrote."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests

import make_sample_data
from helpers.serving import Reference, ServerProcess, encode, make_model_dir, multi_model_server, sample_image
from helpers.training import FAST_HPS, run_trainer

WORKERS = 2
# A trained resnet18 counts about 90 MB (its weights twice): one fits a worker,
# so switching models evicts; a resnet50 (about 190 MB) fits none: 507.
BUDGET_MB = 150
ONE_STEP = dict(FAST_HPS, epochs=1, amp="false", **{"max-steps-per-epoch": 1})
TARGET = "X-Amzn-SageMaker-Target-Model"
TRIES = 8  # requests per check, so both workers answer some (the kernel picks the worker)


def jpeg(seed: int = 0) -> bytes:
    return encode(sample_image(seed), "JPEG")


@pytest.fixture(scope="module")
def trained_models(tmp_path_factory) -> dict[str, Path]:
    """Three models, as many classes as their names say, trained by container/toolkit_entry_point.py (at once)."""
    root = tmp_path_factory.mktemp("mme")

    def train(classes: int) -> Path:
        data = make_sample_data.make(root / f"data{classes}" / "dogImages", classes=classes, per_class=8)
        opt_ml = root / f"opt_ml{classes}"
        result = run_trainer(opt_ml, {"training": data}, ONE_STEP)
        assert result.returncode == 0, result.stderr[-3000:]
        # as SageMaker lays a multi-model endpoint out: /opt/ml/models/<name>/model
        target = root / "models" / f"classes{classes}" / "model"
        target.parent.mkdir(parents=True)
        (opt_ml / "model").rename(target)
        return target

    with ThreadPoolExecutor(3) as pool:
        dirs = list(pool.map(train, (2, 3, 4)))
    return {f"classes{len(Reference(d).class_names)}": d for d in dirs}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # the models' root: every test's folders (trained_models', tmp_path's) are in pytest's base one
    with multi_model_server(
        tmp_path_factory,
        "mme",
        tmp_path_factory.getbasetemp(),
        SAGEMAKER_MODEL_SERVER_WORKERS=str(WORKERS),
        SAGEMAKER_MODEL_MEMORY_BUDGET_MB=str(BUDGET_MB),
        SAGEMAKER_MAX_PAYLOAD_IN_MB="1",
    ) as process:
        yield process


def load(server: ServerProcess, name: str, url) -> requests.Response:
    return requests.post(server.url + "/models", json={"model_name": name, "url": str(url)}, timeout=120)


def invoke(server: ServerProcess, name: str, body: bytes, by_header: bool = False, **headers) -> requests.Response:
    path = "/invocations" if by_header else f"/models/{name}/invoke"
    headers = {"Content-Type": "image/jpeg", **({TARGET: name} if by_header else {}), **headers}
    return requests.post(server.url + path, data=body, headers=headers, timeout=120)


def metric(server: ServerProcess, name: str) -> float:
    for line in server.get("/metrics").text.splitlines():
        if line.split(" ")[0] == name:
            return float(line.split(" ")[1])
    raise AssertionError(f"{name} not in /metrics")


def assert_answers_like_training(response: requests.Response, reference: Reference, image: bytes) -> None:
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    expected = reference.for_images(image)[0]
    assert len(predictions) == len(reference.class_names)
    got = np.array([p["probability"] for p in sorted(predictions, key=lambda p: p["index"])])
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert predictions[0]["label"] == reference.class_names[int(got.argmax())]
    second, first = np.sort(expected)[-2:]
    if first - second > 2e-4:  # a closer call (a one-step model's) may fall either way within the 1e-4 above
        assert predictions[0]["label"] == reference.class_names[int(expected.argmax())]


def test_starts_with_no_model(server):
    assert server.get("/ping").status_code == 200
    assert server.get("/models").json() == {"models": []}
    assert metric(server, "byoc_models_loaded") == 0


def test_load_list_invoke_evict_unload(server, trained_models):
    names = sorted(trained_models)
    for name in names:
        response = load(server, name, trained_models[name])
        assert response.status_code == 200, response.text + server.log()[-3000:]
        assert response.json()["modelName"] == name
    # 409 whichever worker answers
    assert {load(server, names[0], trained_models[names[0]]).status_code for _ in range(TRIES)} == {409}

    # the list, two pages of two and one
    first = server.get("/models", params={"page_size": 2}).json()
    assert [m["modelName"] for m in first["models"]] == names[:2]
    rest = server.get("/models", params={"page_size": 2, "next_page_token": first["nextPageToken"]}).json()
    assert [m["modelName"] for m in rest["models"]] == names[2:] and "nextPageToken" not in rest
    assert server.get(f"/models/{names[1]}").json() == {
        "modelName": names[1],
        "modelUrl": str(trained_models[names[1]]),
    }

    # each by name and by the front end's header, from both workers, in turns: a budget
    # of one model per worker evicts on every switch and loads lazily again
    references = {name: Reference(path) for name, path in trained_models.items()}
    image = jpeg(3)
    for round_ in range(3):
        for name in names:
            assert_answers_like_training(
                invoke(server, name, image, by_header=round_ % 2 == 1), references[name], image
            )
    assert metric(server, "byoc_model_evictions_total") >= 2
    assert metric(server, "byoc_models_in_memory") <= WORKERS  # one per worker, not three
    assert metric(server, "byoc_models_loaded") == 3

    # unloaded through one worker: gone for both
    assert server.delete_ok(f"/models/{names[0]}")
    for _ in range(TRIES):
        assert invoke(server, names[0], image).status_code == 404
        assert server.get(f"/models/{names[0]}").status_code == 404
    assert [m["modelName"] for m in server.get("/models").json()["models"]] == names[1:]
    # and loaded again under the same name
    assert load(server, names[0], trained_models[names[0]]).status_code == 200
    assert_answers_like_training(invoke(server, names[0], image, by_header=True), references[names[0]], image)


def test_every_error_code(server, trained_models, tmp_path):
    name = "errors"
    assert load(server, name, next(iter(trained_models.values()))).status_code == 200
    too_big = make_model_dir(tmp_path / "resnet50", backbone="resnet50")
    cases = [
        (load(server, "big", too_big), 507),
        (load(server, name, too_big), 409),
        (load(server, "nowhere", tmp_path / "missing"), 400),
        (load(server, "empty", tmp_path), 400),
        (requests.post(server.url + "/models", data=b"{not json", timeout=30), 400),
        (requests.post(server.url + "/models", json={"url": str(too_big)}, timeout=30), 400),
        (server.get("/models", params={"page_size": "0"}), 400),
        (server.get("/models/unknown"), 404),
        (requests.delete(server.url + "/models/unknown", timeout=30), 404),
        (invoke(server, "unknown", jpeg()), 404),
        (invoke(server, "unknown", jpeg(), by_header=True), 404),
        (
            requests.post(server.url + "/invocations", data=jpeg(), headers={"Content-Type": "image/jpeg"}, timeout=30),
            400,
        ),  # no target model
        (invoke(server, name, b"not an image"), 400),
        (invoke(server, name, jpeg(), **{"Content-Type": "text/plain"}), 415),
        (invoke(server, name, jpeg(), Accept="image/png"), 406),
        (invoke(server, name, b"x" * (2 << 20)), 413),
    ]
    for response, status in cases:
        assert response.status_code == status, response.text
        assert response.json()["error"], response.text
    assert "big" not in [m["modelName"] for m in server.get("/models").json()["models"]]
    assert invoke(server, name, jpeg()).status_code == 200  # the server carries on


SLOW_MODEL_FN = """
    import time

    from contract import artifact

    def model_fn(model_dir):
        time.sleep(6)
        model, _ = artifact.load(model_dir, "cpu")
        return model.eval()
"""


def test_a_model_being_loaded_blocks_no_other(tmp_path):
    # room for both models in each worker, so the slow load evicts nothing
    server = ServerProcess(
        tmp_path / "no-model-dir",
        tmp_path / "server.log",
        SAGEMAKER_MULTI_MODEL="true",
        SAGEMAKER_MODEL_SERVER_WORKERS=str(WORKERS),
        SAGEMAKER_MODEL_MEMORY_BUDGET_MB="1000",
        SAGEMAKER_MULTI_MODEL_ROOT=str(tmp_path),
    )
    try:
        server.wait_ready()
        check_loading_blocks_no_other(server, tmp_path)
    finally:
        server.stop()


def check_loading_blocks_no_other(server: ServerProcess, tmp_path: Path) -> None:
    fast = make_model_dir(tmp_path / "fast")
    slow = make_model_dir(tmp_path / "slow", inference_code=SLOW_MODEL_FN)
    assert load(server, "fast", fast).status_code == 200
    for _ in range(TRIES):  # both workers hold "fast" before the slow load starts
        assert invoke(server, "fast", jpeg()).status_code == 200
    loading = {}
    loader = threading.Thread(target=lambda: loading.update(response=load(server, "slow", slow)))
    loader.start()
    time.sleep(1)
    latencies = []
    while loader.is_alive() and len(latencies) < 40:
        started = time.monotonic()
        assert invoke(server, "fast", jpeg()).status_code == 200
        latencies.append(time.monotonic() - started)
    loader.join(timeout=60)
    assert loading["response"].status_code == 200, loading["response"].text
    assert len(latencies) >= 4 and max(latencies) < 2.0, latencies
