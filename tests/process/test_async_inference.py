"""Asynchronous inference (SAGEMAKER_ASYNC_INFERENCE=true) against the real server: container/serve
(gunicorn and its worker) on 127.0.0.1, requests of thousands of images as SageMaker's asynchronous
endpoints send them (a zip, a tar, JSON lines), and hostile ones."""

from __future__ import annotations

import base64
import io
import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import requests

from crafted_png import decompression_bomb_png
from helpers.serving import Reference, ServerProcess, encode, make_model_dir, sample_image

IMAGE_SIZE = 32  # a small network input: thousands of images in seconds on two cores
MAX_IMAGES = 3000
MAX_PAYLOAD_MB = 400
IMAGE_MB = 6  # SAGEMAKER_MAX_PAYLOAD_IN_MB: one image's bound
LINES = "application/jsonlines"


def images(count: int, offset: int = 0) -> list[tuple[str, bytes]]:
    """Small PNGs and JPEGs named by number."""
    return [
        (
            f"photos/{i:05d}.{'png' if i % 2 else 'jpg'}",
            encode(sample_image(i % 97, (40, 36)), "PNG" if i % 2 else "JPEG"),
        )
        for i in range(offset, offset + count)
    ]


def zip_of(files) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files:
            archive.writestr(name, data)
    return buffer.getvalue()


def write_tar(path: Path, files) -> Path:
    with tarfile.open(path, "w") as archive:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def json_lines_of(files) -> bytes:
    return b"".join(
        json.dumps({"name": name, "b64": base64.b64encode(data).decode()}).encode() + b"\n" for name, data in files
    )


def answer(response: requests.Response) -> list[dict]:
    assert response.status_code == 200, response.text[:500]
    assert response.headers["Content-Type"] == LINES
    return [json.loads(text) for text in response.text.splitlines()]


def peak_rss_bytes(pid: int) -> int:
    """The worker's peak resident memory so far (VmHWM)."""
    for text in Path(f"/proc/{pid}/status").read_text().splitlines():
        if text.startswith("VmHWM:"):
            return int(text.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("async") / "model", image_size=IMAGE_SIZE)


@pytest.fixture(scope="module")
def reference(model_dir):
    return Reference(model_dir)


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    with ServerProcess(
        model_dir,
        tmp_path_factory.mktemp("async-logs") / "server.log",
        SAGEMAKER_ASYNC_INFERENCE="true",
        SAGEMAKER_ASYNC_MAX_PAYLOAD_IN_MB=str(MAX_PAYLOAD_MB),
        SAGEMAKER_ASYNC_MAX_IMAGES_PER_REQUEST=str(MAX_IMAGES),
        SAGEMAKER_MAX_PAYLOAD_IN_MB=str(IMAGE_MB),
    ) as process:
        yield process


def test_a_zip_of_images_is_answered_line_by_line_as_the_model_answers_each(server, reference):
    files = images(100)
    files[7] = ("notes/readme.txt", b"this is no image")
    files[8] = ("photos/cut.jpg", files[9][1][:40])
    files[10] = ("photos/bomb.png", decompression_bomb_png())  # 900 MB of pixels in ~100 KB
    lines = answer(server.invoke(zip_of(files), "application/zip", {"X-Amzn-SageMaker-Custom-Attributes": "top_k=2"}))
    assert [line["name"] for line in lines] == [name for name, _ in files]
    assert "error" in lines[7] and "error" in lines[8]
    assert "too large" in lines[10]["error"]
    good = [i for i in range(len(files)) if i not in (7, 8, 10)]
    expected = reference.for_images(*[files[i][1] for i in good])
    for row, i in zip(expected, good, strict=True):
        predictions = lines[i]["predictions"]
        assert len(predictions) == 2
        assert predictions[0]["label"] == reference.class_names[int(np.argmax(row))]
        assert abs(predictions[0]["probability"] - float(row.max())) < 1e-4


def test_tar_and_json_lines_answer_as_zip_does(server):
    files = images(40, offset=1000)
    by_zip = answer(server.invoke(zip_of(files), "application/zip"))
    for kind, body in (
        ("application/x-tar", _tar_bytes(files)),
        (LINES, json_lines_of(files)),
        ("application/x-ndjson", json_lines_of(files)),
    ):
        lines = answer(server.invoke(body, kind))
        assert [line["name"] for line in lines] == [line["name"] for line in by_zip]
        for mine, theirs in zip(lines, by_zip, strict=True):
            assert mine["predictions"][0]["index"] == theirs["predictions"][0]["index"]


def _tar_bytes(files) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_thousands_of_images_in_a_large_tar_keep_the_worker_small(server, tmp_path):
    """2,000 images and 48 members of 5 MB of noise (each an error line): 250 MB streamed from a
    file, spooled by the server; the worker's peak memory grows by far less than the request."""
    (worker,) = server.wait_for_workers(1)
    rng = np.random.default_rng(0)
    noise = [(f"noise/{i}.jpg", rng.integers(0, 256, 5 << 20, dtype=np.uint8).tobytes()) for i in range(48)]
    files = images(2000, offset=5000)
    mixed = files[:1000] + noise + files[1000:]
    request = write_tar(tmp_path / "large.tar", mixed)
    size = request.stat().st_size
    assert size > 240 << 20
    before = peak_rss_bytes(worker)
    with open(request, "rb") as body:
        response = requests.post(
            server.url + "/invocations", data=body, headers={"Content-Type": "application/x-tar"}, timeout=600
        )
    lines = answer(response)
    grown = peak_rss_bytes(worker) - before
    assert [line["name"] for line in lines] == [name for name, _ in mixed]
    assert sum("predictions" in line for line in lines) == 2000
    assert all("error" in line for line in lines[1000:1048])
    assert grown < 48 << 20, f"the worker's peak memory grew by {grown >> 20} MB for a {size >> 20} MB request"
    print(f"\n{size >> 20} MB, {len(mixed)} members: the worker's peak RSS grew by {grown >> 20} MB")


