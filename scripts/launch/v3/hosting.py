"""Endpoints, invocations and batch transform on SDK v3, around the serving image.

AWS: the sagemaker.core resources (Model, EndpointConfig, Endpoint: v3's typed layer over the
SageMaker API) create what v2's Model.deploy created, with the same fields; Endpoint.invoke and
plain boto3 sagemaker-runtime call it; sagemaker.core.transformer.Transformer runs batch transform.
Not ModelBuilder: it picks and configures a model server of its own (TorchServe, DJL, ...), and
our image is its own server. Local mode: see launch/v3/local.py.
"""

from __future__ import annotations

import json
from pathlib import Path

from launch.config import Config
from launch.hosting import (  # noqa: F401
    STARTUP_TIMEOUT_S,
    TRANSFORM_REQUEST,
    autoscale,
    cleanup,
    content_type,
    endpoint_model_name,
    invoke_with_boto3,
    transformer_arguments,
)
from launch.training import PROJECT_TAG


def _tags():
    from sagemaker.core.shapes import Tag

    return [Tag(key=PROJECT_TAG["Key"], value=PROJECT_TAG["Value"])]


def create_model(session, config: Config, model_data: str, name: str, env: dict | None = None):
    from sagemaker.core.resources import Model
    from sagemaker.core.shapes import ContainerDefinition

    return Model.create(
        model_name=name,
        execution_role_arn=config.role,
        tags=_tags(),
        primary_container=ContainerDefinition(
            image=config.serve_image, model_data_url=model_data, environment=env or {}
        ),
        session=session.boto_session,
        region=session.boto_region_name,
    )


def deploy(
    session,
    config: Config,
    model_name: str,
    endpoint_name: str,
    instance_count: int = 1,
    serverless: tuple[int, int] | None = None,
    wait: bool = True,
    async_config=None,
):
    """-> the v3 Endpoint. `serverless` is (memory MB, max concurrency); `async_config`
    sagemaker.core's AsyncInferenceConfig (launch/async_inference.py)."""
    from sagemaker.core.resources import Endpoint, EndpointConfig
    from sagemaker.core.shapes import ProductionVariant

    where = dict(session=session.boto_session, region=session.boto_region_name)
    if serverless:
        # sagemaker-core 2.27 serializes ProductionVariantServerlessConfig.memory_size_in_mb as
        # "MemorySizeInMb", which the API refuses (botocore's model wants MemorySizeInMB): the plain
        # client takes this one request
        session.sagemaker_client.create_endpoint_config(
            EndpointConfigName=endpoint_name,
            Tags=[PROJECT_TAG],
            ProductionVariants=[
                {
                    "VariantName": "AllTraffic",
                    "ModelName": model_name,
                    "ServerlessConfig": {"MemorySizeInMB": serverless[0], "MaxConcurrency": serverless[1]},
                }
            ],
        )
    else:
        EndpointConfig.create(
            endpoint_config_name=endpoint_name,
            tags=_tags(),
            **where,
            **({"async_inference_config": async_config} if async_config is not None else {}),
            production_variants=[
                ProductionVariant(
                    variant_name="AllTraffic",
                    model_name=model_name,
                    instance_type=config.instance("serve"),
                    initial_instance_count=instance_count,
                    container_startup_health_check_timeout_in_seconds=STARTUP_TIMEOUT_S,
                    model_data_download_timeout_in_seconds=STARTUP_TIMEOUT_S,
                )
            ],
        )
    endpoint = Endpoint.create(endpoint_name=endpoint_name, endpoint_config_name=endpoint_name, tags=_tags(), **where)
    if wait:
        endpoint.wait_for_status("InService")
    return endpoint


def invoke_with_endpoint(session, endpoint_name: str, path: Path, top_k: int) -> dict:
    """v3's way: the Endpoint resource's invoke (no describe call needed to hold one)."""
    from sagemaker.core.resources import Endpoint

    answer = Endpoint(endpoint_name=endpoint_name).invoke(
        body=path.read_bytes(),
        content_type=content_type(path),
        accept="application/json",
        custom_attributes=f"top_k={top_k}",
        session=session.boto_session,
        region=session.boto_region_name,
    )
    body = answer.body
    return json.loads(body.read() if hasattr(body, "read") else body)


def transform(
    session,
    config: Config,
    model_name: str,
    input_uri: str,
    output_uri: str,
    instance_count: int = 1,
    max_payload_mb: int = 20,
    wait: bool = True,
    job_name: str | None = None,
):
    """Batch transform as in v2 (transformer_arguments). The job is named `job_name` (default: the model's
    name): without one, v3 asks the SageMaker API (Model.get) for the model's image to name it after, a call to
    AWS even in local mode."""
    from sagemaker.core.transformer import Transformer

    arguments = transformer_arguments(config, output_uri, instance_count, max_payload_mb)
    transformer = Transformer(model_name=model_name, sagemaker_session=session, **arguments)
    transformer.transform(input_uri, wait=wait, job_name=job_name or model_name, **TRANSFORM_REQUEST)
    return transformer
