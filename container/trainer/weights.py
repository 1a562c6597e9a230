"""Pretrained backbone weights: ImageNet, none, or a file.

Where ImageNet weights come from, in order:
  1. the `pretrained` input channel (one .pth/.pt file), if given;
  2. the torch hub cache ($TORCH_HOME/hub/checkpoints), where the training
     image bakes them when built with --build-arg BAKE_WEIGHTS=resnet50;
  3. a download from torchvision's URL, or from $WEIGHTS_MIRROR_URL (a base
     URL holding the same file names, e.g. an internal mirror), with a short
     timeout, so a network-isolated job fails with a reason instead of hanging.
     A download is streamed to a temporary file, no larger than a cap, and kept
     only if its sha256 starts with the hex digits its name ends in
     (`resnet50-11ad3fa6.pth`, as torch.hub's check_hash reads them): a mirror
     cannot put other weights, or an endless body, into the hub cache.
Every file is read with torch.load(weights_only=True).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
import urllib.request
from pathlib import Path

import torch

from trainer.archives import parse_count

DOWNLOAD_TIMEOUT_S = 30  # per read: a network-isolated job fails fast
DOWNLOAD_MAX_SECONDS = 600  # the whole body: a mirror that trickles cannot hold the job
# About twice the largest backbone's ImageNet file (wide_resnet50_2, 263 MB)
MAX_BYTES_DEFAULT = 600 * 1024**2
MAX_BYTES_ENV = "WEIGHTS_MAX_BYTES"
HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,})\.")  # torch.hub's HASH_REGEX, with its 8-digit minimum
CHUNK = 1 << 20


class WeightsError(RuntimeError):
    """The requested weights cannot be had; the message is one line."""


def imagenet_url(backbone: str) -> str:
    from torchvision.models import get_model_weights  # the registry of official URLs

    url = get_model_weights(backbone).DEFAULT.url
    mirror = os.environ.get("WEIGHTS_MIRROR_URL")
    return f"{mirror.rstrip('/')}/{url.rsplit('/', 1)[1]}" if mirror else url


def hub_cache_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def max_download_bytes() -> int:
    text = os.environ.get(MAX_BYTES_ENV, "").strip()
    return parse_count(text, MAX_BYTES_ENV) if text else MAX_BYTES_DEFAULT


def download(url: str, dest: Path) -> None:
    """`url` into `dest` (the hub cache), checked against the hash in its name; WeightsError otherwise."""
    name = url.rsplit("/", 1)[1]
    found = HASH_IN_NAME.search(name)
    if found is None:
        raise WeightsError(f"weights file name {name!r} carries no sha256 prefix to check a download against")
    cap = max_download_bytes()
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _fetch(url, out, cap)
        if not digest.startswith(found.group(1)):
            raise WeightsError(
                f"download of {url} does not match the sha256 prefix {found.group(1)} in its name "
                f"(got {digest[: len(found.group(1))]}); refusing it"
            )
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _fetch(url: str, out, cap: int) -> str:
    """Stream the body into `out`, at most `cap` bytes and DOWNLOAD_MAX_SECONDS; its sha256 hex digest."""
    digest, size = hashlib.sha256(), 0
    deadline = time.monotonic() + DOWNLOAD_MAX_SECONDS
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            while chunk := response.read(CHUNK):
                size += len(chunk)
                if size > cap:
                    raise WeightsError(
                        f"download of {url} is larger than the {cap:,} bytes allowed ({MAX_BYTES_ENV}); refusing it"
                    )
                if time.monotonic() > deadline:
                    raise WeightsError(f"download of {url} took longer than {DOWNLOAD_MAX_SECONDS} s; refusing it")
                digest.update(chunk)
                out.write(chunk)
    except WeightsError:
        raise
    except Exception as exc:
        raise WeightsError(
            f"ImageNet weights are not in the image or the 'pretrained' channel and the download of {url} "
            f"failed ({type(exc).__name__}: {exc}); with network isolation, provide them as the 'pretrained' "
            "channel or bake them into the image (BAKE_WEIGHTS)"
        ) from None
    return digest.hexdigest()


def read_state_dict(path: Path) -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"weights file {path.name} cannot be loaded safely: {str(exc).splitlines()[0]}") from None
    for key in ("state_dict", "model", "model_state_dict"):  # common wrappers
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"weights file {path.name} is not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def resolve(pretrained: str, backbone: str, channel: Path | None) -> Path | None:
    """The weights file to start from, or None for a randomly initialised backbone."""
    if pretrained == "none":
        return None
    if pretrained != "imagenet":
        path = Path(pretrained)
        if not path.is_file():
            raise WeightsError(f"pretrained weights file {pretrained} does not exist")
        return path
    if channel is not None:
        files = sorted(p for p in channel.iterdir() if p.suffix in (".pth", ".pt", ".bin") and p.is_file())
        if len(files) != 1:
            raise WeightsError(f"the 'pretrained' channel must hold exactly one .pth/.pt file, found {len(files)}")
        return files[0]
    url = imagenet_url(backbone)
    cached = hub_cache_dir() / url.rsplit("/", 1)[1]
    if not cached.is_file():
        print(f"downloading ImageNet weights for {backbone} from {url}", flush=True)
        download(url, cached)
    return cached


def load_backbone(model: torch.nn.Module, path: Path) -> None:
    """Copy every backbone tensor from `path` into `model`; the head stays new."""
    state = {k: v for k, v in read_state_dict(path).items() if not k.startswith("fc.")}
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    missing = sorted(set(expected) - set(state))
    if missing:
        raise WeightsError(
            f"weights file {path.name} does not fit this backbone: {len(missing)} tensors missing, e.g. {missing[0]}"
        )
    wrong = [k for k in expected if state[k].shape != expected[k].shape]
    if wrong:
        raise WeightsError(
            f"weights file {path.name} does not fit this backbone: {wrong[0]} has shape "
            f"{tuple(state[wrong[0]].shape)}, expected {tuple(expected[wrong[0]].shape)}"
        )
    model.load_state_dict(state, strict=False)
