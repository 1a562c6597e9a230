"""to_rgb with few full-size copies gives the textbook conversion's pixels, exactly; a
progressive JPEG is bounded at the size libjpeg allocates and at the scans it runs, before it is decoded."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from contract.preprocess import (
    EXIF_ORIENTATION,
    MAX_JPEG_SCANS,
    ImageDecodeError,
    ImageTooLarge,
    Preprocessing,
    decode_image,
    open_image,
    to_rgb,
)


def textbook_to_rgb(img: Image.Image) -> Image.Image:
    """The conversion as first written: full-size copies at every step, obviously right."""
    img = ImageOps.exif_transpose(img)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float32)
        img = Image.fromarray((arr * (255.0 / max(float(arr.max()), 1.0))).astype(np.uint8), "L")
    return img.convert("RGB") if img.mode != "RGB" else img


def assert_same_pixels(img: Image.Image) -> None:
    expected = np.asarray(textbook_to_rgb(img))
    assert np.array_equal(np.asarray(to_rgb(img)), expected)


def every_colour_and_alpha() -> np.ndarray:
    colour, alpha = np.meshgrid(np.arange(256), np.arange(256))
    return np.stack([colour, 255 - colour, (colour * 7) % 256, alpha], -1).astype(np.uint8)


def test_alpha_on_white_for_every_colour_and_alpha():
    rgba = every_colour_and_alpha()
    assert_same_pixels(Image.fromarray(rgba, "RGBA"))
    assert_same_pixels(Image.fromarray(rgba[..., [0, 3]], "LA"))
    assert_same_pixels(Image.fromarray(rgba, "RGBA").convert("PA"))


@pytest.mark.parametrize("transparency", [5, bytes(range(256))], ids=["one index", "every index"])
def test_palette_with_transparency(transparency):
    rng = np.random.default_rng(2)
    img = Image.fromarray(rng.integers(0, 256, (40, 60), dtype=np.uint8), "P")
    img.putpalette(rng.integers(0, 256, 768, dtype=np.uint8).tobytes())
    buffer = io.BytesIO()
    img.save(buffer, "PNG", transparency=transparency)
    assert_same_pixels(Image.open(io.BytesIO(buffer.getvalue())))


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_deep_greyscale_scaled_into_8_bits(mode):
    values = np.random.default_rng(0).integers(0, 40_000, (600, 70))  # more rows than one band
    img = Image.fromarray(values.astype(np.int32)) if mode == "I" else Image.fromarray(values.astype(np.uint16))
    assert_same_pixels(img.convert(mode) if mode == "I;16B" else img)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation(orientation):
    rgb = Image.fromarray(np.random.default_rng(1).integers(0, 256, (30, 50, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    buffer = io.BytesIO()
    rgb.save(buffer, "PNG", exif=exif.tobytes())
    assert_same_pixels(Image.open(io.BytesIO(buffer.getvalue())))


def jpeg(size: tuple[int, int], progressive: bool) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", size, 128).save(buffer, "JPEG", quality=10, progressive=progressive)
    return buffer.getvalue()


def test_a_progressive_jpeg_is_bounded_at_its_full_size_before_decoding():
    """libjpeg keeps a progressive image's DCT coefficients at full size whatever the draft
    scale: 24000x24000 grey (2 MB) would allocate 1.1 GB to decode to 3000x3000."""
    prep = Preprocessing.for_image_size(64)
    with pytest.raises(ImageTooLarge, match="progressive JPEG"):
        open_image(jpeg((4000, 4000), progressive=True), prep, max_pixels=10_000_000)
    pending = open_image(jpeg((4000, 4000), progressive=False), prep, max_pixels=10_000_000)
    assert pending.image.size == (500, 500) and pending.pixels == 500 * 500  # drafted: all it allocates
    pending = open_image(jpeg((3000, 3000), progressive=True), prep, max_pixels=10_000_000)
    assert pending.image.size == (375, 375) and pending.pixels == 3000 * 3000
    assert decode_image(jpeg((3000, 3000), progressive=True), prep).size == (375, 375)


# a scan of the first component's AC coefficients with no data: 10 bytes, and one more pass over the image
EMPTY_SCAN = bytes.fromhex("FFDA0008010100013F00")


@pytest.mark.parametrize("progressive", [True, False])
def test_a_jpeg_of_too_many_scans_is_refused_before_decoding(progressive):
    """4,000 empty scans made a 4-megapixel JPEG of 2.5 MB take 1.2 s to decode; a 6 MB body holds 600,000.
    A progressive JPEG of as many scans as the limit still decodes; one more is refused before any pass runs
    (a baseline one too: the count does not ask the header what the file claims to be)."""
    prep = Preprocessing.for_image_size(64)
    plain = jpeg((256, 256), progressive)
    written = plain.count(EMPTY_SCAN[:2])  # the encoder's own: 1 baseline, about 10 progressive
    at_limit = plain[:-2] + EMPTY_SCAN * (MAX_JPEG_SCANS - written) + plain[-2:]
    if progressive:
        assert decode_image(at_limit, prep).mode == "RGB"
    with pytest.raises(ImageDecodeError, match=f"a JPEG of {MAX_JPEG_SCANS + 1} scans: at most {MAX_JPEG_SCANS}"):
        open_image(at_limit[:-2] + EMPTY_SCAN + at_limit[-2:], prep)
