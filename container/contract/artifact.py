"""The model artifact: what training writes to /opt/ml/model, what serving reads.

    model.pt            state dict of contract.model.build_classifier(...),
                        plain tensors only: loads with torch.load(weights_only=True)
    model_config.json   {"format_version", "architecture", "preprocessing",
                         "class_names", "training"}
    code/inference.py   optional handler overrides for serving (model_fn, ...)

SageMaker tars this directory into model.tar.gz and extracts it again into
/opt/ml/model of the serving container.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from contract.layout import CODE_DIR, CONFIG_FILE, WEIGHTS_FILE  # noqa: F401  (re-exported: artifact.WEIGHTS_FILE)
from contract.model import Architecture, build_classifier
from contract.preprocess import Preprocessing

FORMAT_VERSION = 1


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


def save(model_dir, state_dict: dict, arch: Architecture, prep: Preprocessing,
         class_names: list, training: dict | None = None) -> None:
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
        "training": training or {},
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
