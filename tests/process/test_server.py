"""The serving container's contract, against the real server: container/serve
(gunicorn and its workers) on 127.0.0.1, with model dirs the trainer's code writes."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from PIL import Image, ImageOps

import proctree
from contract.preprocess import decode_image, eval_transform
from crafted_png import decompression_bomb_png
from helpers.serving import (
    CLASS_NAMES,
    IMAGE_SIZE,
    Reference,
    ServerProcess,
    encode,
    make_model_dir,
    palette_png_with_overlong_transparency,
    sample_image,
)

PAYLOAD_LIMIT_MB = 1
WORKERS = 2
# Low bounds, so small bodies can cross them: 4 images of 96x80 fit, and so do 3 of 64x64 as npy.
IMAGE_LIMIT = 4
PIXEL_LIMIT = 40_000
ATOL = 1e-4


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("serving") / "model")


@pytest.fixture(scope="module")
def reference(model_dir):
    return Reference(model_dir)


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    with ServerProcess(
        model_dir,
        tmp_path_factory.mktemp("logs") / "server.log",
        SAGEMAKER_MAX_PAYLOAD_IN_MB=str(PAYLOAD_LIMIT_MB),
        SAGEMAKER_MODEL_SERVER_WORKERS=str(WORKERS),
        SAGEMAKER_MAX_IMAGES_PER_REQUEST=str(IMAGE_LIMIT),
        SAGEMAKER_MAX_PIXELS_PER_REQUEST=str(PIXEL_LIMIT),
    ) as process:
        yield process


@pytest.fixture
def start_server(tmp_path):
    """Starts servers on model dirs with their own code/inference.py; stops them all afterwards."""
    started = []

    def start(inference_code: str | None = None, model_dir=None, **env) -> ServerProcess:
        model_dir = model_dir or make_model_dir(tmp_path / f"model{len(started)}", inference_code=inference_code)
        process = ServerProcess(model_dir, tmp_path / f"server{len(started)}.log", **env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def jpeg(seed: int = 0) -> bytes:
    return encode(sample_image(seed), "JPEG")


def probabilities_of(document: dict) -> np.ndarray:
    """{"predictions": [...]} -> probabilities indexed by class."""
    result = np.zeros(len(CLASS_NAMES), np.float32)
    for entry in document["predictions"]:
        assert entry["label"] == CLASS_NAMES[entry["index"]]
        result[entry["index"]] = entry["probability"]
    return result


def assert_good_request_works(server: ServerProcess, reference: Reference) -> None:
    response = server.invoke(jpeg())
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(probabilities_of(response.json()), reference.for_images(jpeg())[0], atol=ATOL)


# --- what a client sends -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type, image_format",
    [
        ("image/jpeg", "JPEG"),
        ("image/png", "PNG"),
        ("application/x-image", "JPEG"),
        ("image/webp", "WEBP"),
        ("image/bmp", "BMP"),
        ("image/gif", "GIF"),
        ("image/tiff", "TIFF"),
    ],
)
def test_image_bytes_match_training_evaluation(server, reference, content_type, image_format):
    data = encode(sample_image(3), image_format)
    response = server.invoke(data, content_type, {"X-Amzn-SageMaker-Custom-Attributes": "top_k=6"})
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/json"
    document = response.json()
    probabilities = [entry["probability"] for entry in document["predictions"]]
    assert probabilities == sorted(probabilities, reverse=True)
    np.testing.assert_allclose(probabilities_of(document), reference.for_images(data)[0], atol=ATOL)


@pytest.mark.parametrize("key", ["b64", "image"])
def test_json_single_image(server, reference, key):
    body = json.dumps({key: base64.b64encode(jpeg(1)).decode()})
    response = server.invoke(body, "application/json", {"X-Amzn-SageMaker-Custom-Attributes": "top_k=6"})
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(probabilities_of(response.json()), reference.for_images(jpeg(1))[0], atol=ATOL)


def test_json_instances_answer_in_order(server, reference):
    images = [jpeg(seed) for seed in range(4)]
    # line-wrapped base64, as base64.encodebytes writes it
    body = json.dumps({"instances": [{"b64": base64.encodebytes(image).decode()} for image in images]})
    response = server.invoke(body, "application/json; charset=utf-8", {"X-Amzn-SageMaker-Custom-Attributes": "top_k=6"})
    assert response.status_code == 200, response.text
    documents = response.json()
    assert isinstance(documents, list) and len(documents) == 4
    np.testing.assert_allclose([probabilities_of(d) for d in documents], reference.for_images(*images), atol=ATOL)


def test_npy_single_and_batch(server, reference):
    arrays = np.stack([reference.preprocess(jpeg(seed)) for seed in range(3)])
    for array, expected in (
        (arrays[0], reference.probabilities(arrays[:1])),
        (arrays, reference.probabilities(arrays)),
    ):
        buffer = io.BytesIO()
        np.save(buffer, array)
        response = server.invoke(buffer.getvalue(), "application/x-npy", {"Accept": "application/x-npy"})
        assert response.status_code == 200, response.text
        result = np.load(io.BytesIO(response.content), allow_pickle=False)
        assert result.dtype == np.float32 and result.shape == expected.shape
        np.testing.assert_allclose(result, expected, atol=ATOL)


# --- what a client gets back -------------------------------------------------------------------


@pytest.mark.parametrize(
    "accept", [None, "*/*", "application/json", "application/*", "image/png, application/json;q=0.9"]
)
def test_json_is_the_default_answer(server, accept):
    response = server.invoke(jpeg(), headers={"Accept": accept} if accept else None)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert len(response.json()["predictions"]) == 5


def test_npy_answer_is_the_probability_matrix(server, reference):
    response = server.invoke(jpeg(2), headers={"Accept": "application/x-npy"})
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/x-npy"
    result = np.load(io.BytesIO(response.content), allow_pickle=False)
    expected = reference.for_images(jpeg(2))
    assert result.dtype == np.float32 and result.shape == (1, len(CLASS_NAMES))
    np.testing.assert_allclose(result, expected, atol=ATOL)
    assert np.argmax(result, 1).tolist() == np.argmax(expected, 1).tolist()


def test_csv_answer_has_a_row_per_image(server, reference):
    images = [jpeg(0), jpeg(1)]
    body = json.dumps({"instances": [{"b64": base64.b64encode(image).decode()} for image in images]})
    response = server.invoke(body, "application/json", {"Accept": "text/csv"})
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "text/csv"
    rows = np.loadtxt(io.StringIO(response.text), delimiter=",", ndmin=2)
    np.testing.assert_allclose(rows, reference.for_images(*images), atol=ATOL)


@pytest.mark.parametrize(
    "attribute, expected_count",
    [
        ("top_k=1", 1),
        ("top_k=3", 3),
        ("top_k=100", 6),
        ("top_k = 2", 2),
        ("top_k=4; top_k=2", 2),
        ("", 5),
        # SageMaker passes the header through opaque: clients' own pairs are accepted and ignored
        ("temperature=2", 5),
        ("Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1, top_k=2, tenant", 2),
    ],
)
def test_top_k_from_custom_attributes(server, attribute, expected_count):
    response = server.invoke(jpeg(), headers={"X-Amzn-SageMaker-Custom-Attributes": attribute})
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == expected_count


def test_execution_parameters(server):
    response = server.get("/execution-parameters")
    assert response.status_code == 200
    assert response.json() == {
        "MaxConcurrentTransforms": WORKERS,
        "BatchStrategy": "SINGLE_RECORD",
        "MaxPayloadInMB": PAYLOAD_LIMIT_MB,
    }


# --- bad requests: a 4xx JSON reason, and the worker carries on ---------------------------------


def npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def chunks(total: int, size: int = 64 * 1024):
    """A generator body: requests sends it with Transfer-Encoding: chunked."""
    for start in range(0, total, size):
        yield b"\xff" * min(size, total - start)


def png(size, mode: str = "RGB") -> bytes:
    return encode(Image.new(mode, size), "PNG")


def json_of(*images: bytes) -> bytes:
    return json.dumps({"instances": [{"b64": base64.b64encode(image).decode()} for image in images]}).encode()


GOOD_ARRAY = np.zeros((3, IMAGE_SIZE, IMAGE_SIZE), np.float32)
OVER_LIMIT = PAYLOAD_LIMIT_MB * 1024 * 1024 + 1

BAD_REQUESTS = {
    "empty body": (b"", "image/jpeg", {}, 400, "empty"),
    "not an image": (b"hello", "image/jpeg", {}, 400, "not a readable image"),
    "truncated jpeg": (jpeg()[:600], "image/jpeg", {}, 400, "not a readable image"),
    "decompression bomb": (decompression_bomb_png(), "image/png", {}, 413, "too large"),
    "unsupported content type": (b"some text", "text/plain", {}, 415, "text/plain"),
    "no content type": (jpeg(), "", {}, 415, "not supported"),
    "unsupported accept": (jpeg(), "image/jpeg", {"Accept": "image/png"}, 406, "image/png"),
    "malformed json": (b'{"b64": ', "application/json", {}, 400, "malformed JSON"),
    "malformed base64": (b'{"b64": "not*base64"}', "application/json", {}, 400, "malformed base64"),
    "json with a path, not an image": (b'{"image_path": "/etc/passwd"}', "application/json", {}, 400, "expected"),
    "json base64 of a non-image": (
        json.dumps({"b64": base64.b64encode(b"/etc/passwd").decode()}).encode(),
        "application/json",
        {},
        400,
        "not a readable image",
    ),
    "json empty instances": (b'{"instances": []}', "application/json", {}, 400, "non-empty"),
    "npy wrong shape": (npy(np.zeros((3, 32, 32), np.float32)), "application/x-npy", {}, 400, "shape"),
    "npy wrong channels": (
        npy(np.zeros((2, 1, IMAGE_SIZE, IMAGE_SIZE), np.float32)),
        "application/x-npy",
        {},
        400,
        "shape",
    ),
    "npy wrong dtype": (npy(GOOD_ARRAY.astype(np.float64)), "application/x-npy", {}, 400, "dtype"),
    "npy pickled objects": (
        npy(np.array([{"a": 1}], dtype=object), allow_pickle=True),
        "application/x-npy",
        {},
        400,
        "dtype",
    ),
    "npy truncated": (npy(GOOD_ARRAY)[:-100], "application/x-npy", {}, 400, "does not match"),
    "npy not finite": (npy(np.full_like(GOOD_ARRAY, np.nan)), "application/x-npy", {}, 400, "NaN"),
    "npy garbage": (b"\x93NUMPY garbage", "application/x-npy", {}, 400, "not a .npy"),
    "top_k malformed beside a trace id": (
        jpeg(),
        "image/jpeg",
        {"X-Amzn-SageMaker-Custom-Attributes": "trace-id=abc123; top_k=3x"},
        400,
        "top_k",
    ),
    "top_k not a number": (jpeg(), "image/jpeg", {"X-Amzn-SageMaker-Custom-Attributes": "top_k=two"}, 400, "top_k"),
    "top_k zero": (jpeg(), "image/jpeg", {"X-Amzn-SageMaker-Custom-Attributes": "top_k=0"}, 400, "top_k"),
    "payload over the limit": (b"\xff" * OVER_LIMIT, "image/jpeg", {}, 413, "SAGEMAKER_MAX_PAYLOAD_IN_MB"),
    "json with more images than allowed": (
        json_of(*[png((8, 8))] * (IMAGE_LIMIT + 1)),
        "application/json",
        {},
        413,
        "SAGEMAKER_MAX_IMAGES_PER_REQUEST",
    ),
    "json decoding to more pixels than allowed": (
        json_of(*[png((128, 128))] * 3),
        "application/json",
        {},
        413,
        "SAGEMAKER_MAX_PIXELS_PER_REQUEST",
    ),
    "npy with more images than allowed": (
        npy(np.zeros((IMAGE_LIMIT + 1, 3, IMAGE_SIZE, IMAGE_SIZE), np.float32)),
        "application/x-npy",
        {},
        413,
        "SAGEMAKER_MAX_IMAGES_PER_REQUEST",
    ),
    "a strip that the resize would blow up": (png((1, 20_000), "L"), "image/png", {}, 413, "resized"),
    "a colour conversion that fails": (
        palette_png_with_overlong_transparency(),
        "image/png",
        {},
        400,
        "palette index out of range",
    ),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_bad_request_gets_a_reason_and_the_server_carries_on(server, reference, case):
    body, content_type, headers, status, reason = BAD_REQUESTS[case]
    response = server.invoke(body, content_type, headers)
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert reason in response.json()["error"]
    assert_good_request_works(server, reference)


def test_chunked_payload_over_the_limit(server, reference):
    response = server.invoke(chunks(OVER_LIMIT + 1024 * 1024))
    assert response.status_code == 413, response.text
    assert "SAGEMAKER_MAX_PAYLOAD_IN_MB" in response.json()["error"]
    assert server.invoke(chunks(1000)).status_code == 400  # a small chunked body is read, and is no image
    assert_good_request_works(server, reference)


def test_payload_limit_is_checked_before_reading_the_body(server, reference):
    # Claims 100 MB and sends none of it: only a check of Content-Length can answer.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
        connection.sendall(
            b"POST /invocations HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/jpeg\r\n"
            b"Content-Length: 100000000\r\n\r\n"
        )
        status_line = connection.makefile("rb").readline()
    assert status_line.split()[1] == b"413", status_line
    assert_good_request_works(server, reference)


# --- life cycle ----------------------------------------------------------------------------------

COUNTING_SLOW_MODEL_FN = """
    import os
    import time
    from contract import artifact

    def model_fn(model_dir):
        with open(os.environ["MODEL_FN_CALLS"], "a") as calls:
            calls.write(f"{os.getpid()}\\n")
        time.sleep(4)
        return artifact.load(model_dir)[0]
