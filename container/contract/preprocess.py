"""Image decoding and the evaluation transform, shared by training and serving.

Training evaluates with exactly these functions and serving predicts with
them, so an endpoint's probabilities equal the trainer's on the same image.
Only PIL and numpy are used (no torchvision), see contract/model.py for why.
"""

from __future__ import annotations

import io
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image

# Only these decoders are reachable from untrusted bytes: PIL knows dozens of
# formats, some of which (EPS) call external programs.
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "PPM")

# Refuse images whose header claims more pixels than this before decoding
# them: a few-KB PNG can claim 30000x30000 and would otherwise take GBs.
# decode_image checks the size itself, before any pixel is allocated (PIL's
# own check only warns below twice its limit, and turning that warning into
# an error with warnings.catch_warnings is not thread-safe: the server
# decodes in many threads at once). Above twice the limit PIL refuses too.
MAX_IMAGE_PIXELS = 64_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

# libjpeg runs over every coefficient of the image once per scan, and an empty scan is 10 bytes: 4,000 of
# them made one 4-megapixel request cost 1.2 s, and a 6 MB body holds 600,000. An encoder writes about 10
# (libjpeg's progression) and rarely dozens; 256 is NVIDIA nvImageCodec's default limit against the same
# attack (NVIMGCODEC_MAX_JPEG_SCANS).
MAX_JPEG_SCANS = 256


# EXIF orientation -> the transpose that shows the image upright (ImageOps.exif_transpose's table)
EXIF_ORIENTATION = 0x0112
EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# 16-bit greyscale is scaled to 8 bits this many rows at a time
ROWS_PER_BAND = 256


class ImageDecodeError(ValueError):
    """The bytes are not an image we can use; the message says why.

    Every failure of decoding or converting an image is this type: training
    skips and counts such files, serving answers 4xx with the message."""


class ImageTooLarge(ImageDecodeError):
    """The image would decode (or resize) to more pixels than allowed."""


@dataclass
class Preprocessing:
    image_size: int = 224  # centre crop fed to the network
    resize_size: int = 256  # shorter side before the crop
    mean: list = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list = field(default_factory=lambda: [0.229, 0.224, 0.225])

    @classmethod
    def for_image_size(cls, image_size: int) -> Preprocessing:
        # torchvision's 224/256 ratio, kept for every size
        return cls(image_size=image_size, resize_size=int(round(image_size * 256 / 224)))

    def to_dict(self) -> dict:
        return asdict(self)


def to_rgb(img: Image.Image, release_source: bool = False) -> Image.Image:
    """Apply EXIF orientation and convert any mode (L, CMYK, P, RGBA, I;16...) to RGB.

    Transparent pixels are composited on white, the way viewers show them,
    rather than taking whatever colour the fully transparent pixels store.
    Memory: at most the source and one RGB copy exist at full size at once;
    with `release_source` (decoding, where nobody else holds the source) the
    source's pixels are freed before an orientation transposes the copy. An
    8000x8000 RGBA PNG peaks at 0.5 GB instead of 1.4 GB.
    """
    orientation = img.getexif().get(EXIF_ORIENTATION, 1)
    rgb = _rgb_pixels(img)
    if release_source and rgb is not img:
        img.close()  # frees the pixels now, not when the caller's reference goes
    transpose = EXIF_TRANSPOSE.get(orientation)
    if transpose is None:
        return rgb
    upright = rgb.transpose(transpose)
    if release_source:
        rgb.close()
    return upright


def _rgb_pixels(img: Image.Image) -> Image.Image:
    if img.mode == "P" and "transparency" not in img.info:
        return img.convert("RGB")
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
        # the colour pasted through its own alpha onto white: alpha_composite's
        # pixels without its two full-size RGBA copies (a test checks every
        # colour and alpha against it)
        rgb = Image.new("RGB", img.size, (255, 255, 255))
        rgb.paste(img, mask=img)
        return rgb
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        return _scaled_to_8_bits(img).convert("RGB")
    return img.convert("RGB") if img.mode != "RGB" else img


def _scaled_to_8_bits(img: Image.Image) -> Image.Image:
    """16/32-bit greyscale scaled into 8 bits (instead of clipped), a band of
    rows at a time: no float32 copy of the whole image."""
    values = np.asarray(img)
    scale = 255.0 / max(float(values.max()), 1.0)
    grey = np.empty(values.shape, np.uint8)
    for top in range(0, len(values), ROWS_PER_BAND):
        band = values[top : top + ROWS_PER_BAND].astype(np.float32)
        grey[top : top + ROWS_PER_BAND] = (band * scale).astype(np.uint8)
    return Image.fromarray(grey, "L")


