"""The model artifact: writing it (training) and loading it (serving); its layout is contract/spec/artifact.py."""

from __future__ import annotations

import io
import json
import os
import tempfile
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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_torch_save(obj, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save(
    model_dir,
    state_dict: dict,
    arch: Architecture,
    prep: Preprocessing,
    class_names: list,
    training: TrainingSummary | None = None,
) -> None:
    if len(class_names) != arch.num_classes:
        raise ArtifactError(f"{len(class_names)} class names for {arch.num_classes} outputs")
    model_dir = Path(model_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    atomic_torch_save(state, model_dir / WEIGHTS_FILE)
    config = {
        "format_version": FORMAT_VERSION,
        "architecture": arch.to_dict(),
        "preprocessing": prep.to_dict(),
        "class_names": list(class_names),
        "training": training.to_dict() if training else {},
    }
    atomic_write_bytes(model_dir / CONFIG_FILE, json.dumps(config, indent=2).encode())


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