"""


def test_the_master_loads_the_model_once_and_answers_503_meanwhile(start_server, reference, tmp_path):
    # loading (4 s) outlasts gunicorn's worker timeout (2 s): no worker exists yet, and
    # the workers heartbeat while they warm up, so none is killed
    calls = tmp_path / "model_fn_calls"
    server = start_server(
        COUNTING_SLOW_MODEL_FN,
        SAGEMAKER_MODEL_SERVER_WORKERS="2",
        SAGEMAKER_MODEL_SERVER_TIMEOUT="2",
        MODEL_FN_CALLS=str(calls),
    )
    deadline = time.monotonic() + 60
    while True:  # until the master listens
        assert time.monotonic() < deadline, server.log()
        try:
            started = time.monotonic()
            ping = server.get("/ping")
            break
        except requests.ConnectionError:
            time.sleep(0.1)
    assert ping.status_code == 503 and time.monotonic() - started < 2, ping.text
    assert "loading" in ping.json()["error"]
    loading = server.invoke(jpeg())
    assert loading.status_code == 503 and "loading" in loading.json()["error"]
    assert server.worker_pids() == []  # none forked before the model is there to share
    server.wait_ready(timeout=60)
    assert calls.read_text().split() == [str(server.process.pid)], server.log()  # once, in the master
    # gunicorn forks the workers 0-100 ms apart, and the first may answer /ping before the second
    # exists: wait for both (bounded), then check none was killed for the master's slow load
    workers = server.wait_for_workers(2)
    assert "WORKER TIMEOUT" not in server.log()
    # a user model_fn with every other stage the default
    response = server.invoke(jpeg(), headers={"X-Amzn-SageMaker-Custom-Attributes": "top_k=6"})
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(probabilities_of(response.json()), reference.for_images(jpeg())[0], atol=ATOL)
    assert server.worker_pids() == workers, server.log()


REPORTING_PID = """
    import json
    import os

    def output_fn(prediction, accept):
        return json.dumps({"pid": os.getpid(), "visible": os.environ.get("CUDA_VISIBLE_DEVICES")}), "application/json"
