"""deploy-mme on SDK v3, which has no MultiDataModel: sagemaker.core's resources create what v2's
MultiDataModel.deploy creates (launch/multi_model.py: the same environment, prefix and target names),
S3 copies add models under the prefix, and Endpoint.invoke names the TargetModel."""

from __future__ import annotations

import json
from pathlib import Path

from launch.config import Config
from launch.hosting import content_type
from launch.multi_model import environment, prefix_uri, target_name
from launch.v3.hosting import _tags


def deploy(
    session,
    config: Config,
    name: str,
    model_prefix: str,
    instance_count: int = 1,
    memory_budget_mb: int | None = None,
    wait: bool = True,
):
    """The model (Mode MultiModel, ModelDataUrl the prefix), the endpoint configuration and the endpoint,
    all named `name`; -> the v3 Endpoint. No startup timeouts, as on v2: a multi-model container loads
    no model at start (/ping is 200 at once)."""
    from sagemaker.core.resources import Endpoint, EndpointConfig, Model
    from sagemaker.core.shapes import ContainerDefinition, ProductionVariant

    where = dict(session=session.boto_session, region=session.boto_region_name)
    Model.create(
        model_name=name,
        execution_role_arn=config.role,
        tags=_tags(),
        primary_container=ContainerDefinition(
            image=config.serve_image,
            mode="MultiModel",
            model_data_url=prefix_uri(model_prefix),
            environment=environment(memory_budget_mb),
        ),
        **where,
    )
    EndpointConfig.create(
        endpoint_config_name=name,
        tags=_tags(),
        production_variants=[
            ProductionVariant(
                variant_name="AllTraffic",
                model_name=name,
                instance_type=config.instance("serve"),
                initial_instance_count=instance_count,
            )
        ],
        **where,
    )
    endpoint = Endpoint.create(endpoint_name=name, endpoint_config_name=name, tags=_tags(), **where)
    if wait:
        endpoint.wait_for_status("InService")
    return endpoint


def add_models(session, model_prefix: str, sources: list[str]) -> list[str]:
    """Copy each model.tar.gz (S3) under the prefix as JOB.tar.gz -> the TargetModel names (v2's add_model)."""
    s3 = session.boto_session.client("s3")
    bucket, _, key_prefix = prefix_uri(model_prefix).removeprefix("s3://").partition("/")
    targets = []
    for source in sources:
        source_bucket, _, source_key = source.removeprefix("s3://").partition("/")
        target = target_name(source)
        s3.copy_object(Bucket=bucket, Key=key_prefix + target, CopySource={"Bucket": source_bucket, "Key": source_key})
        targets.append(target)
    return targets


def invoke(session, endpoint_name: str, target_model: str, path: Path, top_k: int) -> dict:
    from sagemaker.core.resources import Endpoint

    answer = Endpoint(endpoint_name=endpoint_name).invoke(
        body=path.read_bytes(),
        content_type=content_type(path),
        custom_attributes=f"top_k={top_k}",
        target_model=target_model,
        session=session.boto_session,
        region=session.boto_region_name,
    )
    body = answer.body
    return json.loads(body.read() if hasattr(body, "read") else body)
