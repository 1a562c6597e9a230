"""Input channels -> labelled image lists -> data loaders.

Accepted in a channel (after unpacking any .zip / .tar[.gz|.bz2|.xz] in it):
  * an ImageFolder tree: one folder per class (`001.Affenpinscher/*.jpg`);
  * one tree holding `train/`, `valid/` (or `validation/`, `val/`) and
    `test/` ImageFolders: the dogImages layout, and Kaggle's packaged
    dogs-vs-cats (`train/cats`, `train/dogs`, `test/...`);
  * a flat folder of `cat.0.jpg`, `dog.1.jpg`: Kaggle's original dogs-vs-cats,
    the label being the file name up to the first dot.
Channels: `training` (required), `validation` and `test` (optional). Without
a validation set, a stratified, seeded share of training is held out.

Unreadable images are not fatal: the loader skips them and the trainer counts
and reports them (see SkipTracker).
"""
from __future__ import annotations

import math
import os
import random
import shutil
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from contract.preprocess import ImageDecodeError, Preprocessing, eval_transform, load_image_file, normalize

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
SPLIT_NAMES = {
    "train": ("train", "training"),
    "validation": ("valid", "validation", "val"),
    "test": ("test", "testing"),
}
IGNORED_NAMES = {"__MACOSX", ".DS_Store"}


class DataError(ValueError):
    """The input data cannot be used; the message is one line."""


def channel_dir(name: str) -> Path | None:
    """Where SageMaker (or the toolkit's environment) put channel `name`, if given."""
    env = os.environ.get(f"SM_CHANNEL_{name.upper()}")
    path = Path(env) if env else Path(os.environ.get("SM_INPUT_DIR", "/opt/ml/input")) / "data" / name
    return path if path.is_dir() else None


def _is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _inside(root: Path, name: str) -> bool:
    target = (root / name).resolve()
    return target == root or root in target.parents


def safe_extract(archive: Path, dest: Path) -> None:
    """Unpack `archive` into `dest`, refusing any member that would land outside it."""
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                for member in zf.namelist():
                    if member.startswith("/") or not _inside(root, member):
                        raise DataError(f"archive {archive.name} has a member outside its folder: {member!r}; refusing it")
                zf.extractall(root)
        else:
            with tarfile.open(archive) as tf:
                for member in tf.getmembers():
                    if member.name.startswith("/") or not _inside(root, member.name):
                        raise DataError(f"archive {archive.name} has a member outside its folder: {member.name!r}; refusing it")
                    if (member.issym() or member.islnk()) and not _inside((root / member.name).parent.resolve(), member.linkname):
                        raise DataError(f"archive {archive.name} has a link pointing outside: {member.name!r}; refusing it")
                # the 'data' filter also drops device files and odd permissions
                tf.extractall(root, filter="data")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"archive {archive.name} cannot be unpacked: {exc}") from None


def unpack_channel(channel: Path, scratch: Path) -> Path:
    """The channel itself, or (if it holds archives) the folder they unpack to."""
    entries = [p for p in channel.iterdir() if p.name not in IGNORED_NAMES]
    archives = [p for p in entries if _is_archive(p)]
    if not archives:
        return channel
    if scratch.exists():
        shutil.rmtree(scratch)
    for archive in sorted(archives):
        safe_extract(archive, scratch)
    return scratch


def _unwrap(root: Path) -> Path:
    """Descend through wrapper folders (a zip of `dogImages/` holds one folder)."""
    while True:
        entries = [p for p in root.iterdir() if p.name not in IGNORED_NAMES and not p.name.startswith(".")]
        if len(entries) == 1 and entries[0].is_dir() and not any(_is_image(p) for p in entries):
            inner = [p for p in entries[0].iterdir() if p.name not in IGNORED_NAMES]
            if any(p.is_dir() for p in inner):  # a lone class folder stays a class folder
                root = entries[0]
                continue
        return root


def find_splits(root: Path) -> dict[str, Path]:
    """{'train': dir, 'validation': dir?, 'test': dir?} for a split tree, else {'train': root}."""
    root = _unwrap(root)
    children = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    splits = {}
    for split, names in SPLIT_NAMES.items():
        for name in names:
            if name in children:
                splits[split] = children[name]
                break
    return splits if "train" in splits else {"train": root}


def list_samples(split_dir: Path, what: str) -> list[tuple[Path, str]]:
    """[(image path, class name)] for an ImageFolder or a flat `label.N.jpg` folder."""
    split_dir = _unwrap(split_dir)
    class_dirs = sorted(p for p in split_dir.iterdir() if p.is_dir() and p.name not in IGNORED_NAMES)
    samples: list[tuple[Path, str]] = []
    if class_dirs:
        for class_dir in class_dirs:
            images = sorted(p for p in class_dir.rglob("*") if p.is_file() and _is_image(p))
            if not images:
                raise DataError(f"class folder {class_dir.name!r} in {what} has no images")
            samples += [(p, class_dir.name) for p in images]
    else:
        flat = sorted(p for p in split_dir.iterdir() if p.is_file() and _is_image(p))
        samples = [(p, p.name.split(".")[0]) for p in flat if p.name.count(".") >= 2]
    if not samples:
        raise DataError(f"no images found in {what} ({split_dir})")
    return samples