"""


def concurrent_invocations(
    server: ServerProcess, count: int, body: bytes | None = None, content_type: str = "image/jpeg"
) -> list[requests.Response]:
    """`count` requests at once, each on its own connection (so the kernel spreads them over the workers)."""
    start = threading.Barrier(count)

    def one(_):
        start.wait(timeout=30)
        return server.invoke(body or jpeg(), content_type, timeout=30)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


UNBATCHED_PREDICT_FN = """
    import torch

    def predict_fn(data, model):
        with torch.inference_mode():
            return model(data.unsqueeze(0))
"""


@pytest.mark.parametrize("predict", ["batched", "user predict_fn"])
def test_every_worker_answers_as_soon_as_ping_is_200(start_server, predict):
    """The user's bug: /ping 200 from one worker while another still loaded its model (503).
    And the fork's safety: the workers run torch with 2 threads each after the master
    loaded the model. With a user predict_fn the warm-up runs on the worker's main
    thread: had the master's main thread run OpenMP work, it would hang there."""
    code = REPORTING_PID + (UNBATCHED_PREDICT_FN if predict == "user predict_fn" else "")
    server = start_server(code, SAGEMAKER_MODEL_SERVER_WORKERS="3", SAGEMAKER_TORCH_THREADS="2")
    server.wait_ready()
    seen = set()
    for _ in range(8):  # bursts, right after the first /ping 200, until every worker has answered
        responses = concurrent_invocations(server, 12)
        assert [r.status_code for r in responses] == [200] * 12, [r.text for r in responses if r.status_code != 200]
        seen |= {r.json()["pid"] for r in responses}
        if len(seen) == 3:
            break
    assert seen == set(server.worker_pids()), server.log()


