#!/usr/bin/env python3
"""Make a small, learnable, synthetic image data set in the dogImages layout.

    make_sample_data.py OUT [--classes 4] [--per-class 24] [--seed 0]

OUT/train, OUT/valid, OUT/test each hold one folder per class
(`001.red_disc`, ...). Each class is a colour and a shape on a noisy
background, so a small network learns it in a few epochs. The files mix what
real folders hold: JPEG and PNG, sizes from 64 to 400 px, RGB, greyscale,
CMYK, palette and RGBA images, EXIF-rotated JPEGs, and one corrupt file in
train/ that the trainer must skip and count.
"""

from __future__ import annotations

import argparse
import io
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = [
    ("red_disc", (220, 40, 40), "disc"),
    ("green_bars", (40, 190, 60), "bars"),
    ("blue_square", (40, 70, 220), "square"),
    ("yellow_cross", (230, 210, 40), "cross"),
    ("purple_ring", (150, 50, 180), "ring"),
    ("cyan_triangle", (40, 200, 210), "triangle"),
]
SPLITS = {"train": 1.0, "valid": 0.25, "test": 0.25}


def draw(kind: str, colour, size: tuple[int, int], rng: random.Random) -> Image.Image:
    w, h = size
    noise = np.random.default_rng(rng.randrange(2**32)).integers(90, 166, (h, w, 3), dtype=np.uint8)
    img = Image.fromarray(noise, "RGB")
    d = ImageDraw.Draw(img)
    cx, cy = w * rng.uniform(0.4, 0.6), h * rng.uniform(0.4, 0.6)
    r = min(w, h) * rng.uniform(0.25, 0.4)
    box = (cx - r, cy - r, cx + r, cy + r)
    if kind == "disc":
        d.ellipse(box, fill=colour)
    elif kind == "ring":
        d.ellipse(box, outline=colour, width=max(2, int(r / 3)))
    elif kind == "square":
        d.rectangle(box, fill=colour)
    elif kind == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    elif kind == "cross":
        t = r / 3
        d.rectangle((cx - r, cy - t, cx + r, cy + t), fill=colour)
        d.rectangle((cx - t, cy - r, cx + t, cy + r), fill=colour)
    else:  # bars
        step = max(4, int(r / 2))
        for x in range(0, w, step * 2):
            d.rectangle((x, 0, x + step - 1, h), fill=colour)
    return img


def encode(img: Image.Image, variant: int) -> tuple[bytes, str]:
    """Cycle through the file kinds a real folder holds."""
    buf = io.BytesIO()
    kind = variant % 6
    if kind == 0:
        img.save(buf, "JPEG", quality=90)
        return buf.getvalue(), ".jpg"
    if kind == 1:
        img.save(buf, "PNG")
        return buf.getvalue(), ".png"
    if kind == 2:
        img.convert("CMYK").save(buf, "JPEG", quality=90)
        return buf.getvalue(), ".jpg"
    if kind == 3:
        img.convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(buf, "PNG")
        return buf.getvalue(), ".png"
    if kind == 4:
        rgba = img.convert("RGBA")
        rgba.putalpha(230)
        rgba.save(buf, "PNG")
        return buf.getvalue(), ".png"
    # stored rotated, with EXIF orientation 6 (rotate 90 CW to view upright)
    exif = Image.Exif()
    exif[0x0112] = 6
    img.transpose(Image.Transpose.ROTATE_90).save(buf, "JPEG", quality=90, exif=exif.tobytes())
    return buf.getvalue(), ".jpg"


def make(out: Path, classes: int = 4, per_class: int = 24, seed: int = 0, corrupt: bool = True) -> Path:
    rng = random.Random(seed)
    for split, share in SPLITS.items():
        count = max(2, int(per_class * share))
        for index, (name, colour, kind) in enumerate(CLASSES[:classes], start=1):
            folder = out / split / f"{index:03d}.{name}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                size = (rng.randint(64, 400), rng.randint(64, 400))
                img = draw(kind, colour, size, rng)
                if i % 7 == 3:
                    img = img.convert("L").convert("RGB")  # greyscale photo, stored as L below
                    payload = io.BytesIO()
                    img.convert("L").save(payload, "JPEG", quality=90)
                    blob, ext = payload.getvalue(), ".jpg"
                else:
                    blob, ext = encode(img, i + index)
                (folder / f"{name}_{i:04d}{ext}").write_bytes(blob)
    if corrupt:
        first = sorted((out / "train").iterdir())[0]
        (first / "corrupt_0000.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--classes", type=int, default=4, choices=range(2, len(CLASSES) + 1))
    parser.add_argument("--per-class", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    make(args.out, args.classes, args.per_class, args.seed)
    print(f"sample data written to {args.out}")


if __name__ == "__main__":
    main()
