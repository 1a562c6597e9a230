"""The serving image as SageMaker runs it: `docker run -p ... -v MODEL:/opt/ml/model IMAGE serve`."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import subprocess
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image, ImageDraw

import container_engine
from contract.spec import images
from contract.spec.artifact import WEIGHTS_FILE
from helpers.serving import (
    CLASS_NAMES,
    Reference,
    assert_like_fp32,
    encode,
    free_port,
    make_model_dir,
    sample_image,
)
from helpers.training import build_image, train_converged_model
from localnet import wait_healthy
from server.reservation import reservation

IMAGE = images.serve_image("cpu")
GPU_IMAGE = images.serve_image("gpu")
# uncompressed, as `ENGINE image inspect` counts it (issue #16); MB = 10**6 bytes, as the README counts
MAX_IMAGE_BYTES = {"cpu": 1_000 * 10**6, "gpu": 6_000 * 10**6}


def engine_run(engine: container_engine.Engine, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([engine.cli, *args], env=engine.env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def serve_image(engine):
    build_image(engine, "serve", "cpu")
    return IMAGE


@pytest.fixture(scope="module")
def converged_model(sample_data, tmp_path_factory):
    """A trained model with the trainer's calibration sample: the precision modes' rounding is judged on it."""
    return train_converged_model(tmp_path_factory.mktemp("converged"), sample_data)


@pytest.fixture(scope="module")
def gpu_serve_image(engine):
    build_image(engine, "serve", "gpu")
    return GPU_IMAGE


@contextlib.contextmanager
def serving(engine, image: str, model_dir, memory: str | None = None, **env: str):
    """`ENGINE run -d -p 127.0.0.1:PORT:8080 -v MODEL:/opt/ml/model:ro -e ... IMAGE serve`, removed afterwards;
    `memory`: the container's memory limit (`--memory`, as an instance's size sets it)."""
    for path in [model_dir, *model_dir.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)  # the mount is read by the container's user
    port = free_port()
    env_args = [arg for key, value in env.items() for arg in ("-e", f"{key}={value}")]
    started = engine_run(
        engine,
        "run",
        "-d",
        "--rm",
        "-p",
        f"127.0.0.1:{port}:8080",
        *(["--memory", memory] if memory else []),
        *env_args,
        "-v",
        f"{model_dir}:/opt/ml/model:ro",
        image,
        "serve",
    )
    assert started.returncode == 0, started.stderr
    container_id = started.stdout.strip()
    try:
        yield {"id": container_id, "url": f"http://127.0.0.1:{port}", "model_dir": model_dir}
    finally:
        engine_run(engine, "stop", "-t", "10", container_id)
        engine_run(engine, "rm", "-f", container_id)


@pytest.fixture
def container(engine, serve_image, tmp_path):
    with serving(engine, serve_image, make_model_dir(tmp_path / "model")) as running:
        yield running


def wait_for_ping(engine, container, timeout: float = 180) -> None:
    def running():  # the port is forwarded before gunicorn listens: connection errors until then
        running = engine_run(engine, "inspect", "-f", "{{.State.Running}}", container["id"])
        assert running.stdout.strip() == "true", engine_run(engine, "logs", container["id"]).stderr

    try:
        wait_healthy(container["url"], timeout, check=running)
    except TimeoutError:
        raise AssertionError("no /ping 200: " + engine_run(engine, "logs", container["id"]).stderr) from None


def classify_and_check(container) -> None:
    image = encode(sample_image(5), "JPEG")
    response = requests.post(
        container["url"] + "/invocations",
        data=image,
        timeout=60,
        headers={"Content-Type": "image/jpeg", "Accept": "application/json"},
    )
    assert response.status_code == 200, response.text
    best = response.json()["predictions"][0]
    expected = Reference(container["model_dir"]).for_images(image)[0]
    assert best["label"] == CLASS_NAMES[int(expected.argmax())]
    # the image's torch build differs from the tests' one: compare loosely
    assert np.isclose(best["probability"], expected.max(), atol=1e-3)


def test_container_classifies_a_jpeg(engine, container):
    wait_for_ping(engine, container)
    classify_and_check(container)
    # serve became gunicorn's master (PID 1, so SIGTERM reaches it) with jemalloc preloaded
    maps = engine_run(engine, "exec", container["id"], "grep", "-c", "libjemalloc", "/proc/1/maps")
    assert maps.returncode == 0 and int(maps.stdout) > 0, maps.stdout + maps.stderr
    # ... configured so that large activations stay mapped between forward passes (see container/serve)
    environ = engine_run(engine, "exec", container["id"], "cat", "/proc/1/environ")
    assert "MALLOC_CONF=oversize_threshold:0" in environ.stdout.split("\0"), environ.stderr


def image_packages(engine, image: str) -> set[str]:
    """The distributions installed in the image's Python (it has no pip to list them)."""
    listed = engine_run(
        engine,
        "run",
        "--rm",
        image,
        "python",
        "-c",
        "import importlib.metadata as m; print('\\n'.join(d.metadata['Name'] for d in m.distributions()))",
    )
    assert listed.returncode == 0, listed.stderr
    return {line.strip().lower().replace("_", "-") for line in listed.stdout.splitlines()}  # PEP 503 names