def test_ping_is_500_with_the_reason_when_loading_fails(start_server, tmp_path):
    model_dir = make_model_dir(tmp_path / "broken")
    (model_dir / "model.pt").write_bytes(b"not a state dict")
    server = start_server(model_dir=model_dir, SAGEMAKER_MODEL_SERVER_WORKERS="2")
    deadline = time.monotonic() + 60
    while True:
        assert time.monotonic() < deadline, server.log()
        try:
            ping = server.get("/ping")
            if ping.status_code != 503:
                break
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    assert ping.status_code == 500
    # the reason is in the log; the answer names no file (issue 21: a 5xx reveals nothing internal)
    assert "failed to load" in ping.json()["error"] and "model.pt" not in ping.json()["error"]
    assert "model.pt" in server.log()
    assert server.invoke(jpeg()).status_code == 500


SLOW_PREDICT_FN = """
    import time
    import torch

    def predict_fn(data, model):
        time.sleep(3)
        with torch.inference_mode():
            return model(data.unsqueeze(0))
"""


def test_sigterm_lets_the_request_in_flight_finish_and_exits_within_30_s(start_server):
    server = start_server(SLOW_PREDICT_FN, SAGEMAKER_MODEL_SERVER_WORKERS="2")
    server.wait_ready()
    idle = requests.Session()  # a kept-alive connection with nothing in flight must not hold the exit up
    assert idle.get(server.url + "/ping", timeout=30).status_code == 200
    results = []
    client = threading.Thread(target=lambda: results.append(server.invoke(jpeg())))
    client.start()
    time.sleep(1)  # the request is inside predict_fn now
    # (pid, start time): a pid alone may name another process by the time it is checked (a loaded
    # machine hands pids out again within a minute), or a thread of one (/proc/PID answers for threads)
    workers = {pid: proctree.start_ticks(pid) for pid in server.worker_pids()}
    terminated = time.monotonic()
    server.process.terminate()
    client.join(timeout=60)
    assert results and results[0].status_code == 200, results and results[0].text
    assert len(results[0].json()[0]["predictions"]) == 5
    assert server.process.wait(timeout=60) == 0
    assert time.monotonic() - terminated < 30, server.log()  # SageMaker's SIGKILL comes at 30 s
    assert not [pid for pid, ticks in workers.items() if proctree.exists(pid, ticks)], server.log()[-3000:]
    idle.close()
    with pytest.raises(requests.ConnectionError):
        server.get("/ping")