def stratified_split(samples, fraction: float, seed: int):
    """Hold out `fraction` of each class (at least one image of classes with 2+)."""
    by_class: dict[str, list] = {}
    for sample in samples:
        by_class.setdefault(sample[1], []).append(sample)
    rng = random.Random(seed)
    keep, held = [], []
    for name in sorted(by_class):
        items = by_class[name][:]
        rng.shuffle(items)
        n = min(len(items) - 1, max(1, math.ceil(fraction * len(items)))) if len(items) > 1 else 0
        held += items[:n]
        keep += items[n:]
    return keep, held


@dataclass
class Splits:
    class_names: list[str]
    train: list[tuple[Path, int]]
    validation: list[tuple[Path, int]]
    test: list[tuple[Path, int]] = field(default_factory=list)


def _indexed(samples, class_index: dict[str, int], what: str):
    unknown = sorted({name for _, name in samples if name not in class_index})
    if unknown:
        raise DataError(f"{what} has classes that training does not: {', '.join(unknown[:5])}")
    return [(path, class_index[name]) for path, name in samples]


def discover(scratch: Path, val_fraction: float, seed: int) -> Splits:
    """Resolve the channels into labelled train / validation / test lists."""
    training = channel_dir("training")
    if training is None:
        raise DataError("the 'training' channel is missing (expected SM_CHANNEL_TRAINING or /opt/ml/input/data/training)")
    splits = find_splits(unpack_channel(training, scratch / "training"))
    for name in ("validation", "test"):
        channel = channel_dir(name)
        if channel is not None:  # a channel of its own wins over a folder inside training
            splits[name] = unpack_channel(channel, scratch / name)
    train = list_samples(splits["train"], "training data")
    class_names = sorted({name for _, name in train})
    if len(class_names) < 2:
        raise DataError(f"training data has {len(class_names)} class; at least 2 are needed")
    class_index = {name: i for i, name in enumerate(class_names)}
    if "validation" in splits:
        validation = list_samples(splits["validation"], "validation data")
    else:
        train, validation = stratified_split(train, val_fraction, seed)
    test = list_samples(splits["test"], "test data") if "test" in splits else []
    return Splits(
        class_names,
        _indexed(train, class_index, "training data"),
        _indexed(validation, class_index, "validation data"),
        _indexed(test, class_index, "test data"),
    )


class ImageDataset(Dataset):
    """Yields (CHW float tensor or None, label, index); None marks an unreadable image."""

    def __init__(self, samples, prep: Preprocessing, train: bool, crop_scale: float = 0.08):
        self.samples = samples
        self.prep = prep
        self.augment = None
        if train:
            from torchvision import transforms  # training only; serving needs no torchvision

            if crop_scale < 1.0:  # zoomed crops covering crop_scale..1 of the image's area
                crop = transforms.RandomResizedCrop(prep.image_size, scale=(crop_scale, 1.0), antialias=True)
            else:  # no zoom: the evaluation's resize, the crop placed at random (objects keep their test-time size)
                crop = transforms.Compose([transforms.Resize(prep.resize_size, antialias=True),
                                           transforms.RandomCrop(prep.image_size)])
            self.augment = transforms.Compose([crop, transforms.RandomHorizontalFlip()])

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        path, label = self.samples[index]
        try:
            img = load_image_file(path, self.prep)
        except (ImageDecodeError, OSError):
            return None, label, index
        array = normalize(self.augment(img), self.prep) if self.augment else eval_transform(img, self.prep)
        return torch.from_numpy(array), label, index


def collate(batch):
    """Stack the readable images; report the indices of the unreadable ones."""
    good = [item for item in batch if item[0] is not None]
    bad = [item[2] for item in batch if item[0] is None]
    if not good:
        return None, None, bad
    images = torch.stack([item[0] for item in good])
    labels = torch.tensor([item[1] for item in good], dtype=torch.long)
    return images, labels, bad


class SkipTracker:
    """Unreadable images per split, by path; each counted once however often seen."""

    def __init__(self):
        self.paths: dict[str, set[str]] = {}

    def add(self, split: str, dataset: ImageDataset, indices) -> None:
        for index in indices:
            self.paths.setdefault(split, set()).add(str(dataset.samples[index][0]))

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.paths.values())

    def summary(self) -> dict:
        return {split: sorted(paths) for split, paths in self.paths.items()}


def worker_count(requested: int) -> int:
    if requested >= 0:
        return requested
    return min(8, len(os.sched_getaffinity(0)))


def seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