def image_bytes(engine, image: str) -> int:
    inspected = engine_run(engine, "image", "inspect", "--format", "{{.Size}}", image)
    assert inspected.returncode == 0, inspected.stderr
    return int(inspected.stdout)


def test_image_holds_no_training_packages(engine, serve_image):
    installed = image_packages(engine, serve_image)
    assert {"torch", "flask", "gunicorn", "pillow", "numpy", "prometheus-client"} <= installed
    # nothing installs at run time: no installers either (Dockerfile.serve)
    assert not installed & {"torchvision", "smdebug", "sagemaker-training", "pip", "setuptools"}


def test_cpu_image_is_at_most_1000_mb(engine, serve_image):
    """What Dockerfile.serve leaves out (torch's tests and headers, apt's caches, ...) stays out;
    the tests below prove that what inference needs is still in."""
    size = image_bytes(engine, serve_image)
    assert size <= MAX_IMAGE_BYTES["cpu"], f"{serve_image} is {size / 1e6:,.0f} MB"


def sample_jpegs(sample_data, count: int = 8) -> list[bytes]:
    """The first `count` JPEGs of the sample data's test split: the precision and runtime modes' inputs."""
    files = sorted(p for p in (sample_data / "test").rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))[:count]
    assert len(files) == count
    return [path.read_bytes() for path in files]


def served_probabilities(container, images: list[bytes]) -> np.ndarray:
    """Each image's class probabilities as the container answers them (application/x-npy), one row each."""
    rows = []
    for data in images:
        response = requests.post(
            container["url"] + "/invocations",
            data=data,
            timeout=60,
            headers={"Content-Type": "image/jpeg", "Accept": "application/x-npy"},
        )
        assert response.status_code == 200, response.text
        rows.append(np.load(io.BytesIO(response.content)))
    return np.concatenate(rows)


@pytest.mark.parametrize(
    "precision, compile_mode, flags, atol",
    [
        ("bf16", "none", "avx2 avx512_bf16", 0.02),  # the flags claim native bf16: the conversion runs on every CPU
        ("int8", "none", "avx2", 0.3),  # torch.ao's FX quantization, calibrated on the artifact's sample
        ("fp32", "jit", "avx2", 1e-3),  # torch.jit trace + freeze
        ("int8", "jit", "avx2 avx512_vnni", 0.3),
    ],
)
def test_precision_modes_in_the_image(
    precision, compile_mode, flags, atol, engine, serve_image, converged_model, sample_data
):
    """Each mode runs in the image, not only against the test environment's torch (test_precision.py):
    what Dockerfile.serve removes must include nothing these modes load (sympy for torch.fx, ...)."""
    model_dir = converged_model
    images = sample_jpegs(sample_data)
    with serving(
        engine,
        serve_image,
        model_dir,
        SAGEMAKER_MODEL_PRECISION=precision,
        SAGEMAKER_MODEL_COMPILE=compile_mode,
        SAGEMAKER_CPU_FLAGS=flags,
    ) as running:
        wait_for_ping(engine, running)
        probabilities = served_probabilities(running, images)
        log = engine_run(engine, "logs", running["id"])
    assert f"precision {precision} (compile {compile_mode}) in effect" in log.stdout + log.stderr, log.stderr
    assert_like_fp32(probabilities, Reference(model_dir).for_images(*images), precision, atol)