# --- user code: code/inference.py replaces any stage alone ---------------------------------------

NEGATING_MODEL_FN = """
    import torch
    from contract import artifact

    class Negated(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            return -self.model(x)

    def model_fn(model_dir):
        return Negated(artifact.load(model_dir)[0])
"""

MIRRORING_INPUT_FN = """
    import io
    from PIL import Image, ImageOps

    def input_fn(request_body, content_type):
        assert content_type == "image/jpeg"
        return ImageOps.mirror(Image.open(io.BytesIO(request_body)).convert("RGB"))
"""

LIST_PREDICT_FN = """
    import torch

    def predict_fn(data, model):
        with torch.inference_mode():
            return model(data.unsqueeze(0)).tolist()  # logits, as a list
"""

ARGMAX_OUTPUT_FN = """
    import json

    def output_fn(prediction, accept):
        return json.dumps({"argmax": int(prediction.argmax()), "accept": accept}), "application/vnd.argmax+json"
"""

SEED_STYLE_HANDLERS = """
    import io
    import numpy as np
    import torch
    from PIL import Image
    from contract import artifact
    from contract.preprocess import Preprocessing, eval_transform

    def model_fn(model_dir):
        return artifact.load(model_dir)[0]

    def input_fn(request_body, content_type):
        if content_type == "image/jpeg":
            return Image.open(io.BytesIO(request_body))
        raise ValueError(f"unsupported {content_type}")

    def predict_fn(input_object, model):
        batch = torch.from_numpy(eval_transform(input_object.convert("RGB"), Preprocessing.for_image_size(64)))
        with torch.inference_mode():
            return model(batch[None]).numpy()
"""


