"""deploy-component's plan before any request: the weights read from a model.tar.gz as a stream,
what a copy reserves, and the refusals of what cannot be deployed."""

from __future__ import annotations

import io
import tarfile

import pytest

from helpers.component_requests import arguments, model_archive
from helpers.sagemaker_requests import aws_config
from launch import inference_component
from server.reservation import reservation

pytestmark = pytest.mark.unit


def test_the_weights_are_model_pt_at_the_archive_top(tmp_path):
    assert inference_component.weights_in_archive(io.BytesIO(model_archive(12345))) == 12345
    path = tmp_path / "model.tar.gz"
    path.write_bytes(model_archive(777))
    assert inference_component.model_weights_bytes(None, f"file://{path}") == 777
    assert inference_component.model_weights_bytes(None, str(path)) == 777


def test_an_archive_without_weights_at_its_top_is_refused(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("nested/model.pt")  # not where the server looks
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    (tmp_path / "nested.tar.gz").write_bytes(buffer.getvalue())
    (tmp_path / "plain.txt").write_text("not an archive")
    for name in ("nested.tar.gz", "plain.txt"):
        args = arguments(model_data=str(tmp_path / name))
        with pytest.raises(SystemExit, match="not a model archive"):
            inference_component.run(args, aws_config(), None, None, None)


def test_the_plan_reserves_what_the_server_needs():
    plan = inference_component.ComponentPlan.from_args(arguments(cores=6), aws_config(), 94_000_000)
    assert plan.component_name == "dogs-ic" and plan.model_name == "dogs-model"
    assert plan.reservation == reservation(6, 94_000_000) and plan.reservation.workers == 3
    assert plan.compute_requirements() == {"NumberOfCpuCoresRequired": 6.0, "MinMemoryRequiredInMb": plan.memory_mb}
    assert plan.managed_instance_scaling() == {"Status": "ENABLED", "MinInstanceCount": 0, "MaxInstanceCount": 2}


@pytest.mark.parametrize("flags", [{"cores": 0}, {"copies": 0}, {"max_instances": 0}, {"max_copies": -1}])
def test_nonsense_counts_are_refused(flags):
    with pytest.raises(SystemExit, match="1 or more"):
        inference_component.run(arguments(**flags), aws_config(), None, None, None)


def test_local_mode_has_no_components():
    config = aws_config()
    config.local = "local"
    with pytest.raises(SystemExit, match="local mode"):
        inference_component.run(arguments(), config, None, None, None)


def test_a_gpu_instance_gives_each_copy_one_gpu_and_one_worker():
    config = aws_config()
    config.serve_instance = "ml.g5.xlarge"
    plan = inference_component.ComponentPlan.from_args(arguments(cores=4), config, 94_000_000)
    assert (plan.reservation.gpus, plan.reservation.workers, plan.reservation.torch_threads) == (1, 1, 4)
    assert plan.compute_requirements() == {
        "NumberOfCpuCoresRequired": 4.0,
        "NumberOfAcceleratorDevicesRequired": 1.0,
        "MinMemoryRequiredInMb": plan.memory_mb,
    }
    assert plan.reservation.environment()["SAGEMAKER_MODEL_SERVER_WORKERS"] == "1"