@pytest.mark.parametrize(
    "precision, flags, atol",
    [
        ("fp32", "avx2", 1e-4),
        ("bf16", "avx2 avx512_bf16", 0.03),  # the flags claim native bf16: OpenVINO's hint is set either way
        ("int8", "avx2 avx512_vnni", 0.3),  # FakeQuantize calibrated on the artifact's sample
    ],
)
def test_openvino_runtime_in_the_image(precision, flags, atol, engine, serve_image, converged_model, sample_data):
    """SAGEMAKER_MODEL_RUNTIME=openvino in the image: converted in a child of the master, compiled by each
    worker after the fork, under glibc's malloc (its CPU plugin aborts under jemalloc), answers like fp32."""
    images = sample_jpegs(sample_data)
    with serving(
        engine,
        serve_image,
        converged_model,
        SAGEMAKER_MODEL_RUNTIME="openvino",
        SAGEMAKER_MODEL_PRECISION=precision,
        SAGEMAKER_CPU_FLAGS=flags,
    ) as running:
        wait_for_ping(engine, running)
        probabilities = served_probabilities(running, images)
        log = engine_run(engine, "logs", running["id"])
    text = log.stdout + log.stderr
    assert f"runtime openvino precision {precision} in effect: top-1 agreement with fp32" in text, text[-3000:]
    assert "falls back" not in text and "MALLOC_ARENA_MAX=2" in text, text[-3000:]
    assert_like_fp32(probabilities, Reference(converged_model).for_images(*images), precision, atol)


def test_onnxruntime_is_not_in_the_cpu_image_and_torch_serves_instead(engine, serve_image, tmp_path):
    """ONNX Runtime stays out of the CPU image (its 1,000 MB bound): asked for, the server says so and serves."""
    with serving(
        engine, serve_image, make_model_dir(tmp_path / "model"), SAGEMAKER_MODEL_RUNTIME="onnxruntime"
    ) as running:
        wait_for_ping(engine, running)
        classify_and_check(running)
        log = engine_run(engine, "logs", running["id"])
    assert "SAGEMAKER_MODEL_RUNTIME=onnxruntime falls back to torch" in log.stdout + log.stderr


def test_the_image_as_an_inference_component_copy(engine, serve_image, tmp_path):
    """A copy reserved as deploy-component reserves it (server/reservation.py for 2 cores and this model's
    weights), in a container limited to that memory: it serves, with the reserved workers and threads."""
    model_dir = make_model_dir(tmp_path / "model")
    copy = reservation(2, (model_dir / WEIGHTS_FILE).stat().st_size)
    with serving(engine, serve_image, model_dir, memory=f"{copy.memory_mb}m", **copy.environment()) as running:
        wait_for_ping(engine, running)
        classify_and_check(running)
        metrics = requests.get(running["url"] + "/metrics", timeout=10)
        log = engine_run(engine, "logs", running["id"])
    assert metrics.status_code == 200 and "byoc_" in metrics.text
    text = log.stdout + log.stderr
    assert f"workers={copy.workers}" in text and f"torch_threads={copy.torch_threads}" in text, text[-2000:]


def test_gpu_variant_builds_and_serves_on_a_host_without_gpus(engine, gpu_serve_image, tmp_path):
    """The CUDA build of torch, without triton or training packages; with no GPU it serves on the CPU."""
    cuda = engine_run(
        engine,
        "run",
        "--rm",
        gpu_serve_image,
        "python",
        "-c",
        "import torch; print(torch.version.cuda, torch.cuda.is_available())",
    )
    assert cuda.returncode == 0, cuda.stderr
    version, available = cuda.stdout.split()
    assert version != "None" and available == "False", cuda.stdout
    installed = image_packages(engine, gpu_serve_image)
    assert {"torch", "flask", "gunicorn"} <= installed
    assert not installed & {"triton", "torchvision", "smdebug", "sagemaker-training"}
    assert image_bytes(engine, gpu_serve_image) <= MAX_IMAGE_BYTES["gpu"]
    with serving(engine, gpu_serve_image, make_model_dir(tmp_path / "model")) as running:
        wait_for_ping(engine, running)
        classify_and_check(running)