def logits(reference: Reference, data: bytes) -> np.ndarray:
    with torch.inference_mode():
        return reference.model(torch.from_numpy(reference.preprocess(data))[None]).numpy()[0]


def softmax(values: np.ndarray) -> np.ndarray:
    shifted = np.exp(values - values.max())
    return shifted / shifted.sum()


def test_user_model_fn_alone(start_server, reference):
    server = start_server(NEGATING_MODEL_FN)
    server.wait_ready()
    response = server.invoke(jpeg(), headers={"X-Amzn-SageMaker-Custom-Attributes": "top_k=6"})
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(probabilities_of(response.json()), softmax(-logits(reference, jpeg())), atol=ATOL)


def test_user_input_fn_alone_may_return_a_pil_image(start_server, reference):
    server = start_server(MIRRORING_INPUT_FN)
    server.wait_ready()
    response = server.invoke(jpeg(), headers={"X-Amzn-SageMaker-Custom-Attributes": "top_k=6"})
    assert response.status_code == 200, response.text
    mirrored = ImageOps.mirror(decode_image(jpeg(), reference.prep))
    expected = reference.probabilities(eval_transform(mirrored, reference.prep)[None])[0]
    np.testing.assert_allclose(probabilities_of(response.json()), expected, atol=ATOL)
    assert not np.allclose(expected, reference.for_images(jpeg())[0], atol=1e-2)


def test_user_predict_fn_alone_may_return_a_list_of_logits(start_server, reference):
    server = start_server(LIST_PREDICT_FN)
    server.wait_ready()
    response = server.invoke(jpeg(), headers={"X-Amzn-SageMaker-Custom-Attributes": "top_k=6"})
    assert response.status_code == 200, response.text
    [document] = response.json()  # (1, C) from predict_fn: a batch of one
    np.testing.assert_allclose(probabilities_of(document), reference.for_images(jpeg())[0], atol=ATOL)
    npy_response = server.invoke(jpeg(), headers={"Accept": "application/x-npy"})
    np.testing.assert_allclose(np.load(io.BytesIO(npy_response.content)), reference.for_images(jpeg()), atol=ATOL)


