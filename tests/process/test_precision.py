"""SAGEMAKER_MODEL_PRECISION and SAGEMAKER_MODEL_COMPILE against the real server, on a model the
trainer trained and wrote (calibration sample included), and the data set's own test images.

A trained model (helpers/training.py's CONVERGED_HPS), because rounding is judged against decision
margins: a random-weight network's int8 answers differ from fp32's by up to 0.37 in probability,
and which of its images flip changes with the CPU. helpers/serving.py's assert_like_fp32 says what
counts as right.

The CPU's instruction sets are set through SAGEMAKER_CPU_FLAGS, so each case holds
on every CPU: bf16 runs (slowly) where the flags claim native bf16 and there is none.
No speed is asserted here, only which mode is in effect and that its answers are right.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from contract import artifact
from helpers.serving import Reference, ServerProcess, assert_like_fp32, make_calibrated_model_dir, served_probabilities
from helpers.training import train_converged_model


@pytest.fixture(scope="module")
def trained_model(sample_data, tmp_path_factory):
    return train_converged_model(tmp_path_factory.mktemp("precision"), sample_data)


@pytest.fixture(scope="module")
def calibrated_model(sample_data, tmp_path_factory):
    """A model directory whose calibration sample was written from a list with an unreadable file first."""
    root = tmp_path_factory.mktemp("calibrated")
    corrupt = root / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8 not a JPEG")
    return make_calibrated_model_dir(root / "model", sample_data, unreadable=(corrupt,))


def test_calibration_sample_skips_unreadable_files_and_is_small(calibrated_model):
    prep = artifact.preprocessing(artifact.read_config(calibrated_model))
    files = artifact.calibration_files(calibrated_model)
    assert len(files) == artifact.CALIBRATION_IMAGES
    for path in files:
        with Image.open(path) as image:
            assert image.format == "JPEG" and min(image.size) == prep.resize_size


@pytest.mark.parametrize(
    "precision, compile_mode, flags, atol",
    [
        ("bf16", "none", "avx2 avx512_bf16", 0.02),
        ("int8", "none", "avx2", 0.3),
        ("fp32", "jit", "avx2", 1e-4),
    ],
)
def test_mode_in_effect_agrees_with_fp32(precision, compile_mode, flags, atol, trained_model, sample_images, serve):
    server = serve(
        trained_model,
        SAGEMAKER_MODEL_PRECISION=precision,
        SAGEMAKER_MODEL_COMPILE=compile_mode,
        SAGEMAKER_CPU_FLAGS=flags,
    )
    assert f"precision {precision} (compile {compile_mode}) in effect: top-1 agreement with fp32" in server.log()
    reference = Reference(trained_model)
    expected = reference.for_images(*sample_images)
    assert_like_fp32(served_probabilities(server, sample_images), expected, precision, atol)


@pytest.mark.parametrize(
    "precision, flags, reason, without_calibration",
    [
        ("bf16", "avx2 avx512_vnni", "this CPU has no native bf16 instructions", False),
        ("int8", "avx2", "this model has none", True),
        ("fp16", "avx2 avx512_bf16", "runs fast on GPUs only", False),
    ],
)
def test_mode_that_cannot_run_well_falls_back_to_fp32(
    precision, flags, reason, without_calibration, trained_model, sample_images, serve, tmp_path
):
    model_dir = trained_model
    if without_calibration:
        model_dir = tmp_path / "model"
        shutil.copytree(trained_model, model_dir, ignore=shutil.ignore_patterns(artifact.CALIBRATION_DIR))
    server = serve(model_dir, SAGEMAKER_MODEL_PRECISION=precision, SAGEMAKER_CPU_FLAGS=flags)
    assert f"SAGEMAKER_MODEL_PRECISION={precision} SAGEMAKER_MODEL_COMPILE=none falls back to fp32" in server.log()
    assert reason in server.log()
    expected = Reference(trained_model).for_images(*sample_images[:4])
    np.testing.assert_allclose(served_probabilities(server, sample_images[:4]), expected, atol=1e-5)


def test_unknown_precision_is_refused_by_name(trained_model, tmp_path):
    server = ServerProcess(trained_model, tmp_path / "server.log", SAGEMAKER_MODEL_PRECISION="int4")
    try:
        assert server.process.wait(timeout=60) != 0
    finally:
        server.stop()
    assert "SAGEMAKER_MODEL_PRECISION='int4': expected one of fp32, bf16, int8, fp16" in server.log()
