"""Asynchronous endpoints on SDK v3 (the default): `sm.py deploy --async-output` and `sm.py invoke-async`,
their requests validated against botocore's service models with Stubber (no AWS reached) and checked
with the same expectations as v2's (tests/helpers/async_requests.py)."""

from __future__ import annotations

import pytest

from helpers.async_requests import (
    DEPLOY_FLAGS,
    check_async_endpoint_config,
    check_async_model,
    check_invoke_async,
    stub_s3,
)
from helpers.sagemaker_requests import ARN, aws_config
from launch import async_inference
from launch.v3 import commands
from sm import build_parser

CREATED = "2026-01-01T00:00:00Z"


def endpoint(status: str) -> dict:
    return {
        "EndpointName": "album",
        "EndpointArn": ARN,
        "EndpointConfigName": "album",
        "EndpointStatus": status,
        "CreationTime": CREATED,
        "LastModifiedTime": CREATED,
    }


def test_deploy_async_output_makes_an_asynchronous_endpoint(aws):
    session, config, recorder = aws
    recorder.expect("sagemaker", "create_model", {"ModelArn": ARN})
    recorder.expect(
        "sagemaker", "describe_model", {"ModelName": "album-model", "ModelArn": ARN, "CreationTime": CREATED}
    )
    recorder.expect("sagemaker", "create_endpoint_config", {"EndpointConfigArn": ARN})
    recorder.expect(
        "sagemaker",
        "describe_endpoint_config",
        {
            "EndpointConfigName": "album",
            "EndpointConfigArn": ARN,
            "CreationTime": CREATED,
            "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": "album-model"}],
        },
    )
    recorder.expect("sagemaker", "create_endpoint", {"EndpointArn": ARN})
    recorder.expect("sagemaker", "describe_endpoint", endpoint("Creating"))
    recorder.expect("sagemaker", "describe_endpoint", endpoint("InService"))
    commands.cmd_deploy(build_parser().parse_args(DEPLOY_FLAGS), config, session)
    check_async_model(recorder.request("CreateModel"))
    check_async_endpoint_config(recorder.request("CreateEndpointConfig"))


def test_a_real_time_deploy_sends_no_async_config(aws):
    session, config, recorder = aws
    from launch.v3 import hosting

    recorder.expect("sagemaker", "create_model", {"ModelArn": ARN})
    recorder.expect("sagemaker", "describe_model", {"ModelName": "m", "ModelArn": ARN, "CreationTime": CREATED})
    model = hosting.create_model(session, config, "s3://b/model.tar.gz", "m")
    assert recorder.request("CreateModel")["PrimaryContainer"].get("Environment", {}) == {}
    assert model.model_name == "m"


def test_invoke_async_uploads_a_file_and_queues_it_through_the_endpoint_resource(aws, tmp_path, capsys):
    session, config, recorder = aws
    s3 = stub_s3(recorder)
    request = tmp_path / "holiday.zip"
    request.write_bytes(b"PK\x05\x06" + bytes(18))
    s3.add_response("put_object", {"ETag": '"x"'})
    recorder.expect(
        "sagemaker-runtime",
        "invoke_endpoint_async",
        {"InferenceId": "abc", "OutputLocation": "s3://my-bucket/byoc/async-answers/abc.out"},
    )
    args = build_parser().parse_args(["invoke-async", "--endpoint-name", "album", str(request), "--top-k", "2"])
    commands.COMMANDS["invoke-async"](args, config, session)
    put = recorder.request("PutObject")
    assert (put["Bucket"], put["Key"]) == ("my-bucket", "byoc/async-input/holiday.zip")
    check_invoke_async(recorder.request("InvokeEndpointAsync"), "s3://my-bucket/byoc/async-input/holiday.zip")
    assert "s3://my-bucket/byoc/async-answers/abc.out" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--serverless", "2048:5"], "exclude each other"),
        (["--async-output", "/tmp/answers"], "s3:// URI"),
        (["--local"], "local mode"),
    ],
)
def test_async_options_that_cannot_work_are_refused_before_any_request(flags, says):
    args = build_parser().parse_args(DEPLOY_FLAGS + flags)
    with pytest.raises(SystemExit, match=says):
        async_inference.options(args, aws_config() if "--local" not in flags else _local())


def test_async_extras_need_an_output():
    args = build_parser().parse_args(["deploy", "--model-data", "s3://b/m.tar.gz", "--async-error-topic", "arn"])
    with pytest.raises(SystemExit, match="need --async-output"):
        async_inference.options(args, aws_config())


def test_the_environment_is_the_servers_own_variable():
    from server.settings import Settings

    assert Settings.from_env({**async_inference.environment(), "SM_MODEL_DIR": "/nonexistent"}).async_inference


def _local():
    config = aws_config()
    config.local = "local"
    return config
