"""The default handler stages, with aws/sagemaker-inference-toolkit's signatures:

    model_fn(model_dir)                  -> model
    input_fn(request_body, content_type) -> data
    predict_fn(data, model)              -> prediction
    output_fn(prediction, accept)        -> (response body, content type)

model_dir/code/inference.py may replace any of them (service.py), so each
stage also takes what a user's neighbouring stage is likely to hand it:

    data        float32 tensor (3,H,W) for one image, (N,3,H,W) for several,
                preprocessed with contract.preprocess.eval_transform;
                predict_fn also takes a PIL image or a list of them.
    prediction  class probabilities, (C,) for one image or (N,C); output_fn
                also takes logits (rows that are not probabilities get a
                softmax), as a tensor, numpy array or list.

One image in gives one JSON object out, several give a list of them.
Nothing here knows HTTP: app.py is the transport.
"""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from contract import artifact
from contract.preprocess import (
    MAX_IMAGE_PIXELS,
    ImageDecodeError,
    ImageTooLarge,
    Preprocessing,
    eval_transform,
    load_rgb,
    normalize,
    open_image,
    resize_and_crop,
)
from server import runtimes
from server.batching import DynamicBatcher
from server.decode_budget import worker_budget
from server.errors import RequestError, TooLarge, UnsupportedAccept, UnsupportedContentType
from server.parsing import json_document, shown
from server.settings import Settings

IMAGE_TYPES = frozenset(
    {"image/jpeg", "image/png", "application/x-image", "image/webp", "image/bmp", "image/gif", "image/tiff"}
)
JSON = "application/json"
NPY = "application/x-npy"
CSV = "text/csv"
DEFAULT_TOP_K = 5
BASE64_WHITESPACE = str.maketrans("", "", " \t\r\n")


def media_type(header: str | None) -> str:
    """'Image/JPEG; charset=x' -> 'image/jpeg'."""
    return (header or "").split(";", 1)[0].strip().lower()


