#!/usr/bin/env python3
"""Training throughput: our trainer against a plain loop in the style of the seeds.

    .venv/bin/python scripts/bench.py training [--images 128] [--batch-size 32] [--epochs 2] [--image-size 224]

Both read the same folder of 500x375 JPEGs and train ResNet50 at 224 px on
this machine's device, data loading included, for a frozen backbone
(trainable-layers 0) and for the top two stages unfrozen (trainable-layers 2).
The plain loop is what the seeds ran: torchvision ImageFolder, PIL
transforms, a default DataLoader (no workers), fp32, model.train() on the
whole network. Ours runs twice: fp32 (amp false) and with its default
(bf16 autocast on CPUs with native bf16, fp16/bf16 on GPUs). Prints
images/s (best epoch of each) and the ratio.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def make_photos(root: Path, count: int, classes: int = 4) -> None:
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / "train" / f"{i % classes:03d}.class"
        folder.mkdir(parents=True, exist_ok=True)
        # smooth random colour fields: JPEG-compressible like photos, unlike white noise
        small = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
        Image.fromarray(small).resize((500, 375), Image.Resampling.BICUBIC).save(folder / f"{i:05d}.jpg", quality=90)


def plain_loop(data: Path, trainable_layers: int, args) -> float:
    """The seeds' loop, kept as they wrote it (fp32, no workers, BN in train mode)."""
    import torchvision
    from torchvision import datasets, transforms

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    transform = transforms.Compose(
        [
            transforms.RandomResizedCrop(args.image_size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    loader = torch.utils.data.DataLoader(
        datasets.ImageFolder(data / "train", transform), batch_size=args.batch_size, shuffle=True
    )
    model = torchvision.models.resnet50()
    for param in model.parameters():
        param.requires_grad = False
    for stage in [model.layer4, model.layer3][:trainable_layers]:
        stage.requires_grad_(True)
    model.fc = torch.nn.Sequential(torch.nn.Linear(2048, 256), torch.nn.ReLU(), torch.nn.Linear(256, 4))
    model.to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    criterion = torch.nn.CrossEntropyLoss()
    best = 0.0
    for _ in range(args.epochs):
        start, seen = time.perf_counter(), 0
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            loss = criterion(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen += len(labels)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, seen / (time.perf_counter() - start))
    return best


def our_trainer(data: Path, trainable_layers: int, args, amp: str = "auto") -> float:
    with tempfile.TemporaryDirectory() as opt_ml:
        env = dict(
            os.environ, SAGEMAKER_BASE_DIR=opt_ml, SM_CHANNEL_TRAINING=str(data), TRAINER_SCRATCH=f"{opt_ml}/scratch"
        )
        cmd = [
            sys.executable,
            str(ROOT / "container" / "toolkit_entry_point.py"),
            "--backbone",
            "resnet50",
            "--pretrained",
            "none",
            "--epochs",
            str(args.epochs),
            "--batch-size",
            str(args.batch_size),
            "--head",
            "256",
            "--image-size",
            str(args.image_size),
            "--trainable-layers",
            str(trainable_layers),
            "--val-fraction",
            "0.05",
            "--amp",
            amp,
        ]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    speeds = [float(line.rsplit("images_per_sec=", 1)[1]) for line in out.splitlines() if "images_per_sec=" in line]
    return max(speeds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU x{os.cpu_count()}"
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "photos"
        make_photos(data, args.images)
        rows = []
        for layers in (0, 2):
            plain = plain_loop(data, layers, args)
            ours_fp32 = our_trainer(data, layers, args, amp="false")
            ours = our_trainer(data, layers, args)
            rows.append((layers, plain, ours_fp32, ours))
    print(
        f"\nResNet50 training throughput, {args.image_size} px, batch {args.batch_size}, "
        f"{args.images} JPEGs 500x375, {device}, torch {torch.__version__}"
    )
    print(
        "| trainable-layers | plain loop (img/s) | ours, fp32 (img/s) | ours, default amp (img/s) | ratio (default / plain) |"
    )
    print("|---|---|---|---|---|")
    for layers, plain, ours_fp32, ours in rows:
        print(f"| {layers} | {plain:.1f} | {ours_fp32:.1f} | {ours:.1f} | {ours / plain:.2f}x |")


if __name__ == "__main__":
    main()
