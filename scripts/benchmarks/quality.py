#!/usr/bin/env python3
"""Model quality on real photographs: test accuracy of training recipes.

    .venv/bin/python scripts/bench.py quality [--per-class 60] [--epochs 10] [--image-size 32]
                                              [--recipes defaults,no-augment,...] [--seeds 0] [--jobs 2]

The data set is Fashion-MNIST as Debian's package dataset-fashion-mnist ships
it (Zalando's catalogue photographs of clothes, 28x28 greyscale, 10 classes):
nothing is downloaded but the package, with apt's ordinary client, when it is
not installed. A fixed subset of it (the first images of each class) becomes
an ImageFolder tree under build/quality/ (train/ and valid/ from the package's
training file, test/ from its test file), and container/toolkit_entry_point.py trains on it
once per recipe and seed, as SageMaker's toolkit would run it: at nice 10
(start the script itself un-niced), with fp32 (amp false) so the numbers do
not depend on whether a CPU has bf16. Prints one table row per
recipe: test accuracy per seed (of the epoch with the lowest validation loss,
as the trainer keeps it), their mean, and the wall time of a run. Each
run's train.log and evaluation report stay in build/quality/runs/.

Every run trains resnet18 from scratch (pretrained none, all stages
trainable): no package ships ImageNet weights, and none may be downloaded.
The recipe `frozen-random-backbone` shows what pretrained=none with the
frozen default (trainable-layers 0) learns: only a head on random features.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gzip
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

import container_path  # noqa: F401  (first: container/ on the import path)
from contract.spec import metrics

ROOT = Path(__file__).resolve().parents[2]

PACKAGE = "dataset-fashion-mnist"
INSTALLED = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["tshirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot"]

# what every run shares: a small network trained from scratch (no ImageNet weights can be had offline)
BASE = {
    "backbone": "resnet18",
    "pretrained": "none",
    "trainable-layers": "5",
    "batch-size": "32",
    "amp": "false",
    "profiler": "false",
    "num-workers": "0",
}
# the knobs under study, as the trainer's defaults had them before this benchmark
OLD_DEFAULTS = {"augment": "true", "crop-scale": "0.08", "label-smoothing": "0", "warmup": "0", "init": "kaiming"}
RECIPES = {
    "defaults": {},  # whatever hyperparameters.py says now (crop-scale 1: shifted crops and flips, no zoom)
    "old-defaults": OLD_DEFAULTS,
    "no-augment": {**OLD_DEFAULTS, "augment": "false"},
    "crop-0.35": {**OLD_DEFAULTS, "crop-scale": "0.35"},
    "label-smoothing-0.1": {**OLD_DEFAULTS, "label-smoothing": "0.1"},
    "warmup-1": {**OLD_DEFAULTS, "warmup": "1"},
    "init-default": {**OLD_DEFAULTS, "init": "default"},
    "frozen-random-backbone": {**OLD_DEFAULTS, "trainable-layers": "0"},  # the pretrained=none trap
}


def package_dir(build: Path) -> Path:
    """Where the package's idx files are: installed, or unpacked from a downloaded .deb under build/."""
    if (INSTALLED / "train-images-idx3-ubyte.gz").is_file():
        return INSTALLED
    unpacked = build / "deb" / INSTALLED.relative_to("/")
    if not (unpacked / "train-images-idx3-ubyte.gz").is_file():
        debs = build / "deb"
        debs.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", PACKAGE], cwd=debs, check=True)
        deb = next(debs.glob(f"{PACKAGE}_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(debs)], check=True)
    return unpacked


def read_idx(path: Path, header: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), np.uint8, offset=header)


def load(source: Path, kind: str) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(source / f"{kind}-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    labels = read_idx(source / f"{kind}-labels-idx1-ubyte.gz", 8)
    return images, labels


def first_per_class(labels: np.ndarray, start: int, count: int) -> list[int]:
    """Indices of images start..start+count-1 of each class, in file order (the files are shuffled already)."""
    picked = []
    for label in range(len(CLASSES)):
        picked += list(np.flatnonzero(labels == label)[start : start + count])
    return picked


def prepare(build: Path, per_class: int, valid_per_class: int, test_per_class: int) -> Path:
    """The ImageFolder tree (train/, valid/, test/, one folder per class); reused when it matches."""
    tree = build / f"fashion-mnist-{per_class}-{valid_per_class}-{test_per_class}"
    if (tree / ".complete").is_file():
        return tree
    source = package_dir(build)
    train_images, train_labels = load(source, "train")
    test_images, test_labels = load(source, "t10k")
    splits = {
        "train": (train_images, train_labels, first_per_class(train_labels, 0, per_class)),
        "valid": (train_images, train_labels, first_per_class(train_labels, per_class, valid_per_class)),
        "test": (test_images, test_labels, first_per_class(test_labels, 0, test_per_class)),
    }
    for split, (images, labels, indices) in splits.items():
        for index in indices:
            folder = tree / split / f"{labels[index]:02d}.{CLASSES[labels[index]]}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[index], "L").save(folder / f"{index:05d}.png")
    (tree / ".complete").touch()
    return tree


def trainer_python() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def run(data: Path, opt_ml: Path, hps: dict, threads: int, timeout: float) -> tuple[dict, float, str]:
    """Train once in a fresh /opt/ml tree; the metric values SageMaker would read, the wall time, the log."""
    shutil.rmtree(opt_ml, ignore_errors=True)
    opt_ml.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SM_")}
    env.update(
        SAGEMAKER_BASE_DIR=str(opt_ml),
        TRAINER_SCRATCH=str(opt_ml / "scratch"),
        TORCH_HOME=str(opt_ml / "torch-home"),
        SM_CHANNEL_TRAINING=str(data),
        PYTHONUNBUFFERED="1",
        PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION="python",
        OMP_NUM_THREADS=str(threads),
    )
    args = [item for name, value in hps.items() for item in (f"--{name}", str(value))]
    start = time.perf_counter()
    out = subprocess.run(
        ["nice", "-n", "10", trainer_python(), str(ROOT / "container" / "toolkit_entry_point.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    seconds = time.perf_counter() - start
    log = out.stdout + out.stderr
    (opt_ml / "train.log").write_text(log)
    for bulky in ("checkpoints", "model", "scratch"):  # ~150 MB a run; the log and the report stay
        shutil.rmtree(opt_ml / bulky, ignore_errors=True)
    if out.returncode != 0:
        raise RuntimeError(f"trainer failed ({out.returncode}) with {hps}:\n{log[-3000:]}")
    return metrics.parse_log(log), seconds, log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=60, help="training images per class")
    parser.add_argument("--valid-per-class", type=int, default=20)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated, of {', '.join(RECIPES)}")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a hyperparameter for every run (repeatable), e.g. --set lr=0.003",
    )
    parser.add_argument("--seeds", default="0", help="comma-separated, e.g. 0,1; every recipe runs once per seed")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (each gets cores / jobs threads)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    args = parser.parse_args()
    names = [n for n in args.recipes.split(",") if n]
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        parser.error(f"unknown recipe {unknown[0]}; known: {', '.join(RECIPES)}")
    data = prepare(ROOT / "build" / "quality", args.per_class, args.valid_per_class, args.test_per_class)
    common = {
        **BASE,
        "epochs": str(args.epochs),
        "image-size": str(args.image_size),
        **dict(item.split("=", 1) for item in args.set),
    }
    print(
        f"Fashion-MNIST ({PACKAGE}): {args.per_class} train / {args.valid_per_class} valid / "
        f"{args.test_per_class} test images per class, 10 classes; {common}",
        flush=True,
    )
    seeds = [int(seed) for seed in args.seeds.split(",")]
    threads = max(1, len(os.sched_getaffinity(0)) // args.jobs)
    runs = ROOT / "build" / "quality" / "runs"  # each run's /opt/ml tree, its train.log included
    tag = "".join(f",{item}" for item in [f"epochs={args.epochs}", f"image-size={args.image_size}", *args.set])

    def one(job: tuple[str, int]) -> tuple:
        name, seed = job
        hps = {**common, "seed": str(seed), **RECIPES[name]}
        found, seconds, _ = run(data, runs / f"{name}{tag},seed={seed}", hps, threads, args.timeout)
        print(f"  {name}, seed {seed}: test accuracy {found['test:accuracy'][-1]:.3f} in {seconds:.0f} s", flush=True)
        return name, found["test:accuracy"][-1], seconds

    # small networks use one core badly: one single-threaded run per core uses them better
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(one, [(name, seed) for name in names for seed in seeds]))
    seed_columns = " | ".join(f"seed {seed}" for seed in seeds)
    print(f"\n| recipe | epochs | test accuracy: {seed_columns} | mean | time per run (s) |")
    print("|---|---|" + "---|" * len(seeds) + "---|---|")
    for name in names:
        accuracies = [acc for recipe, acc, _ in results if recipe == name]
        seconds = [sec for recipe, _, sec in results if recipe == name]
        print(
            f"| {name} | {args.epochs} | "
            + " | ".join(f"{acc:.3f}" for acc in accuracies)
            + f" | {np.mean(accuracies):.3f} | {np.mean(seconds):.0f} |"
        )


if __name__ == "__main__":
    main()