def decode_image(data: bytes, prep: Preprocessing | None = None, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Bytes -> RGB PIL image, or ImageDecodeError with a one-line reason.

    open_image then load_rgb; the server runs them apart, to admit the
    decode into its worker's budget between the two (server/decode_budget.py).
    """
    return load_rgb(open_image(data, prep, max_pixels))


def open_image(data: bytes, prep: Preprocessing | None = None, max_pixels: int = MAX_IMAGE_PIXELS) -> PendingImage:
    """The image's header read and its size checked; not a pixel decoded yet.

    With `prep`, JPEGs are decoded at a reduced DCT scale that still covers
    the resize size (PIL's draft mode): a 4000x3000 photo decodes ~8x faster
    and the result after resizing differs by less than JPEG noise.

    ImageTooLarge when the image would decode to more than `max_pixels`
    (counted after draft mode: what is allocated; but a progressive JPEG at
    its full size: libjpeg keeps every DCT coefficient of a progressive
    image at full size whatever the scale, so a 1.4 MB, 11000x11000 one
    drafted to 1375x1375 would take 700 MB), or, with `prep`, when its
    aspect ratio would make the resize before the centre crop that large
    (a 1x60000 strip would be resized to 256x15360000).
    """
    if not data:
        raise ImageDecodeError("empty image payload")
    with _decode_errors():
        img = Image.open(io.BytesIO(data), formats=FORMATS)
        full_pixels = img.width * img.height
        if img.format == "JPEG":
            check_scans(data)
        progressive = img.format == "JPEG" and bool(img.info.get("progressive"))
        if progressive:
            check_pixels(img.size, max_pixels, "a progressive JPEG, decoded at its full size of")
        if prep is not None and img.format == "JPEG":
            img.draft("RGB", (prep.resize_size, prep.resize_size))
        check_pixels(img.size, max_pixels)
        if prep is not None:
            check_pixels(resized_size(img.size, prep), max_pixels, "resized before the crop to")
        return PendingImage(img, full_pixels if progressive else img.width * img.height)


def load_rgb(pending: PendingImage) -> Image.Image:
    """Decode an opened image to RGB (to_rgb); its other pixels are freed on the way."""
    with _decode_errors():
        pending.image.load()
        # Inside the same guard: a mode conversion or EXIF orientation that
        # fails is as much the file's fault as a decoder error.
        return to_rgb(pending.image, release_source=True)


@dataclass
class PendingImage:
    """An image opened and checked by open_image, not decoded yet."""

    image: Image.Image
    pixels: int  # what decoding allocates at once: the drafted size, a progressive JPEG's full size


@contextmanager
def _decode_errors():
    """Every failure of PIL's as ImageDecodeError (or ImageTooLarge) with a one-line reason."""
    try:
        yield
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError:
        raise ImageTooLarge(f"image too large: more than {MAX_IMAGE_PIXELS} pixels") from None
    except Image.UnidentifiedImageError:
        raise ImageDecodeError(f"not a readable image: not one of {', '.join(FORMATS)}") from None
    except Exception as exc:  # PIL raises many types for truncated, damaged or odd data
        raise ImageDecodeError(f"not a readable image: {type(exc).__name__}: {exc}") from None


def check_scans(jpeg: bytes) -> None:
    """ImageDecodeError for a JPEG of more than MAX_JPEG_SCANS scans. Counted as its start-of-scan marker
    bytes, FF DA, anywhere in the file: never fewer than the scans libjpeg reads (byte stuffing keeps FF DA out
    of compressed data), more only by those inside metadata (an EXIF thumbnail's one), and 1 ms for 6 MB."""
    scans = jpeg.count(b"\xff\xda")
    if scans > MAX_JPEG_SCANS:
        raise ImageDecodeError(
            f"a JPEG of {scans} scans: at most {MAX_JPEG_SCANS} are decoded (each costs a pass over the image)"
        )


def check_pixels(size: tuple[int, int], max_pixels: int, what: str = "") -> None:
    width, height = size
    if width * height > max_pixels:
        where = f" ({what} {width}x{height})" if what else f" ({width}x{height})"
        raise ImageTooLarge(f"image too large: more than {max_pixels} pixels{where}")


def load_image_file(path, prep: Preprocessing | None = None) -> Image.Image:
    with open(path, "rb") as f:
        return decode_image(f.read(), prep)


def resized_size(size: tuple[int, int], prep: Preprocessing) -> tuple[int, int]:
    """(width, height) with the shorter side scaled to resize_size."""
    w, h = size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = prep.resize_size, int(prep.resize_size * long / short)
    return (new_short, new_long) if w <= h else (new_long, new_short)


def resize_and_crop(img: Image.Image, prep: Preprocessing) -> Image.Image:
    """Shorter side to resize_size (bilinear, antialiased), then centre crop.

    Done in one step: the source box that the crop covers is resized straight
    to the crop's size, which computes only the pixels that are kept (0.8 ms
    instead of 1.3 for a 500x375 photo; pixels differ by at most 1 of 255)."""
    width, height = img.size
    new_width, new_height = resized_size(img.size, prep)
    top = int(round((new_height - prep.image_size) / 2.0))
    left = int(round((new_width - prep.image_size) / 2.0))
    scale_x, scale_y = width / new_width, height / new_height
    box = (
        left * scale_x,
        top * scale_y,
        (left + prep.image_size) * scale_x,
        (top + prep.image_size) * scale_y,
    )
    return img.resize((prep.image_size, prep.image_size), Image.Resampling.BILINEAR, box=box)


def normalize(img: Image.Image, prep: Preprocessing) -> np.ndarray:
    """RGB PIL image -> float32 CHW array, scaled to [0,1] and normalised.

    One conversion pass and two in-place ones ((x/255 - mean)/std as
    x*scale - shift): a tenth of the time of the textbook expression."""
    std = np.asarray(prep.std, np.float32).reshape(3, 1, 1)
    scale = 1.0 / (255.0 * std)
    shift = np.asarray(prep.mean, np.float32).reshape(3, 1, 1) / std
    arr = np.asarray(img).transpose(2, 0, 1).astype(np.float32, order="C")
    arr *= scale
    arr -= shift
    return arr


def eval_transform(img: Image.Image, prep: Preprocessing) -> np.ndarray:
    """The evaluation transform: what validation, test and serving all see."""
    return normalize(resize_and_crop(img, prep), prep)
