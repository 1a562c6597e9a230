"""SageMaker local mode end to end on the images the test run built, with no AWS credentials:
the v2 path (`sm.py --sdk v2` in .venv-sdk-v2); test_sagemaker_local_v3.py runs the v3 one."""

from __future__ import annotations

import re

import pytest

from helpers import local_mode
from helpers.training import SDK_V2_PYTHON, build_image


@pytest.fixture(scope="module")
def images(engine):
    build_image(engine, "train")
    build_image(engine, "serve", "cpu")


def sm(engine, workdir, *args):
    return local_mode.sm(engine, workdir, *args, "--sdk", "v2", python=str(SDK_V2_PYTHON))


def test_train_deploy_predict_transform(engine, images, sample_data, tmp_path, containers_left_by_this_test):
    trained = sm(engine, tmp_path, "train", "--data", str(sample_data), *local_mode.HP_FLAGS)
    assert "#metric split=test loss=" in trained.stdout
    model_data = re.search(r"^model: (file://\S+model\.tar\.gz)$", trained.stdout, re.MULTILINE).group(1)

    seen = local_mode.probe(sample_data, model_data, tmp_path / "ref")
    deployed = sm(engine, tmp_path, "deploy", "--model-data", model_data, "--invoke", str(seen.red), str(seen.blue))
    local_mode.assert_invoked(deployed.stdout, seen)
    assert "local endpoint" in deployed.stdout and "stopped" in deployed.stdout

    local_mode.assert_transform(lambda *args: sm(engine, tmp_path, *args), model_data, seen, tmp_path)
    local_mode.assert_no_job_containers_left(containers_left_by_this_test())
