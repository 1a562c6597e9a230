"""Input channels -> labelled image lists -> data loaders.

Accepted in a channel, as a folder or in .zip / .tar[.gz|.bz2|.xz] archives
(unpacked by trainer.archives, nested ones too), under any wrapper folders:
  * an ImageFolder tree: one folder per class (`001.Affenpinscher/*.jpg`);
  * one tree holding `train/`, `valid/` (or `validation/`, `val/`) and
    `test/` ImageFolders: the dogImages layout, and Kaggle's packaged
    dogs-vs-cats (`train/cats`, `train/dogs`, `test/...`);
  * a `train/` folder of `cat.0.jpg`, `dog.1.jpg`: Kaggle's original
    dogs-vs-cats (its zip holds train.zip, test1.zip and a csv; the unlabelled
    test1/ is no split and is left alone), the label being the file name up to
    the first dot.
Channels: `training` (required), `validation` and `test` (optional). Without
a validation set, a stratified, seeded share of training is held out.

Unreadable images are not fatal: the loader skips them and the trainer counts
and reports them (see SkipTracker).
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from contract.preprocess import ImageDecodeError, Preprocessing, eval_transform, load_image_file, normalize
from contract.spec import hyperparameters
from trainer import archives
from trainer.archives import DataError  # callers catch data.DataError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
SPLIT_NAMES = {
    "train": ("train", "training"),
    "validation": ("valid", "validation", "val"),
    "test": ("test", "testing"),
}
# In every scratch folder the trainer makes: only a folder holding it is ever emptied, so a
# TRAINER_SCRATCH pointed at /opt/ml (or /) by mistake cannot delete what the trainer did not make.
SCRATCH_MARKER = ".made-by-trainer"
IGNORED_NAMES = {"__MACOSX", ".DS_Store", SCRATCH_MARKER}


def channel_dir(name: str) -> Path | None:
    """Where SageMaker (or the toolkit's environment) put channel `name`, if given."""
    env = os.environ.get(f"SM_CHANNEL_{name.upper()}")
    path = Path(env) if env else Path(os.environ.get("SM_INPUT_DIR", "/opt/ml/input")) / "data" / name
    return path if path.is_dir() else None


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _channel_fingerprint(packed: list[Path], limits: archives.Limits) -> str:
    return json.dumps([[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in packed] + [repr(limits)])


def unpack_channel(channel: Path, scratch: Path) -> Path:
    """The channel itself, or (if it holds archives) the folder they unpack to.

    Processes of one host share the unpacked tree: the first to take the lock
    unpacks, the others (DDP workers) find it done. `scratch` is emptied only if
    the trainer made it (SCRATCH_MARKER)."""
    entries = [p for p in channel.iterdir() if p.name not in IGNORED_NAMES]
    packed = sorted(p for p in entries if archives.is_archive(p))
    if not packed:
        return channel
    limits = archives.Limits.from_env()
    fingerprint = _channel_fingerprint(packed, limits)
    done = scratch.with_name(scratch.name + ".unpacked")
    scratch.parent.mkdir(parents=True, exist_ok=True)
    with open(scratch.with_name(scratch.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.is_file() and done.read_text() == fingerprint and scratch.is_dir():
            return scratch
        done.unlink(missing_ok=True)
        remove_scratch(scratch)
        scratch.mkdir()
        (scratch / SCRATCH_MARKER).write_text("made by the trainer to unpack a channel; removed with this folder\n")
        try:
            archives.unpack_all(packed, scratch, limits)
        except DataError:
            remove_scratch(scratch)  # nothing half-unpacked stays on the disk
            raise
        done.write_text(fingerprint)
    return scratch


def remove_scratch(scratch: Path) -> None:
    """Delete a scratch folder the trainer made; refuse (DataError) one it did not, unless empty."""
    if not scratch.exists():
        return
    if (scratch / SCRATCH_MARKER).is_file():
        shutil.rmtree(scratch, ignore_errors=True)
        return
    try:
        scratch.rmdir()
    except OSError:
        raise DataError(
            f"scratch folder {scratch} exists and was not made by the trainer; refusing to empty it: "
            "point TRAINER_SCRATCH at a new or empty folder"
        ) from None


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
        others = sorted(p.name for p in split_dir.iterdir() if p.is_file() and p.name not in IGNORED_NAMES)[:3]
        hint = f"; it holds {', '.join(others)} (archives: {', '.join(archives.ARCHIVE_SUFFIXES)})" if others else ""
        raise DataError(f"no images found in {what} ({split_dir}){hint}")
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
        raise DataError(
            "the 'training' channel is missing (expected SM_CHANNEL_TRAINING or /opt/ml/input/data/training)"
        )
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
    """Yields (CHW float tensor or None, label, index); None marks an unreadable image.

    A training image's random crop and flip are drawn from a generator seeded
    by (seed, epoch, index) alone: the same in every loader worker, however
    many there are and whichever gets the image, and in a job resumed
    mid-epoch. Call set_epoch before each epoch's loader starts its workers.
    """

    def __init__(
        self,
        samples,
        prep: Preprocessing,
        train: bool,
        seed: int = 0,
        crop_scale: float = hyperparameters.DEFAULTS["crop-scale"],
    ):
        self.samples = samples
        self.prep = prep
        self.seed, self.epoch = seed, 0
        self.augment: Callable | None = None  # the training transform; None: the evaluation's
        if train:
            from torchvision import transforms  # training only; serving needs no torchvision

            if crop_scale < 1.0:  # zoomed crops covering crop_scale..1 of the image's area
                crop = transforms.RandomResizedCrop(prep.image_size, scale=(crop_scale, 1.0), antialias=True)
            else:  # no zoom: the evaluation's resize, the crop placed at random (objects keep their test-time size)
                crop = transforms.Compose(
                    [transforms.Resize(prep.resize_size, antialias=True), transforms.RandomCrop(prep.image_size)]
                )
            self.augment = transforms.Compose([crop, transforms.RandomHorizontalFlip()])

    def __len__(self):
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def augmented(self, img, index: int):
        # torchvision's transforms draw from torch's CPU generator: seed it for this
        # image and put it back, so the caller's stream (dropout, in a loader
        # without workers) is untouched. (torch.manual_seed would cost 0.3 ms: it
        # seeds every device type too.)
        generator = torch.default_generator
        caller_state = generator.get_state()
        generator.manual_seed(int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0]))
        try:
            assert self.augment is not None, "training datasets only"
            return self.augment(img)
        finally:
            generator.set_state(caller_state)

    def __getitem__(self, index):
        path, label = self.samples[index]
        try:
            img = load_image_file(path, self.prep)
        except (ImageDecodeError, OSError):
            return None, label, index
        array = normalize(self.augmented(img, index), self.prep) if self.augment else eval_transform(img, self.prep)
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


# loader processes per core at most: each holds a copy of the dataset's list and its decode buffers, and
# beyond a few per core they only wait for the cores (500 were an OOM kill with no reason written)
MAX_WORKERS_PER_CORE = 4


def worker_count(requested: int, cores: int | None = None) -> int:
    cores = len(os.sched_getaffinity(0)) if cores is None else cores
    if requested > MAX_WORKERS_PER_CORE * cores:
        raise hyperparameters.HyperparameterError(
            f"hyperparameter num-workers: {requested} loader processes on {cores} CPU core(s); "
            f"at most {MAX_WORKERS_PER_CORE} per core ({MAX_WORKERS_PER_CORE * cores}), or auto"
        )
    if requested >= 0:
        return requested
    return min(8, cores)
