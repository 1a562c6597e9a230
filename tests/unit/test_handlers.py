"""The default handler stages (server/handlers.py) called directly, no HTTP."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.serving import CLASS_NAMES, IMAGE_SIZE, encode, make_model_dir, sample_image
from server.errors import RequestError, TooLarge, UnsupportedAccept, UnsupportedContentType
from server.handlers import CSV, JSON, NPY, DefaultHandlers, negotiate, probability_rows
from server.settings import Settings


@pytest.fixture(scope="module")
def handlers(tmp_path_factory):
    settings = Settings.from_env({"SAGEMAKER_MODEL_SERVER_WORKERS": "1", "SAGEMAKER_MAX_IMAGES_PER_REQUEST": "2"})
    return DefaultHandlers(make_model_dir(tmp_path_factory.mktemp("handlers") / "model"), settings)


def test_input_fn_reads_an_image_json_and_npy(handlers):
    jpeg = encode(sample_image(), "JPEG")
    assert handlers.input_fn(jpeg, "image/jpeg").shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    document = {"instances": [{"b64": base64.b64encode(jpeg).decode()}] * 2}
    assert handlers.input_fn(json.dumps(document).encode(), JSON).shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((3, IMAGE_SIZE, IMAGE_SIZE), np.float32))
    assert handlers.input_fn(buffer.getvalue(), NPY).shape == (3, IMAGE_SIZE, IMAGE_SIZE)


@pytest.mark.parametrize(
    "body, content_type, error",
    [
        (b"", "image/jpeg", RequestError),
        (b"not an image", "image/png", RequestError),
        (b"x", "text/plain", UnsupportedContentType),
        (b"{", JSON, RequestError),
        (json.dumps({"instances": [{"b64": "AAAA"}] * 3}).encode(), JSON, TooLarge),
    ],
)
def test_input_fn_refuses_bad_bodies(handlers, body, content_type, error):
    with pytest.raises(error):
        handlers.input_fn(body, content_type)


def test_output_fn_ranks_and_converts(handlers):
    probabilities = torch.tensor([0.1, 0.5, 0.1, 0.1, 0.1, 0.1])
    body, kind = handlers.output_fn(probabilities, None, top_k=2)
    assert kind == JSON
    assert [p["label"] for p in json.loads(body)["predictions"]] == [CLASS_NAMES[1], CLASS_NAMES[0]]
    body, kind = handlers.output_fn(probabilities[None], NPY)
    assert kind == NPY and np.load(io.BytesIO(body)).shape == (1, 6)
    assert handlers.output_fn(probabilities, CSV)[0].decode().count(",") == 5


def test_negotiate_and_logits():
    assert negotiate("image/png, application/x-npy;q=0.9") == NPY
    with pytest.raises(UnsupportedAccept):
        negotiate("image/png")
    rows, single = probability_rows([2.0, 0.0])  # logits get a softmax
    assert single and np.isclose(rows.sum(), 1) and rows[0, 0] > rows[0, 1]


def test_a_request_pays_for_a_progressive_jpeg_at_its_full_size(tmp_path):
    """A progressive JPEG decodes at full size whatever the draft scale: two of 2000x2000 (drafted to 250x250)
    spend 8 Mpx of a 6 Mpx request budget, not the 125,000 px of their drafted size."""
    settings = Settings.from_env({"SAGEMAKER_MODEL_SERVER_WORKERS": "1", "SAGEMAKER_MAX_PIXELS_PER_REQUEST": "6000000"})
    handlers = DefaultHandlers(make_model_dir(tmp_path / "model"), settings)
    buffer = io.BytesIO()
    Image.new("RGB", (2000, 2000), (90, 120, 200)).save(buffer, "JPEG", quality=10, progressive=True)
    one = {"b64": base64.b64encode(buffer.getvalue()).decode()}
    assert handlers.input_fn(json.dumps({"instances": [one]}).encode(), JSON).shape[0] == 1
    with pytest.raises(TooLarge, match="more than 6000000 pixels in all"):
        handlers.input_fn(json.dumps({"instances": [one, one]}).encode(), JSON)