def test_user_output_fn_alone(start_server, reference):
    server = start_server(ARGMAX_OUTPUT_FN)
    server.wait_ready()
    response = server.invoke(jpeg(), headers={"Accept": "*/*"})
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/vnd.argmax+json"
    assert response.json() == {"argmax": int(reference.for_images(jpeg())[0].argmax()), "accept": "application/json"}


def test_seed_style_handlers_with_the_default_output_fn(start_server, reference):
    server = start_server(SEED_STYLE_HANDLERS)
    server.wait_ready()
    images = [jpeg(seed) for seed in range(3)]
    for image in images:
        response = server.invoke(image, headers={"Accept": "application/x-npy"})
        assert response.status_code == 200, response.text
        result = np.load(io.BytesIO(response.content), allow_pickle=False)
        assert np.argmax(result, 1).tolist() == np.argmax(reference.for_images(image), 1).tolist()
    # an exception in user code: 500 with a request id, the reason only in the log
    # under that id, and the worker serves on
    failed = server.invoke(jpeg(), "image/png")
    request_id = failed.headers["X-Request-Id"]
    assert failed.status_code == 500 and request_id in failed.json()["error"]
    assert "unsupported image/png" not in failed.text
    assert f"request {request_id}" in server.log() and "unsupported image/png" in server.log()
    assert server.invoke(jpeg()).status_code == 200


# --- the production shape: resnet50, 133 classes, 224 pixels ---------------------------------------


def test_resnet50_with_133_classes(start_server, tmp_path):
    class_names = [f"{i:03d}.breed_{i}" for i in range(1, 134)]
    model_dir = make_model_dir(tmp_path / "resnet50", backbone="resnet50", class_names=class_names, image_size=224)
    server = start_server(model_dir=model_dir)
    server.wait_ready()
    image = encode(sample_image(7, size=(500, 375)), "JPEG")
    response = server.invoke(image, headers={"Accept": "application/x-npy"})
    assert response.status_code == 200, response.text
    result = np.load(io.BytesIO(response.content), allow_pickle=False)
    expected = Reference(model_dir).for_images(image)
    assert result.shape == (1, 133)
    np.testing.assert_allclose(result, expected, atol=ATOL)
    top = server.invoke(image).json()["predictions"][0]
    assert top["label"] == class_names[int(expected.argmax())]


# --- soak ----------------------------------------------------------------------------------------


def test_soak_no_errors_and_bounded_memory(server, reference):
    images = [jpeg(seed) for seed in range(8)]
    expected = reference.for_images(*images)
    batch_body = json.dumps({"instances": [{"b64": base64.b64encode(image).decode()} for image in images[:3]]})
    local = threading.local()

    def one_request(i: int) -> str | None:
        """None when the answer is right, else what went wrong."""
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        top_k = {"X-Amzn-SageMaker-Custom-Attributes": "top_k=6"}
        try:
            if i % 10 == 0:  # a batch of three in one request, now and then
                response = session.post(
                    server.url + "/invocations",
                    data=batch_body,
                    timeout=30,
                    headers={"Content-Type": "application/json", **top_k},
                )
                got, want = [probabilities_of(d) for d in response.json()], expected[:3]
            else:
                response = session.post(
                    server.url + "/invocations",
                    data=images[i % 8],
                    timeout=30,
                    headers={"Content-Type": "image/jpeg", **top_k},
                )
                got, want = probabilities_of(response.json()), expected[i % 8]
        except (requests.RequestException, ValueError) as exc:
            return f"request {i}: {exc}"
        if response.status_code != 200 or not np.allclose(got, want, atol=ATOL):
            return f"request {i}: {response.status_code} {response.text[:200]}"
        return None

    def run(count: int, time_limit: float) -> list[str]:
        started = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            errors = [e for e in pool.map(one_request, range(count)) if e]
        assert time.monotonic() - started < time_limit, f"{count} requests took over {time_limit} s"
        return errors

    assert run(300, time_limit=120) == []  # warm-up: allocator pools and caches fill
    pss_before = server.pss_bytes()
    assert run(2000, time_limit=400) == []
    pss_after = server.pss_bytes()
    assert pss_after < pss_before * 1.03, f"server PSS grew from {pss_before >> 20} to {pss_after >> 20} MiB"


