"""InferenceService (server/service.py): the handler stages wired together, in process."""

from __future__ import annotations

import json

import pytest

from helpers.serving import Reference, encode, make_model_dir, sample_image
from server.errors import RequestError, UnsupportedAccept
from server.service import InferenceService, requested_top_k
from server.settings import Settings

USER_OUTPUT_FN = """
    def output_fn(prediction, accept):
        return "classes=%d" % prediction.shape[-1], "text/plain"
"""


def settings() -> Settings:
    return Settings.from_env({"SAGEMAKER_MODEL_SERVER_WORKERS": "1", "SAGEMAKER_BATCH_SIZE": "2"})


def test_default_stages_answer_like_training(tmp_path):
    model_dir = make_model_dir(tmp_path / "model")
    service = InferenceService(model_dir, settings())
    service.start_in_worker()
    try:
        image = encode(sample_image(2), "JPEG")
        body, kind = service.invoke(image, "image/jpeg", None, "top_k=1")
        best = json.loads(body)["predictions"]
        expected = Reference(model_dir).for_images(image)[0]
        assert kind == "application/json" and len(best) == 1
        assert best[0]["index"] == int(expected.argmax())
        assert service.last_batch_size() == 1
    finally:
        service.close()


def test_user_output_fn_replaces_the_default(tmp_path):
    service = InferenceService(
        make_model_dir(tmp_path / "model", inference_code=USER_OUTPUT_FN), settings(), code_tag="unit"
    )
    service.start_in_worker()
    try:
        assert service.overridden == ["output_fn"]
        assert service.invoke(encode(sample_image(), "PNG"), "image/png", None, None) == ("classes=6", "text/plain")
    finally:
        service.close()


def test_an_answer_nobody_accepts_is_a_406_before_any_work(tmp_path):
    """`Accept: text/html` was refused only after the decode and the forward pass: a full prediction's cost
    for every refused request. Now no stage runs; a user output_fn, which may write any type, still gets it."""
    service = InferenceService(make_model_dir(tmp_path / "model"), settings())
    service.start_in_worker()
    ran = []
    service.input_fn = lambda *args: ran.append("input_fn")
    try:
        with pytest.raises(UnsupportedAccept):
            service.invoke(encode(sample_image(), "JPEG"), "image/jpeg", "text/html", None)
        assert ran == []
    finally:
        service.close()
    user = InferenceService(make_model_dir(tmp_path / "user", inference_code=USER_OUTPUT_FN), settings(), code_tag="u2")
    user.start_in_worker()
    try:
        assert user.invoke(encode(sample_image(), "PNG"), "image/png", "text/plain", None) == (
            "classes=6",
            "text/plain",
        )
    finally:
        user.close()


@pytest.mark.parametrize(
    "attributes, top_k",
    [(None, 5), ("top_k=2", 2), (" top_k = 3 ;", 3), ("colour=red", 5), ("trace=abc;top_k=4,tenant", 4)],
)
def test_requested_top_k(attributes, top_k):
    assert requested_top_k(attributes) == top_k


@pytest.mark.parametrize("attributes", ["top_k=0", "top_k=x", "trace=abc, top_k=", "top_k=1, top_k=-1", "é=1"])
def test_bad_custom_attributes(attributes):
    with pytest.raises(RequestError):
        requested_top_k(attributes)