def test_real_time_requests_are_answered_as_before(server, reference):
    image = encode(sample_image(3), "JPEG")
    response = server.invoke(image, "image/jpeg")
    assert response.status_code == 200
    expected = reference.for_images(image)[0]
    assert response.json()["predictions"][0]["index"] == int(np.argmax(expected))


def oversized_pax_header() -> bytes:
    """A pax header claiming 8 MB of fields (tarfile would read them all into memory)."""
    header = tarfile.TarInfo("pax")
    header.type, header.size = tarfile.XHDTYPE, 8 << 20
    return header.tobuf(tarfile.USTAR_FORMAT) + bytes(8 << 20)


@pytest.mark.parametrize(
    ("kind", "body", "status", "says"),
    [
        ("application/zip", b"PK\x03\x04 this is no zip", 400, "malformed zip"),
        ("application/x-tar", b"x" * 1024, 400, "malformed tar"),
        ("application/zip", zip_of([(f"{i}/", b"") for i in range(MAX_IMAGES + 1)]), 413, "MAX_IMAGES"),
        (LINES, b"{}\n" * (MAX_IMAGES + 1), 413, "MAX_IMAGES"),
        ("application/x-tar", b"", 400, "empty"),
        ("application/x-tar", oversized_pax_header() + _tar_bytes(images(1)), 400, "extended header"),
    ],
)
def test_requests_malformed_or_too_large_as_a_whole_are_refused_before_any_line(server, kind, body, status, says):
    response = server.invoke(body, kind)
    assert response.status_code == status
    assert says in response.json()["error"]


def test_a_zip_bomb_is_413_before_it_is_unpacked(server):
    # 600 members of 1 MB of zeros: 600 MB unpacked from about 600 KB, over the 400 MB bound
    buffer = io.BytesIO()
    zeros = bytes(1 << 20)
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for i in range(600):
            archive.writestr(f"{i}.png", zeros)
    assert len(buffer.getvalue()) < 2 << 20
    response = server.invoke(buffer.getvalue(), "application/zip")
    assert response.status_code == 413
    assert "SAGEMAKER_ASYNC_MAX_PAYLOAD_IN_MB" in response.json()["error"]


def test_a_body_over_the_byte_limit_is_413_from_its_length(server):
    response = requests.post(
        server.url + "/invocations",
        data=b"",
        headers={"Content-Type": "application/zip", "Content-Length": str((MAX_PAYLOAD_MB << 20) + 1)},
        timeout=30,
    )
    assert response.status_code == 413
    assert "SAGEMAKER_ASYNC_MAX_PAYLOAD_IN_MB" in response.json()["error"]


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Accept": "text/csv"}, 406),
        ({"Accept": "image/png, text/html"}, 406),
        ({"X-Amzn-SageMaker-Custom-Attributes": "top_k=x"}, 400),
    ],
)
def test_a_bad_accept_or_top_k_is_refused(server, headers, status):
    assert server.invoke(zip_of(images(1)), "application/zip", {"Accept": "text/csv, */*"}).status_code == 200
    response = server.invoke(zip_of(images(2)), "application/zip", headers)
    assert response.status_code == status and response.json()["error"]


def test_past_its_time_a_request_ends_with_one_closing_line(model_dir, tmp_path):
    with ServerProcess(
        model_dir,
        tmp_path / "server.log",
        SAGEMAKER_ASYNC_INFERENCE="true",
        SAGEMAKER_ASYNC_REQUEST_TIMEOUT_S="2",
    ) as server:
        files = images(2000)  # 14 s on two idle cores
        lines = answer(server.invoke(zip_of(files), "application/zip", timeout=120))
    assert 0 < len(lines) < len(files)
    assert "SAGEMAKER_ASYNC_REQUEST_TIMEOUT_S" in lines[-1]["error"] and "name" not in lines[-1]
    assert [line["name"] for line in lines[:-1]] == [name for name, _ in files[: len(lines) - 1]]


def test_a_server_not_asynchronous_refuses_archives(model_dir, tmp_path):
    with ServerProcess(model_dir, tmp_path / "server.log") as server:
        response = server.invoke(zip_of(images(2)), "application/zip")
    assert response.status_code == 415


def test_a_model_with_its_own_output_fn_answers_each_image_through_its_stages(tmp_path, reference):
    code = """
        import json

        def output_fn(prediction, accept):
            return json.dumps({"best": int(prediction.argmax()), "name": "overwritten"}), accept
    """
    model_dir = make_model_dir(tmp_path / "model", image_size=IMAGE_SIZE, inference_code=code)
    files = images(6)
    files[2] = ("broken.jpg", b"\xff\xd8 not really")
    with ServerProcess(model_dir, tmp_path / "server.log", SAGEMAKER_ASYNC_INFERENCE="true") as server:
        lines = answer(server.invoke(json_lines_of(files), LINES))
    assert [line["name"] for line in lines] == [name for name, _ in files]
    assert "error" in lines[2]
    expected = reference.for_images(*[data for i, (_, data) in enumerate(files) if i != 2]).argmax(1)
    assert [line["best"] for i, line in enumerate(lines) if i != 2] == expected.tolist()
