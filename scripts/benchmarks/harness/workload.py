"""The benchmark's workload: synthetic photo-like JPEGs (no real photos offline) and a
ResNet50 model directory with seeded random weights and a calibration sample."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter
from torch import nn

from contract import artifact
from contract.model import Architecture, build_classifier
from contract.preprocess import Preprocessing, decode_image, eval_transform

NUM_CLASSES = 133
HEAD = [256]
IMAGE_SIZES = {"500x375": (500, 375), "1600x1200": (1600, 1200)}
IMAGES_PER_SIZE = 4


def synth_photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A smooth, photo-like picture: large colour regions, mid-scale shading,
    blurred object outlines, fine texture and sensor grain. JPEG compresses it
    like a photo, unlike white noise or flat colour."""

    def upscaled(shape, scale):
        field = torch.from_numpy(rng.normal(0.0, scale, shape).astype(np.float32)).permute(2, 0, 1)[None]
        up = torch.nn.functional.interpolate(field, size=(height, width), mode="bicubic", align_corners=False)
        return up[0].permute(1, 2, 0).numpy()

    pixels = 128.0 + upscaled((3, 4, 3), 45.0)  # large regions: sky, ground, walls
    pixels += upscaled((12, 16, 1), 25.0) + upscaled((12, 16, 3), 8.0)  # shading, mostly in brightness
    pixels += upscaled((max(2, height // 12), max(2, width // 12), 1), 10.0)  # texture
    shapes = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(shapes)
    for _ in range(6):
        x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
        x1, y1 = x0 + rng.uniform(0.1, 0.4) * width, y0 + rng.uniform(0.1, 0.4) * height
        colour = tuple(int(c) for c in rng.integers(0, 256, 3)) + (int(rng.integers(90, 200)),)
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    shapes = shapes.filter(ImageFilter.GaussianBlur(max(1.0, width / 400)))
    layer = np.asarray(shapes, np.float32)
    alpha = layer[..., 3:] / 255.0
    pixels = pixels * (1 - alpha) + layer[..., :3] * alpha
    pixels += rng.normal(0.0, 4.0, (height, width, 1)).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def make_images(seed: int = 0) -> dict[str, list[bytes]]:
    rng = np.random.default_rng(seed)
    images: dict[str, list[bytes]] = {}
    for name, (width, height) in IMAGE_SIZES.items():
        images[name] = []
        for _ in range(IMAGES_PER_SIZE):
            buffer = io.BytesIO()
            synth_photo(rng, width, height).save(buffer, format="JPEG", quality=90)
            images[name].append(buffer.getvalue())
    return images


def make_model_dir(path: Path, calibration: list[bytes], backbone: str = "resnet50", image_size: int = 224) -> Path:
    """ResNet50 (or `backbone`) + [256] head + 133 classes, seeded random weights. The last
    layer is rescaled so the logits' spread is ~2: probabilities neither
    saturate at 1.0 nor flatten at 1/133, so the 1e-4 check means something."""
    torch.manual_seed(0)
    arch = Architecture(backbone=backbone, num_classes=NUM_CLASSES, head=list(HEAD))
    prep = Preprocessing.for_image_size(image_size)
    model = build_classifier(arch).eval()
    batch = torch.from_numpy(np.stack([eval_transform(decode_image(data, prep), prep) for data in calibration]))
    with torch.inference_mode():
        spread = float(model(batch).std())
    head = model.fc
    assert isinstance(head, nn.Sequential)  # make_head's: its last layer gives the logits
    last = head[-1]
    assert isinstance(last, nn.Linear)
    with torch.no_grad():
        last.weight.mul_(2.0 / max(spread, 1e-6))
        last.bias.mul_(2.0 / max(spread, 1e-6))
    names = [f"{i + 1:03d}.class_{i + 1}" for i in range(NUM_CLASSES)]
    artifact.save(path, model.state_dict(), arch, prep, names)
    return path


def make_photos(count: int, seed: int, size: tuple[int, int] = IMAGE_SIZES["500x375"]) -> list[bytes]:
    """`count` photo-like JPEGs (quality 90) of `size`."""
    rng = np.random.default_rng(seed)
    photos = []
    for _ in range(count):
        buffer = io.BytesIO()
        synth_photo(rng, *size).save(buffer, format="JPEG", quality=90)
        photos.append(buffer.getvalue())
    return photos