def test_multi_model_endpoint_in_the_image(engine, serve_image, tmp_path):
    """SageMaker's multi-model layout: models under /opt/ml/models/<name>/model, no /opt/ml/model."""
    label = engine_run(
        engine,
        "inspect",
        "-f",
        '{{index .Config.Labels "com.amazonaws.sagemaker.capabilities.multi-models"}}',
        serve_image,
    )
    assert label.stdout.strip() == "true", label.stdout + label.stderr
    models = tmp_path / "models"
    for name, classes in (("first", CLASS_NAMES[:2]), ("second", CLASS_NAMES)):
        make_model_dir(models / name / "model", class_names=classes)
    for path in [models, *models.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)  # read by the container's user
    (models / "escape").symlink_to("/opt/program")  # inside the root, pointing out of it (at the server's code)
    port = free_port()
    started = engine_run(
        engine,
        "run",
        "-d",
        "--rm",
        "-p",
        f"127.0.0.1:{port}:8080",
        "-e",
        "SAGEMAKER_MULTI_MODEL=true",
        "-e",
        "SAGEMAKER_BODY_READ_TIMEOUT_S=2",
        "-v",
        f"{models}:/opt/ml/models:ro",
        serve_image,
        "serve",
    )
    assert started.returncode == 0, started.stderr
    running = {"id": started.stdout.strip(), "url": f"http://127.0.0.1:{port}"}
    try:
        wait_for_ping(engine, running)
        image = encode(sample_image(5), "JPEG")
        for name, classes in (("first", 2), ("second", len(CLASS_NAMES))):
            loaded = requests.post(
                running["url"] + "/models",
                timeout=120,
                json={"model_name": name, "url": f"/opt/ml/models/{name}/model"},
            )
            assert loaded.status_code == 200, loaded.text
            answer = requests.post(
                running["url"] + f"/models/{name}/invoke",
                data=image,
                timeout=60,
                headers={"Content-Type": "image/jpeg", "X-Amzn-SageMaker-Target-Model": name},
            )
            assert answer.status_code == 200, answer.text
            assert len(answer.json()["predictions"]) == min(classes, 5)
        assert (
            requests.post(
                running["url"] + "/models",
                timeout=60,
                json={"model_name": "first", "url": "/opt/ml/models/first/model"},
            ).status_code
            == 409
        )
        scraped = requests.get(running["url"] + "/metrics", timeout=30).text
        assert "byoc_models_loaded 2.0" in scraped, scraped
        hostile_requests_in_the_image(running["url"])
    finally:
        engine_run(engine, "stop", "-t", "10", running["id"])
        engine_run(engine, "rm", "-f", running["id"])


def hostile_requests_in_the_image(url: str) -> None:
    """The image's answers to a few hostile requests (tests/process has each in depth): a url
    outside /opt/ml/models, by path or by link, is one 400 that tells nothing of what exists;
    deep JSON is a 400; a body that trickles in is cut off at the read deadline."""
    refusals = set()
    for target in ("/opt/program", "/nonexistent", "/opt/ml/models/escape", "/opt/ml/models/../../../etc", "models"):
        answer = requests.post(url + "/models", timeout=60, json={"model_name": "x", "url": target})
        assert answer.status_code == 400, (target, answer.text)
        refusals.add(answer.json()["error"])
    assert len(refusals) == 1 and "/opt/program" not in refusals.pop()
    deep = requests.post(url + "/models", timeout=60, data=b"[" * 60_000, headers={"Content-Type": "application/json"})
    assert deep.status_code == 400, deep.text  # nested past 32, inside /models' 64 KB
    large = requests.post(
        url + "/models", timeout=60, data=b" " * 100_000, headers={"Content-Type": "application/json"}
    )
    assert large.status_code == 413 and "64 KB" in large.json()["error"], large.text
    with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=30) as slow:
        slow.sendall(
            b"POST /models/first/invoke HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 1000\r\n\r\n"
        )
        started = time.monotonic()
        answer = b""
        while time.monotonic() - started < 20:  # a byte a second: the 2 s deadline must cut it off
            try:
                slow.sendall(b"x")
                chunk = slow.recv(4096, socket.MSG_DONTWAIT)
            except BlockingIOError:
                chunk = b""
            except OSError:
                break  # the server closed the connection
            if chunk:
                answer += chunk
                break
            time.sleep(1)
        assert time.monotonic() - started < 15, "the slow body was not cut off"
        assert not answer or answer.startswith(b"HTTP/1.1 408"), answer[:200]


