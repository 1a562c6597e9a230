"""What an asynchronous endpoint's requests must hold on either SDK (tests/aws/test_async_inference_aws*.py):
the deploy command's flags, and one check per request, applied to v2's and v3's alike."""

from __future__ import annotations

import boto3
from botocore.stub import Stubber

from helpers.sagemaker_requests import REGION, SERVE_IMAGE, Recorder

OUTPUT = "s3://my-bucket/byoc/async-answers/"
FAILURES = "s3://my-bucket/byoc/async-failures/"
SUCCESS_TOPIC = "arn:aws:sns:eu-west-1:123456789012:album-done"
ERROR_TOPIC = "arn:aws:sns:eu-west-1:123456789012:album-failed"
DEPLOY_FLAGS = [
    "deploy",
    "--model-data",
    "s3://my-bucket/byoc/output/job/output/model.tar.gz",
    "--endpoint-name",
    "album",
    "--async-output",
    OUTPUT,
    "--async-failure",
    FAILURES,
    "--async-success-topic",
    SUCCESS_TOPIC,
    "--async-error-topic",
    ERROR_TOPIC,
    "--async-max-concurrency",
    "2",
]


def stub_s3(recorder: Recorder) -> Stubber:
    """An S3 client for the recorder's session, stubbed and recorded like the others."""
    client = boto3.Session(region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing").client(
        "s3", region_name=REGION
    )
    client.meta.events.register("before-parameter-build.*.*", recorder._keep)
    stubber = Stubber(client)
    stubber.activate()
    recorder.clients["s3"] = client
    recorder.stubbers["s3"] = stubber
    return stubber


def check_async_model(model: dict) -> None:
    assert model["PrimaryContainer"]["Image"] == SERVE_IMAGE
    assert model["PrimaryContainer"]["Environment"] == {"SAGEMAKER_ASYNC_INFERENCE": "true"}


def check_async_endpoint_config(endpoint_config: dict) -> None:
    assert endpoint_config["AsyncInferenceConfig"] == {
        "OutputConfig": {
            "S3OutputPath": OUTPUT,
            "S3FailurePath": FAILURES,
            "NotificationConfig": {"SuccessTopic": SUCCESS_TOPIC, "ErrorTopic": ERROR_TOPIC},
        },
        "ClientConfig": {"MaxConcurrentInvocationsPerInstance": 2},
    }
    variant = endpoint_config["ProductionVariants"][0]
    assert variant["InstanceType"] == "ml.m5.large" and variant["InitialInstanceCount"] == 1
    assert "ServerlessConfig" not in variant


def check_invoke_async(params: dict, location: str) -> None:
    assert params == {
        "EndpointName": "album",
        "InputLocation": location,
        "ContentType": "application/zip",
        "Accept": "application/jsonlines",
        "CustomAttributes": "top_k=2",
        "InvocationTimeoutSeconds": 3600,
    }
