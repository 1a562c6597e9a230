"""Backbone features computed once per image, for trials that train only the head.

With a frozen backbone (trainable-layers 0) and deterministic preprocessing
(the evaluation transform for training images too), every epoch of every
tuning trial pushes the same images through the same backbone. The cache
keeps each image's pooled features instead, so a trial costs one pass over
new images plus cheap head epochs.

Correctness: a cache file is keyed by the backbone's name, a digest of its
weights and the preprocessing config; entries are keyed by a digest of the
image file's bytes. Any change gives other keys, so a stale cache is never
used. A file that fails its checksum, or cannot be read safely, is refused
(and rebuilt).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from contract.artifact import atomic_torch_save
from trainer import data

FORMAT = 1


def cache_key(backbone: str, weights_digest: str, prep) -> str:
    """`weights_digest`: checkpoint.state_digest of the (frozen) backbone's state."""
    spec = json.dumps(
        {"backbone": backbone, "weights": weights_digest, "preprocessing": prep.to_dict(), "format": FORMAT},
        sort_keys=True,
    )
    return hashlib.sha256(spec.encode()).hexdigest()[:32]


def file_digest(path: Path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def _checksum(features: torch.Tensor) -> str:
    return hashlib.sha256(features.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


class FeatureCache:
    """{image digest: feature vector} in one file per key under `directory`."""

    def __init__(self, directory: Path, key: str, log=print, writer: bool = True):
        self.path = Path(directory) / f"features-{key}.pt"
        self.writer = writer  # under DDP only rank 0 writes
        self.key = key
        self.log = log
        self.entries: dict[str, torch.Tensor] = {}
        self.refused = False
        if self.path.is_file():
            self._read()

    def _read(self) -> None:
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
            features, digests = saved["features"], saved["digests"]
            if saved["format"] != FORMAT or saved["key"] != self.key or len(digests) != len(features):
                raise ValueError("written for another backbone, weights or preprocessing")
            if _checksum(features) != saved["checksum"]:
                raise ValueError("checksum mismatch")
        except Exception as exc:
            self.refused = True
            self.log(f"refusing feature cache {self.path.name}: {str(exc).splitlines()[0]}; rebuilding it")
            return
        self.entries = dict(zip(digests, features, strict=True))  # lengths checked above

    def save(self) -> None:
        digests = sorted(self.entries)
        features = torch.stack([self.entries[d] for d in digests]) if digests else torch.empty(0)
        atomic_torch_save(
            {
                "format": FORMAT,
                "key": self.key,
                "digests": digests,
                "features": features,
                "checksum": _checksum(features),
            },
            self.path,
        )


class FeatureDataset(Dataset):
    """Same items as data.ImageDataset, with features in place of images (None: unreadable)."""

    in_memory = True  # the training loop reads it without loader worker processes

    def __init__(self, samples, features: list):
        self.samples = samples
        self.features = features

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        return self.features[index], self.samples[index][1], index


def _collate_with_indices(batch):
    good = [item for item in batch if item[0] is not None]
    images = torch.stack([item[0] for item in good]) if good else None
    return images, [item[2] for item in good]


@torch.no_grad()
def build(
    samples, model, prep, cache: FeatureCache, device, batch_size: int, workers: int, autocast, memory_format
) -> tuple[FeatureDataset, int]:
    """Features for `samples`, computing the missing ones -> (dataset, number computed).

    Unreadable images get no entry (their item is None, which the training
    loop skips and counts, as it does for images)."""
    digests = [file_digest(path) for path, _ in samples]
    missing = sorted({d: i for i, d in enumerate(digests) if d not in cache.entries}.values())
    before = len(cache.entries)
    if missing:
        images = data.ImageDataset([samples[i] for i in missing], prep, train=False)
        loader = DataLoader(images, batch_size=batch_size, num_workers=workers, collate_fn=_collate_with_indices)
        model.eval()
        for batch, positions in loader:
            if batch is None:
                continue
            with autocast():
                output = model.features(batch.to(device, memory_format=memory_format)).float().cpu()
            for position, feature in zip(positions, output, strict=True):
                cache.entries[digests[missing[position]]] = feature.clone()
        if cache.writer:
            cache.save()
    return FeatureDataset(samples, [cache.entries.get(d) for d in digests]), len(cache.entries) - before
