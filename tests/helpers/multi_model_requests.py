"""What deploy-mme must send on either SDK (tests/aws/test_sagemaker_aws.py for v2,
tests/aws/test_multi_model_v3.py for v3), after Stubber validated each request against botocore's models."""

from __future__ import annotations

from helpers.sagemaker_requests import SERVE_IMAGE


def check_multi_model_deployment(recorder, endpoint_name: str) -> None:
    model = recorder.request("CreateModel")
    container = model["PrimaryContainer"]
    assert container["Mode"] == "MultiModel"
    assert container["ModelDataUrl"] == "s3://b/models/"
    assert container["Image"] == SERVE_IMAGE
    assert container["Environment"] == {"SAGEMAKER_MULTI_MODEL": "true", "SAGEMAKER_MODEL_MEMORY_BUDGET_MB": "2048"}
    variant = recorder.request("CreateEndpointConfig")["ProductionVariants"][0]
    assert variant["ModelName"] == model["ModelName"]
    assert variant["InstanceType"] == "ml.m5.large" and variant["InitialInstanceCount"] == 1
    assert "ContainerStartupHealthCheckTimeoutInSeconds" not in variant  # no model loads at start
    assert recorder.request("CreateEndpoint")["EndpointName"] == endpoint_name


def check_invocation(recorder, endpoint_name: str) -> None:
    call = recorder.request("InvokeEndpoint")
    assert call["EndpointName"] == endpoint_name and call["TargetModel"] == "customer-a.tar.gz"
    assert call["ContentType"] == "image/jpeg" and call["CustomAttributes"] == "top_k=2"
