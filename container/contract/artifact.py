"""The model artifact: writing it (training) and loading it (serving); its layout is contract/spec/artifact.py.

`save` writes the whole artifact (weights, calibration images, config) into a
staging folder on the model directory's file system, then renames it into
place with the config last, the old config removed first: a job killed at any
moment leaves the old artifact, the new one, or none (no config: the server
says so), never new weights under an old config. The model directory itself is
not swapped: /opt/ml/model may be a mount point, which cannot be renamed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from contract.model import Architecture, build_classifier
from contract.preprocess import ImageDecodeError, Preprocessing, load_image_file, resized_size
from contract.spec.artifact import (  # noqa: F401
    CALIBRATION_DIR,
    CALIBRATION_IMAGES,
    CODE_DIR,
    CONFIG_FILE,
    FORMAT_VERSION,
    WEIGHTS_FILE,
    TrainingSummary,
)


class ArtifactError(RuntimeError):
    """The model directory is missing something or does not fit together."""


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[str]:
    """A temporary name beside `path` for the body to write; synced and renamed over `path` after it, so
    readers never see half a file (the rename is atomic on one file system), and removed if the body fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as f:  # on disk before the name points at it
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with _replacing(path) as tmp:
        Path(tmp).write_bytes(data)


def atomic_torch_save(obj, path: Path) -> None:
    with _replacing(path) as tmp:
        torch.save(obj, tmp)


# Fault injection for the trainer's tests: SIGKILL right after the new weights are in place, before
# their config is: the moment at which a kill used to leave new weights under the old config.
SIGKILL_AFTER_WEIGHTS_ENV = "ARTIFACT_SIGKILL_AFTER_WEIGHTS"
STAGING_PREFIX = ".staging-"


def save(
    model_dir,
    state_dict: dict,
    arch: Architecture,
    prep: Preprocessing,
    class_names: list,
    training: TrainingSummary | None = None,
    calibration_images: Sequence = (),
) -> None:
    """The whole artifact, replacing any earlier one (its calibration images included) all or nothing:
    see the module's docstring. `calibration_images`: what write_calibration picks from."""
    if len(class_names) != arch.num_classes:
        raise ArtifactError(f"{len(class_names)} class names for {arch.num_classes} outputs")
    model_dir = Path(model_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    config = {
        "format_version": FORMAT_VERSION,
        "architecture": arch.to_dict(),
        "preprocessing": prep.to_dict(),
        "class_names": list(class_names),
        "training": training.to_dict() if training else {},
    }
    staging = _staging_dir(model_dir)
    try:
        atomic_torch_save(state, staging / WEIGHTS_FILE)
        if calibration_images:
            write_calibration(staging, calibration_images, prep)
        atomic_write_bytes(staging / CONFIG_FILE, json.dumps(config, indent=2).encode())
        _publish(staging, model_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _staging_dir(model_dir: Path) -> Path:
    """A new folder beside `model_dir` (not packed into model.tar.gz), or inside it where `model_dir`
    is a mount point (renames do not cross file systems); stale ones of killed jobs are removed."""
    model_dir.mkdir(parents=True, exist_ok=True)
    beside = model_dir.parent
    if beside.stat().st_dev != model_dir.stat().st_dev or not os.access(beside, os.W_OK):
        beside = model_dir
    prefix = f"{STAGING_PREFIX}{model_dir.name}-"
    for stale in beside.glob(f"{prefix}*"):
        shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(dir=beside, prefix=prefix))


def _publish(staging: Path, model_dir: Path) -> None:
    """Rename the staged files into `model_dir`: the old config goes first and the new one comes last."""
    (model_dir / CONFIG_FILE).unlink(missing_ok=True)
    _fsync_dir(model_dir)
    old_calibration = model_dir / CALIBRATION_DIR
    if old_calibration.exists():
        old_calibration.rename(staging / f"old-{CALIBRATION_DIR}")  # removed with the staging folder
    if (staging / CALIBRATION_DIR).is_dir():
        (staging / CALIBRATION_DIR).rename(old_calibration)
    os.replace(staging / WEIGHTS_FILE, model_dir / WEIGHTS_FILE)
    if os.environ.get(SIGKILL_AFTER_WEIGHTS_ENV):
        os.kill(os.getpid(), signal.SIGKILL)
    _fsync_dir(model_dir)  # the weights' name is on disk before the config that vouches for them
    os.replace(staging / CONFIG_FILE, model_dir / CONFIG_FILE)
    _fsync_dir(model_dir)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_config(model_dir) -> dict:
    path = Path(model_dir) / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path} not found: is this a model directory written by the trainer?") from None
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path} is not valid JSON: {exc}") from None
    if config.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{path}: format_version {config.get('format_version')!r}, expected {FORMAT_VERSION}")
    return config


def training_summary(config: dict) -> TrainingSummary:
    return TrainingSummary.from_dict(config["training"])


def architecture(config: dict) -> Architecture:
    return Architecture(**config["architecture"])


def preprocessing(config: dict) -> Preprocessing:
    return Preprocessing(**config["preprocessing"])


def load(model_dir, device: str | torch.device = "cpu"):
    """-> (model in eval mode on `device`, config dict). Never unpickles code."""
    config = read_config(model_dir)
    model = build_classifier(architecture(config))
    path = Path(model_dir) / WEIGHTS_FILE
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise ArtifactError(f"{path} not found") from None
    except Exception as exc:
        raise ArtifactError(f"{path} cannot be loaded safely: {exc}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ArtifactError(f"{path} does not match {CONFIG_FILE}: {str(exc).splitlines()[0]}") from None
    return model.to(device).eval(), config


def write_calibration(model_dir, image_paths, prep: Preprocessing, limit: int = CALIBRATION_IMAGES) -> int:
    """Up to `limit` of `image_paths` into model_dir/calibration/ as JPEGs with the
    shorter side at prep.resize_size (what serving's transform resizes to anyway,
    so the sample stays small). Unreadable images are skipped. -> images written."""
    out = Path(model_dir) / CALIBRATION_DIR
    written = 0
    for path in image_paths:
        if written == limit:
            break
        try:
            image = load_image_file(path, prep)
        except (ImageDecodeError, OSError):  # as training does: skipped, not fatal
            continue
        buffer = io.BytesIO()
        image.resize(resized_size(image.size, prep)).save(buffer, format="JPEG", quality=95)
        atomic_write_bytes(out / f"{written:03d}.jpg", buffer.getvalue())
        written += 1
    return written


def calibration_files(model_dir) -> list[Path]:
    return sorted((Path(model_dir) / CALIBRATION_DIR).glob("*.jpg"))[:CALIBRATION_IMAGES]
