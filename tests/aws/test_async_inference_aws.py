"""Asynchronous endpoints on SDK v2 (`--sdk v2`): `sm.py deploy --async-output` and `sm.py invoke-async`,
their requests validated against botocore's service models with Stubber (no AWS reached) and checked
with the same expectations as v3's (tests/helpers/async_requests.py)."""

from __future__ import annotations

import pytest

from helpers.async_requests import (
    DEPLOY_FLAGS,
    check_async_endpoint_config,
    check_async_model,
    check_invoke_async,
    stub_s3,
)
from launch.v2 import commands
from sm import build_parser

pytestmark = pytest.mark.sdk_v2  # scripts/test.sh runs these in .venv-sdk-v2 (sagemaker 2.x)
ARN = "arn:aws:sagemaker:eu-west-1:1:endpoint/album"


def test_deploy_async_output_makes_an_asynchronous_endpoint(aws):
    session, config, recorder = aws
    recorder.expect("sagemaker", "create_model", {"ModelArn": ARN})
    recorder.expect("sagemaker", "create_endpoint_config", {"EndpointConfigArn": ARN})
    recorder.expect("sagemaker", "create_endpoint", {"EndpointArn": ARN})
    recorder.expect(
        "sagemaker",
        "describe_endpoint",
        {
            "EndpointName": "album",
            "EndpointArn": ARN,
            "EndpointConfigName": "album",
            "EndpointStatus": "InService",
            "CreationTime": "2026-01-01T00:00:00Z",
            "LastModifiedTime": "2026-01-01T00:00:00Z",
        },
    )
    commands.cmd_deploy(build_parser().parse_args([*DEPLOY_FLAGS, "--sdk", "v2"]), config, session)
    check_async_model(recorder.request("CreateModel"))
    check_async_endpoint_config(recorder.request("CreateEndpointConfig"))


def test_invoke_async_uploads_a_file_and_queues_it_with_boto3(aws, tmp_path, capsys):
    session, config, recorder = aws
    s3 = stub_s3(recorder)
    request = tmp_path / "holiday.zip"
    request.write_bytes(b"PK\x05\x06" + bytes(18))
    s3.add_response("put_object", {"ETag": '"x"'})
    recorder.expect(
        "sagemaker-runtime",
        "invoke_endpoint_async",
        {
            "InferenceId": "abc",
            "OutputLocation": "s3://my-bucket/byoc/async-answers/abc.out",
            "FailureLocation": "s3://my-bucket/byoc/async-failures/abc-error.out",
        },
    )
    args = build_parser().parse_args(
        ["invoke-async", "--sdk", "v2", "--endpoint-name", "album", str(request), "--top-k", "2"]
    )
    commands.COMMANDS["invoke-async"](args, config, session)
    check_invoke_async(recorder.request("InvokeEndpointAsync"), "s3://my-bucket/byoc/async-input/holiday.zip")
    printed = capsys.readouterr().out
    assert "abc.out" in printed and "abc-error.out" in printed


def test_an_s3_input_is_sent_as_it_is(aws):
    session, config, recorder = aws
    recorder.expect("sagemaker-runtime", "invoke_endpoint_async", {"OutputLocation": "s3://x/y.out"})
    args = build_parser().parse_args(
        ["invoke-async", "--sdk", "v2", "--endpoint-name", "album", "s3://b/in/photos.zip", "--top-k", "2"]
    )
    commands.COMMANDS["invoke-async"](args, config, session)
    check_invoke_async(recorder.request("InvokeEndpointAsync"), "s3://b/in/photos.zip")
