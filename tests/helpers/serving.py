"""Helpers for the serving tests: model directories, a real `serve` process, reference predictions."""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import subprocess
import sys
import tarfile
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import requests
import torch
from PIL import Image

from contract import artifact
from contract.model import Architecture, build_classifier
from contract.preprocess import Preprocessing, decode_image, eval_transform
from localnet import wait_healthy
from trainer.heldout import spread

ROOT = Path(__file__).resolve().parents[2]
CONTAINER = ROOT / "container"
from crafted_png import png_chunk  # noqa: E402
from localnet import free_port  # noqa: E402

CLASS_NAMES = ["cat", "dog", "fish", "bird", "frog", "horse"]
IMAGE_SIZE = 64


def make_model_dir(
    path: Path,
    backbone: str = "resnet18",
    class_names=CLASS_NAMES,
    image_size: int = IMAGE_SIZE,
    inference_code: str | None = None,
) -> Path:
    """A model directory as the trainer writes it, with seeded random weights.

    The head's weights are scaled up so the classes are far apart: a label
    must not flip between torch builds over rounding noise.
    """
    torch.manual_seed(0)
    arch = Architecture(backbone=backbone, num_classes=len(class_names))
    model = build_classifier(arch)
    with torch.no_grad():
        model.fc[-1].weight.mul_(20)
    artifact.save(path, model.state_dict(), arch, Preprocessing.for_image_size(image_size), list(class_names))
    if inference_code is not None:
        (path / artifact.CODE_DIR).mkdir()
        (path / artifact.CODE_DIR / "inference.py").write_text(textwrap.dedent(inference_code))
    return path


def make_calibrated_model_dir(path: Path, sample_data: Path, unreadable: tuple[Path, ...] = ()) -> Path:
    """make_model_dir plus the calibration sample (int8 calibrates on it), chosen as the trainer
    chooses it (trainer.job.finish): the data set's training images, classes in turn. `unreadable`
    files go first, for the writer to skip."""
    model_dir = make_model_dir(path)
    prep = artifact.preprocessing(artifact.read_config(model_dir))
    files = sorted(file for file in (sample_data / "train").rglob("*") if file.is_file())
    chosen = [file for file, _ in spread([(file, file.parent.name) for file in files], 64)]
    assert artifact.write_calibration(model_dir, [*unreadable, *chosen], prep) == artifact.CALIBRATION_IMAGES
    return model_dir


def sample_image(seed: int = 0, size=(96, 80)) -> Image.Image:
    """Smooth colour blobs plus a little noise: survives JPEG without becoming flat."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize(size, Image.BICUBIC)
    noise = rng.integers(-12, 13, (size[1], size[0], 3))
    return Image.fromarray(np.clip(np.asarray(image, np.int16) + noise, 0, 255).astype(np.uint8))


def encode(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()


def palette_png_with_overlong_transparency() -> bytes:
    """A 2x2 palette PNG whose tRNS chunk has 300 entries for a 2-colour palette:
    it decodes, and its conversion to RGB raises ValueError in PIL."""
    rows = b"".join(b"\x00" + bytes([0, 1]) for _ in range(2))
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 3, 0, 0, 0))
        + png_chunk(b"PLTE", bytes(6))
        + png_chunk(b"tRNS", bytes(300))
        + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )


class Reference:
    """The model run in-process, as training's evaluation runs it."""

    def __init__(self, model_dir: Path):
        self.model, config = artifact.load(model_dir)
        self.prep = artifact.preprocessing(config)
        self.class_names = config["class_names"]

    def probabilities(self, inputs: np.ndarray) -> np.ndarray:
        """(N,3,S,S) preprocessed arrays -> (N,C) probabilities."""
        with torch.inference_mode():
            return torch.softmax(self.model(torch.from_numpy(inputs)), 1).numpy()

    def preprocess(self, encoded_image: bytes) -> np.ndarray:
        return eval_transform(decode_image(encoded_image, self.prep), self.prep)

    def for_images(self, *encoded_images: bytes) -> np.ndarray:
        return self.probabilities(np.stack([self.preprocess(data) for data in encoded_images]))


def assert_like_fp32(served: np.ndarray, expected: np.ndarray, precision: str, atol: float) -> None:
    """A precision mode's probabilities against fp32's for the same images, on a trained model
    (train_converged_model): within `atol` everywhere, top-1 agreeing as often as the server's own
    start-up check demands (an image fp32 is unsure of may flip under rounding: int8 flipped one of
    16 on up to three of eight trained models), and not fp32's own numbers. fp32 (jit) reorders the
    same arithmetic: no image may flip."""
    from server.precision import MIN_AGREEMENT

    agreeing = served.argmax(1) == expected.argmax(1)
    assert np.abs(served - expected).max() < atol, np.abs(served - expected).max()
    assert agreeing.all() if precision == "fp32" else agreeing.mean() >= MIN_AGREEMENT, agreeing
    if precision != "fp32":  # the x-npy answer is the mode's own
        assert np.abs(served - expected).max() > 1e-6