def test_workers_are_spread_over_the_gpus(start_server):
    """One worker per GPU, each seeing only its own as CUDA_VISIBLE_DEVICES (mapped through the host's list).

    No GPU here: torch finds none and the model runs on the CPU, but the
    pinning is gunicorn's real pre_fork/post_fork on real workers."""
    server = start_server(REPORTING_PID, SM_NUM_GPUS="2", CUDA_VISIBLE_DEVICES="4,6", SAGEMAKER_MODEL_SERVER_WORKERS="")
    server.wait_ready()
    seen: dict[int, str] = {}
    for _ in range(8):  # bursts on new connections: the kernel spreads them over both workers' accepts
        responses = concurrent_invocations(server, 8)
        assert [r.status_code for r in responses] == [200] * 8, [r.text for r in responses if r.status_code != 200]
        seen.update({r.json()["pid"]: r.json()["visible"] for r in responses})
        if len(seen) == 2:
            break
    assert sorted(seen.values()) == ["4", "6"], seen
    assert sorted(seen) == sorted(server.worker_pids())


# --- dynamic batching and default bounds, in the real server ----------------------------------------


@pytest.fixture(scope="module")
def default_server(model_dir, tmp_path_factory):
    """Every limit at its default, 2 workers; batches wait up to 200 ms for company."""
    with ServerProcess(
        model_dir,
        tmp_path_factory.mktemp("logs") / "default_server.log",
        SAGEMAKER_MODEL_SERVER_WORKERS="2",
        SAGEMAKER_BATCH_WAIT_MS="200",
    ) as process:
        yield process


def test_concurrent_requests_share_forward_passes(default_server, reference):
    lone = default_server.invoke(jpeg())
    assert lone.status_code == 200 and lone.headers["X-Forward-Batch-Size"] == "1", lone.headers
    responses = concurrent_invocations(default_server, 16)
    assert [r.status_code for r in responses] == [200] * 16
    sizes = [int(r.headers["X-Forward-Batch-Size"]) for r in responses]
    assert 1 < max(sizes) <= 8, sizes  # shared passes, never above SAGEMAKER_BATCH_SIZE
    for response in responses:  # and each still gets its own answer
        np.testing.assert_allclose(probabilities_of(response.json()), reference.for_images(jpeg())[0], atol=ATOL)


def test_six_mb_of_tiny_base64_pngs_is_refused_before_decoding(default_server, reference):
    """The user's body: ~80,000 8x8 PNGs, which would become ~50 GB of input tensors."""
    tiny = png((8, 8))
    body = json_of(*[tiny] * (6_000_000 // (len(base64.b64encode(tiny)) + 12)))
    started = time.monotonic()
    response = default_server.invoke(body, "application/json")
    assert response.status_code == 413, response.text
    assert "SAGEMAKER_MAX_IMAGES_PER_REQUEST" in response.json()["error"]
    assert time.monotonic() - started < 10
    assert_good_request_works(default_server, reference)


def test_every_worker_returns_idle_memory_in_the_background(server):
    """jemalloc's background thread, started in each worker (a fork does not inherit
    the master's): without it an idle worker keeps its last batch's pages for ever."""
    workers = server.worker_pids()
    assert len(workers) == WORKERS
    for pid in workers:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert any(b"libjemalloc" in entry for entry in environ if entry.startswith(b"LD_PRELOAD="))
        threads = {Path(task, "comm").read_text().strip() for task in Path(f"/proc/{pid}/task").iterdir()}
        assert "jemalloc_bg_thd" in threads, sorted(threads)
    assert "jemalloc returns idle memory in the background" in server.log()
