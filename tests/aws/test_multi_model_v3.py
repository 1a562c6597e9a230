"""deploy-mme on SDK v3 (no MultiDataModel there): the same requests as v2's, validated against botocore's
service models with Stubber and checked with the expectations both share (tests/helpers/multi_model_requests.py)."""

from __future__ import annotations

import io
import json

from botocore.response import StreamingBody

from helpers.multi_model_requests import check_invocation, check_multi_model_deployment
from helpers.sagemaker_requests import ARN
from launch.v3 import multi_model

CREATED = "2026-01-01T00:00:00Z"


def test_multi_model_endpoint_deploys_and_invokes_by_target_model(aws, tmp_path):
    session, config, recorder = aws
    recorder.expect("sagemaker", "create_model", {"ModelArn": ARN})
    recorder.expect("sagemaker", "describe_model", {"ModelName": "pets", "ModelArn": ARN, "CreationTime": CREATED})
    recorder.expect("sagemaker", "create_endpoint_config", {"EndpointConfigArn": ARN})
    recorder.expect(
        "sagemaker",
        "describe_endpoint_config",
        {
            "EndpointConfigName": "pets",
            "EndpointConfigArn": ARN,
            "CreationTime": CREATED,
            "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": "pets"}],
        },
    )
    recorder.expect("sagemaker", "create_endpoint", {"EndpointArn": ARN})
    recorder.expect(
        "sagemaker",
        "describe_endpoint",
        {
            "EndpointName": "pets",
            "EndpointArn": ARN,
            "EndpointConfigName": "pets",
            "EndpointStatus": "Creating",
            "CreationTime": CREATED,
            "LastModifiedTime": CREATED,
        },
    )
    answer = json.dumps({"predictions": [{"label": "cats", "index": 0, "probability": 0.9}]}).encode()
    recorder.expect(
        "sagemaker-runtime",
        "invoke_endpoint",
        {"Body": StreamingBody(io.BytesIO(answer), len(answer)), "ContentType": "application/json"},
    )
    multi_model.deploy(session, config, "pets", "s3://b/models", memory_budget_mb=2048, wait=False)
    image = tmp_path / "cat.jpg"
    image.write_bytes(b"\xff\xd8 fake jpeg")
    assert multi_model.invoke(session, "pets", "customer-a.tar.gz", image, 2)["predictions"][0]["label"] == "cats"
    check_multi_model_deployment(recorder, "pets")
    check_invocation(recorder, "pets")


def test_add_models_copies_under_the_prefix(aws):
    session, _, recorder = aws
    recorder.expect("s3", "copy_object", {"CopyObjectResult": {}})
    source = "s3://my-bucket/byoc/output/byoc-train-7/output/model.tar.gz"
    assert multi_model.add_models(session, "s3://b/models", [source]) == ["byoc-train-7.tar.gz"]
    assert recorder.request("CopyObject") == {
        "Bucket": "b",
        "Key": "models/byoc-train-7.tar.gz",
        "CopySource": {"Bucket": "my-bucket", "Key": "byoc/output/byoc-train-7/output/model.tar.gz"},
    }
