"""SDK v3 local mode end to end on the images the test run built, with no AWS account: ModelTrainer
(Mode.LOCAL_CONTAINER) trains, its compressed_artifacts/model.tar.gz feeds a LocalSession endpoint
(invoked through the session and through plain HTTP) and a v3 Transformer batch job."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import tarfile
import time

import pytest
import requests

from contract.spec import metrics
from contract.spec.artifact import WEIGHTS_FILE
from helpers import local_mode
from helpers.training import ROOT, build_image


@pytest.fixture(scope="module")
def images(engine):
    build_image(engine, "train")
    build_image(engine, "serve", "cpu")


def test_train_deploy_invoke_transform_on_v3(engine, images, sample_data, tmp_path, containers_left_by_this_test):
    trained = local_mode.sm(
        engine,
        tmp_path,
        "train",
        "--data",
        str(sample_data),
        "--job-name",
        "v3-local",
        *local_mode.HP_FLAGS,
    )
    log = trained.stdout + trained.stderr
    found = metrics.parse_log(log)
    assert len(found["validation:loss"]) == 4 and len(found["test:accuracy"]) == 1, log[-3000:]
    model_data = re.search(r"^model: (file://\S+)$", trained.stdout, re.MULTILINE).group(1)
    archive = tmp_path / "jobs" / "v3-local" / "compressed_artifacts" / "model.tar.gz"
    assert model_data == f"file://{archive}"
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert any(name.endswith(WEIGHTS_FILE) for name in names), names

    seen = local_mode.probe(sample_data, model_data, tmp_path / "ref")
    deployed = local_mode.sm(
        engine, tmp_path, "deploy", "--model-data", model_data, "--invoke", str(seen.red), str(seen.blue)
    )
    local_mode.assert_invoked(deployed.stdout, seen)

    # the same endpoint over plain HTTP, while `deploy` serves it
    server = subprocess.Popen(
        [sys.executable, "scripts/sm.py", "deploy", "--model-data", model_data, "--local", "--workdir", str(tmp_path)],
        cwd=ROOT,
        env=local_mode.sm_env(engine, tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            line = server.stdout.readline()
            if "is in service" in line or not line:
                break
        response = requests.post(
            "http://127.0.0.1:8080/invocations",
            data=seen.blue.read_bytes(),
            timeout=60,
            headers={"Content-Type": "image/jpeg", "X-Amzn-SageMaker-Custom-Attributes": "top_k=2"},
        )
        assert response.status_code == 200, response.text
        assert response.json()["predictions"][0]["label"] == seen.expected[seen.blue.name]
    finally:
        server.send_signal(signal.SIGINT)
        out, _ = server.communicate(timeout=120)
    assert "stopped" in out

    local_mode.assert_transform(lambda *args: local_mode.sm(engine, tmp_path, *args), model_data, seen, tmp_path)
    local_mode.assert_no_job_containers_left(containers_left_by_this_test())