def forward(model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Class probabilities for a (N,3,H,W) batch, float32 on the CPU."""
    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(inputs.to(device).contiguous(memory_format=torch.channels_last))
        return torch.softmax(logits.float(), dim=1).cpu()


class DefaultHandlers:
    def __init__(self, model_dir, settings: Settings):
        # A user model_fn may load a model the trainer did not write: then
        # there is no config, and the defaults fall back to ImageNet's sizes.
        config_path = Path(model_dir) / artifact.CONFIG_FILE
        config = artifact.read_config(model_dir) if config_path.exists() else None
        self.prep = artifact.preprocessing(config) if config else Preprocessing()
        self.class_names = config["class_names"] if config else None
        self.settings = settings
        self.batcher: DynamicBatcher | None = None

    def model_fn(self, model_dir) -> torch.nn.Module:
        """The trainer's artifact: on a GPU host on the worker's GPU (it runs after the fork there,
        preload.py), so that the precision check runs where the model serves; elsewhere on the CPU,
        in gunicorn's master before the fork."""
        device = "cuda" if self.settings.gpus and torch.cuda.is_available() else "cpu"
        model, _ = artifact.load(model_dir, device)
        model = model.eval().to(memory_format=torch.channels_last)
        return runtimes.prepare(model, self.settings, model_dir, self.prep)  # SAGEMAKER_MODEL_RUNTIME, _PRECISION

    def warm(self, model: torch.nn.Module) -> None:
        """The first pass allocates buffers and picks kernels: pay for it before
        the worker takes requests, not in the first client's request."""
        size = self.prep.image_size
        forward(model, torch.zeros(1, 3, size, size))

    def bind(self, model: torch.nn.Module) -> None:
        """Batch the default predict_fn's forward passes of `model` (model_fn's result)."""
        self.batcher = DynamicBatcher(
            lambda inputs: forward(model, inputs),
            self.settings.batch_size,
            self.settings.batch_wait_ms,
            self.settings.predict_timeout_s,
            model_threads=getattr(model, "model_threads", 1),  # served.RuntimeModel's streams
        )
        # Requests run their forward passes in the batcher's thread, at batch
        # sizes up to the maximum: warm that thread at both ends before the
        # worker takes requests, so no client pays for first-use kernel selection.
        size = self.prep.image_size
        self.batcher.observed = False  # warm-up passes are no requests: not in /metrics
        for batch in sorted({1, self.settings.batch_size}):
            self.batcher.submit(torch.zeros(batch, 3, size, size))
        self.batcher.observed = True

    def input_fn(self, request_body: bytes, content_type: str | None) -> torch.Tensor:
        if not request_body:
            raise RequestError("empty request body")
        kind = media_type(content_type)
        budget = PixelBudget(self.settings.max_pixels_per_request)
        if kind in IMAGE_TYPES:
            return self._preprocess(request_body, budget)
        if kind == JSON:
            images, is_batch = images_from_json(request_body, self.settings.max_images_per_request)
            tensors = [self._preprocess(image, budget) for image in images]
            return torch.stack(tensors) if is_batch else tensors[0]
        if kind == NPY:
            return read_npy(request_body, self.prep.image_size, self.settings.max_images_per_request, budget)
        raise UnsupportedContentType(
            f"content type {content_type!r} not supported: send an image ({', '.join(sorted(IMAGE_TYPES))}), "
            f"{JSON} with base64 images, or {NPY} with preprocessed float32 arrays"
        )

    def preprocess_image(self, encoded_image: bytes) -> torch.Tensor:
        """One image of an asynchronous request (async_inference.py): bounded alone by the
        request's pixel limit, as one real-time request holding only it."""
        return self._preprocess(encoded_image, PixelBudget(self.settings.max_pixels_per_request))

    def _preprocess(self, encoded_image: bytes, budget: PixelBudget) -> torch.Tensor:
        """One image to its input tensor. Its decode holds pixels of the worker's
        decode budget (decode_budget.py) until the image is cropped: the
        full-size pixels are freed at once, not when the request ends."""
        try:
            pending = open_image(encoded_image, self.prep, budget.per_image_limit())
            budget.spend(pending.pixels)  # what decoding allocates: a progressive JPEG's full size
            settings = self.settings
            with worker_budget(settings.decode_pixels_per_worker, settings.decode_wait_s).reserve(pending.pixels):
                image = load_rgb(pending)
                cropped = resize_and_crop(image, self.prep)
                image.close()
            return torch.from_numpy(normalize(cropped, self.prep))
        except ImageTooLarge as exc:
            raise TooLarge(budget.explain(str(exc))) from None
        except ImageDecodeError as exc:
            raise RequestError(str(exc)) from None

    def predict_fn(self, data, model) -> torch.Tensor:
        """Probabilities from the batcher bound to `model` by bind()."""
        inputs = self._as_tensor(data)
        batcher = self.batcher
        if batcher is None:
            raise RuntimeError("predict_fn before bind(): no batcher")
        if inputs.dim() == 3:
            return batcher.submit(inputs.unsqueeze(0))[0]
        return batcher.submit(inputs)

    def _as_tensor(self, data) -> torch.Tensor:
        if isinstance(data, Image.Image):
            return torch.from_numpy(eval_transform(data, self.prep))
        if isinstance(data, (list, tuple)) and data and all(isinstance(d, Image.Image) for d in data):
            return torch.from_numpy(np.stack([eval_transform(d, self.prep) for d in data]))
        tensor = torch.as_tensor(data, dtype=torch.float32)
        if tensor.dim() not in (3, 4):
            raise ValueError(f"predict_fn got data shaped {tuple(tensor.shape)}: expected (3,H,W) or (N,3,H,W)")
        return tensor

    def output_fn(self, prediction, accept: str | None, top_k: int = DEFAULT_TOP_K) -> tuple[bytes, str]:
        kind = negotiate(accept)
        rows, single = probability_rows(prediction)
        buffer = io.BytesIO()
        if kind == NPY:
            np.save(buffer, rows)
        elif kind == CSV:
            np.savetxt(buffer, rows, delimiter=",", fmt="%.9g")  # 9 digits round-trip float32
        else:
            ranked = [{"predictions": self.top_classes(row, top_k)} for row in rows]
            buffer.write(json.dumps(ranked[0] if single else ranked).encode())
        return buffer.getvalue(), kind

    def top_classes(self, row: np.ndarray, top_k: int) -> list[dict]:
        """One image's `top_k` classes, most probable first, as the JSON answer lists them."""
        names = self.class_names if self.class_names and len(self.class_names) == len(row) else None
        order = np.argsort(-row, kind="stable")[:top_k]
        return [{"label": names[i] if names else str(i), "index": int(i), "probability": float(row[i])} for i in order]


class PixelBudget:
    """The pixels one request's images may decode to, together
    (SAGEMAKER_MAX_PIXELS_PER_REQUEST); each image is refused before its
    pixels are allocated when it would overdraw what is left."""

    def __init__(self, limit: int):
        self.limit = limit
        self.left = limit

    def per_image_limit(self) -> int:
        return min(self.left, MAX_IMAGE_PIXELS)

    def spend(self, pixels: int) -> None:
        if pixels > self.left:
            raise TooLarge(self.over_budget())
        self.left -= pixels

    def over_budget(self) -> str:
        return f"the request's images decode to more than {self.limit} pixels in all (SAGEMAKER_MAX_PIXELS_PER_REQUEST)"

    def explain(self, reason: str) -> str:
        """Why an image was refused as too large: alone, or together with the request's others."""
        if self.left < self.limit and self.left < MAX_IMAGE_PIXELS:
            return self.over_budget()
        return reason + (" (SAGEMAKER_MAX_PIXELS_PER_REQUEST)" if self.limit < MAX_IMAGE_PIXELS else "")


def check_image_count(count: int, max_images: int) -> None:
    if count > max_images:
        raise TooLarge(f"{count} images in one request: at most {max_images} (SAGEMAKER_MAX_IMAGES_PER_REQUEST)")


def images_from_json(body: bytes, max_images: int) -> tuple[list[bytes], bool]:
    """{"instances": [{"b64": ...}, ...]} or {"b64": ...} / {"image": ...} -> (images, is_batch).
    The count is checked before any base64 is decoded."""
    # an instance is an object and a member, plus its comma; some room for keys a client adds beside them
    document = json_document(body, 4 * max_images + 64, f" for {max_images} images (SAGEMAKER_MAX_IMAGES_PER_REQUEST)")
    if isinstance(document, dict) and "instances" in document:
        instances = document["instances"]
        if not isinstance(instances, list) or not instances:
            raise RequestError('"instances" must be a non-empty list')
        check_image_count(len(instances), max_images)
        return [base64_image(item, f"instances[{i}]") for i, item in enumerate(instances)], True
    return [base64_image(document, "the request")], False


def base64_image(item, where: str) -> bytes:
    keys = [key for key in ("b64", "image") if key in item] if isinstance(item, dict) else []
    if len(keys) != 1 or not isinstance(item[keys[0]], str):
        raise RequestError(f'{where}: expected {{"b64": "<base64 image>"}} or {{"image": "<base64 image>"}}')
    try:
        # ASCII whitespace is dropped first: line-wrapped base64 (MIME style) is common;
        # anything else outside the alphabet (a no-break space, a surrogate) is a 400
        return base64.b64decode(item[keys[0]].translate(BASE64_WHITESPACE), validate=True)
    except ValueError:
        raise RequestError(f"{where}: malformed base64") from None


def read_npy(body: bytes, image_size: int, max_images: int, budget: PixelBudget) -> torch.Tensor:
    """A float32 (3,S,S) or (N,3,S,S) .npy array. The header is checked before
    any array is allocated: it could claim a shape far larger than the body."""
    stream = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(version)
    except Exception:  # noqa: BLE001
        # numpy parses the header with tokenize and ast.literal_eval, which raise what they like on odd text
        # (TokenError, SyntaxError, RecursionError when nested deep); their messages can quote the client's
        # header at length or an object's heap address
        raise RequestError(
            "not a .npy array of format 1.0 or 2.0: its magic string, version or header is malformed"
        ) from None
    image_shape = (3, image_size, image_size)
    if dtype != np.float32:
        raise RequestError(f"npy dtype {shown(dtype.str)}: expected float32 (<f4)")
    if len(shape) not in (3, 4) or tuple(shape[-3:]) != image_shape or 0 in shape:
        raise RequestError(
            f"npy shape {shown(str(shape), 60)}: expected {image_shape} or (N, {', '.join(map(str, image_shape))}), "
            "preprocessed like training's evaluation"
        )
    images = shape[0] if len(shape) == 4 else 1
    check_image_count(images, max_images)
    budget.spend(images * image_size * image_size)
    if len(body) - stream.tell() != math.prod(shape) * dtype.itemsize:
        raise RequestError(f"npy data does not match its header's shape {shape}")
    array = np.load(io.BytesIO(body), allow_pickle=False)
    if not np.isfinite(array).all():
        raise RequestError("npy array holds NaN or infinite values")
    return torch.from_numpy(np.ascontiguousarray(array))


def negotiate(accept: str | None) -> str:
    """The response type for an Accept header: the first listed one we can write."""
    for item in (accept or "").split(","):
        kind = media_type(item)
        if kind in ("", "*/*", "application/*"):
            return JSON
        if kind in (JSON, NPY, CSV):
            return kind
    raise UnsupportedAccept(f"cannot answer with {shown(accept or '', 80)}: accept one of {JSON}, {NPY}, {CSV}")


def probability_rows(prediction) -> tuple[np.ndarray, bool]:
    """-> (float32 (N,C) probabilities, whether the prediction was for a single image)."""
    if isinstance(prediction, torch.Tensor):
        prediction = prediction.detach().float().cpu().numpy()
    rows = np.asarray(prediction, dtype=np.float32)
    single = rows.ndim == 1
    if single:
        rows = rows[None, :]
    if rows.ndim != 2 or rows.shape[1] == 0:
        raise ValueError(f"prediction shaped {rows.shape}: expected (classes,) or (N, classes)")
    if not ((rows >= 0).all() and np.allclose(rows.sum(axis=1), 1.0, atol=1e-3)):
        shifted = np.exp(rows.astype(np.float64) - rows.max(axis=1, keepdims=True))
        rows = (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)
    return rows, single