def labels_from_archive(model_tar: Path, files: list[Path], folder: Path) -> dict[str, str]:
    """{file name: label} that the model in a model.tar.gz gives these images in-process: what an
    endpoint or batch transform serving that archive must answer, however well the run learnt."""
    folder.mkdir()
    with tarfile.open(model_tar) as tar:
        tar.extractall(folder, filter="data")
    reference = Reference(folder)
    chosen = reference.for_images(*[path.read_bytes() for path in files]).argmax(1)
    return {path.name: reference.class_names[index] for path, index in zip(files, chosen, strict=True)}


def transform_labels(outputs: list[Path]) -> dict[str, str]:
    """{input file name: top label} of a batch transform's FILE.out answers."""
    return {out.name.removesuffix(".out"): json.loads(out.read_text())["predictions"][0]["label"] for out in outputs}


class ServerProcess:
    """container/serve (gunicorn and its workers) on a free port of 127.0.0.1; `command` another
    program in its place (run with container/ on PYTHONPATH, as serve runs gunicorn's master)."""

    def __init__(self, model_dir: Path, log_path: Path, command: list[str] | None = None, **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        server_env = {key: value for key, value in os.environ.items() if not key.startswith(("SM_", "SAGEMAKER_"))}
        server_env.update(
            {
                "SM_MODEL_DIR": str(model_dir),
                "SAGEMAKER_BIND_HOST": "127.0.0.1",
                "SAGEMAKER_BIND_TO_PORT": str(self.port),
                "SAGEMAKER_MODEL_SERVER_WORKERS": "1",
                # its scratch beside its log, not /tmp/byoc-serve-PORT: stop() kills (SIGKILL, no clean-up),
                # and a folder left in /tmp would meet a later server given the same port
                "SAGEMAKER_SERVER_RUN_DIR": str(log_path.with_name(f"{log_path.stem}.run")),
                **env,
            }
        )
        if command:  # serve puts container/ on the path itself
            server_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CONTAINER), os.environ.get("PYTHONPATH")]))
        self.log_path = log_path
        self.run_dir = Path(server_env["SAGEMAKER_SERVER_RUN_DIR"])
        with open(log_path, "wb") as log:
            # Its own session: teardown can kill gunicorn and its workers as one group.
            self.process = subprocess.Popen(
                command or [sys.executable, str(CONTAINER / "serve")],
                env=server_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.url + path, timeout=30, **kwargs)

    def invoke(
        self, data, content_type: str = "image/jpeg", headers: dict | None = None, timeout: float = 60
    ) -> requests.Response:
        return requests.post(
            self.url + "/invocations",
            data=data,
            timeout=timeout,
            headers={"Content-Type": content_type, **(headers or {})},
        )

    def delete_ok(self, path: str) -> bool:
        return requests.delete(self.url + path, timeout=30).status_code == 200

    def wait_ready(self, timeout: float = 120) -> None:
        def running():
            assert self.process.poll() is None, f"serve exited with {self.process.returncode}:\n{self.log()}"

        try:
            wait_healthy(self.url, timeout, interval_s=0.2, check=running)
        except TimeoutError:
            raise AssertionError(f"/ping not 200 within {timeout} s:\n{self.log()}") from None

    def worker_pids(self) -> list[int]:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text()
        return [int(pid) for pid in children.split()]

    def wait_for_workers(self, count: int, timeout: float = 30) -> list[int]:
        """The worker pids once `count` exist: gunicorn forks them one after another, and the first
        may answer /ping before the next one is forked (on a loaded machine, seconds before)."""
        deadline = time.monotonic() + timeout
        while len(self.worker_pids()) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        workers = self.worker_pids()
        assert len(workers) == count, f"{len(workers)} of {count} workers after {timeout} s:\n{self.log()}"
        return workers

    def pss_bytes(self) -> int:
        """Proportional set size of the whole server (master and workers): shared pages counted once."""
        total = 0
        for pid in [self.process.pid, *self.worker_pids()]:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
        return total

    def __enter__(self) -> ServerProcess:
        """`with ServerProcess(...) as server:` ready to answer, stopped (whole group) on the way out."""
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        try:  # the whole group: workers too, even when the master already exited
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)


def multi_model_server(tmp_path_factory, name: str, root, **env: str) -> ServerProcess:
    """A multi-model endpoint (no model directory) serving urls under `root`, logging to a
    folder of its own; use it as a context manager."""
    logs = tmp_path_factory.mktemp(f"{name}-logs")
    return ServerProcess(
        logs / "no-model-dir",
        logs / "server.log",
        SAGEMAKER_MULTI_MODEL="true",
        SAGEMAKER_MULTI_MODEL_ROOT=str(root),
        **env,
    )


def served_probabilities(server, images: list[bytes]) -> np.ndarray:
    """Each image's class probabilities as `server` (a ServerProcess) answers them (application/x-npy)."""
    rows = []
    for data in images:
        kind = "image/png" if data.startswith(b"\x89PNG") else "image/jpeg"
        response = server.invoke(data, kind, headers={"Accept": "application/x-npy"})
        assert response.status_code == 200, response.text
        rows.append(np.load(io.BytesIO(response.content)))
    return np.concatenate(rows)