def flat_blocks(mode: str, side: int, seed: int) -> Image.Image:
    """Large flat rectangles: a few hundred KB as PNG, side x side pixels decoded."""
    rng = np.random.default_rng(seed)
    image = Image.new(mode, (side, side))
    draw = ImageDraw.Draw(image)
    bands = len(image.getbands())
    for _ in range(100):
        x, y = (int(v) for v in rng.integers(0, side, 2))
        colour = tuple(int(v) for v in rng.integers(0, 256, bands))
        draw.rectangle([x, y, x + side // 8, y + side // 8], fill=colour if bands > 1 else colour[0])
    return image


def test_a_burst_of_decompression_heavy_images_in_3_gb_kills_no_worker(engine, serve_image, tmp_path):
    """--memory 3g, 2 workers x 16 threads, 64 requests of images a few hundred KB each that
    decode to 36 or 64 million pixels (before the worker's decode budget, ~1 GB apiece at
    once). The default budget, from the container's memory limit, lets each worker decode
    about one at a time; the 64 Mpx ones exceed it (413). No worker is killed."""
    side = 6000
    palette = flat_blocks("P", side, 2)
    palette.putpalette(bytes(range(256)) * 3)
    grey16 = Image.fromarray(np.asarray(flat_blocks("L", 750, 1), np.uint16) * 257).resize((side, side))
    buffers = {name: io.BytesIO() for name in ("rgba", "grey16", "palette", "progressive", "rgba 8000")}
    flat_blocks("RGBA", side, 0).save(buffers["rgba"], "PNG")
    grey16.save(buffers["grey16"], "PNG")
    palette.save(buffers["palette"], "PNG", transparency=bytes(range(256)))
    flat_blocks("RGB", side, 3).save(buffers["progressive"], "JPEG", quality=30, progressive=True)
    flat_blocks("RGBA", 8000, 4).save(buffers["rgba 8000"], "PNG")
    bodies = [(name, buffer.getvalue()) for name, buffer in buffers.items()]
    with serving(
        engine,
        serve_image,
        make_model_dir(tmp_path / "model"),
        memory="3g",
        SAGEMAKER_MODEL_SERVER_WORKERS="2",
        SAGEMAKER_MODEL_SERVER_THREADS="16",
    ) as running:
        wait_for_ping(engine, running)
        start = threading.Barrier(64)

        def one(i: int) -> tuple[str, int]:
            name, body = bodies[i % len(bodies)]
            start.wait(timeout=60)
            try:
                response = requests.post(
                    running["url"] + "/invocations", data=body, timeout=120, headers={"Content-Type": "image/png"}
                )
            except requests.RequestException as exc:
                return name, f"{type(exc).__name__}"
            return name, response.status_code

        started = time.monotonic()
        with ThreadPoolExecutor(64) as pool:
            answers = list(pool.map(one, range(64)))
        took = time.monotonic() - started
        peak = engine_run(  # cgroup v2, or v1
            engine,
            "exec",
            running["id"],
            "sh",
            "-c",
            "cat /sys/fs/cgroup/memory.peak || cat /sys/fs/cgroup/memory/memory.max_usage_in_bytes",
        ).stdout.strip()
        print(f"burst of 64 in {took:.0f} s; container memory.peak {peak or '?'}; {sorted(map(str, answers))}")
        logs = engine_run(engine, "logs", running["id"])
        log = logs.stdout + logs.stderr
        # gunicorn's words for a worker killed (the OOM killer's SIGKILL) or gone, and replaced
        assert "was sent" not in log and "exited with" not in log and log.count("Booting worker") == 2, log[-3000:]
        assert all(status in (200, 413, 503) for _, status in answers), answers
        assert all(status == 413 for name, status in answers if name == "rgba 8000"), answers
        assert all(any(s == 200 for n, s in answers if n == name) for name, _ in bodies[:4]), answers
        assert took < 300
        classify_and_check(running)


def test_asynchronous_requests_in_the_image(engine, serve_image, tmp_path):
    """SAGEMAKER_ASYNC_INFERENCE=true in the image: a zip of 300 images answered line by line, the body
    spooled to the image's scratch folder (docs/async-inference.md)."""
    model_dir = make_model_dir(tmp_path / "model")
    files = [(f"photos/{i}.jpg", encode(sample_image(i % 17), "JPEG")) for i in range(300)]
    files[5] = ("notes.txt", b"no image")
    body = io.BytesIO()
    with zipfile.ZipFile(body, "w") as archive:
        for name, data in files:
            archive.writestr(name, data)
    with serving(engine, serve_image, model_dir, SAGEMAKER_ASYNC_INFERENCE="true") as running:
        wait_for_ping(engine, running)
        response = requests.post(
            running["url"] + "/invocations",
            data=body.getvalue(),
            headers={"Content-Type": "application/zip"},
            timeout=600,
        )
    assert response.status_code == 200, response.text[:500]
    lines = [json.loads(text) for text in response.text.splitlines()]
    assert [line["name"] for line in lines] == [name for name, _ in files]
    assert "error" in lines[5]
    expected = Reference(model_dir).for_images(files[0][1])[0]
    assert lines[0]["predictions"][0]["label"] == CLASS_NAMES[int(expected.argmax())]
