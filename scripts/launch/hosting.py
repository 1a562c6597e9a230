"""Endpoints and batch transform: a generic Model(image_uri=...) around the serving image."""

from __future__ import annotations

import json
from pathlib import Path

from contract.spec.media import IMAGE_TYPES
from launch.config import Config
from launch.training import PROJECT_TAG

# SageMaker waits this long for the model to download and for /ping to pass
STARTUP_TIMEOUT_S = 600


def endpoint_model_name(endpoint_name: str) -> str:
    """The model deploy-component (either SDK) and SDK v3's deploy create for an endpoint; sm.py cleanup
    removes it by this name too (cli.cleanup_endpoint), for a deploy that failed before anything named it."""
    return f"{endpoint_name}-model"


def content_type(path: Path) -> str:
    try:
        return IMAGE_TYPES[path.suffix.lower()]
    except KeyError:
        raise SystemExit(f"{path}: not an image file this endpoint takes ({', '.join(IMAGE_TYPES)})") from None


def image_predictor_class():
    from sagemaker.deserializers import JSONDeserializer
    from sagemaker.predictor import Predictor
    from sagemaker.serializers import DataSerializer

    class ImagePredictor(Predictor):
        """Raw image bytes in, top-k JSON out (set ContentType per call for PNG and others)."""

        def __init__(self, endpoint_name, sagemaker_session=None, **kwargs):
            super().__init__(
                endpoint_name,
                sagemaker_session=sagemaker_session,
                serializer=DataSerializer(content_type="image/jpeg"),
                deserializer=JSONDeserializer(),
                **kwargs,
            )

    return ImagePredictor


def model(session, config: Config, model_data: str, name: str | None = None, env: dict | None = None):
    from sagemaker.model import Model

    return Model(
        image_uri=config.serve_image,
        model_data=model_data,
        role=config.role,
        name=name,
        env=env or {},
        predictor_cls=image_predictor_class(),
        sagemaker_session=session,
    )


def deploy(
    served_model,
    config: Config,
    endpoint_name: str,
    instance_count: int = 1,
    serverless: tuple[int, int] | None = None,
    wait: bool = True,
    async_config=None,
):
    """-> a predictor for the new endpoint. `serverless` is (memory MB, max concurrency);
    `async_config` v2's AsyncInferenceConfig (launch/async_inference.py)."""
    kwargs = dict(endpoint_name=endpoint_name, wait=wait, tags=[PROJECT_TAG])
    if async_config is not None:
        kwargs["async_inference_config"] = async_config
    if serverless:
        from sagemaker.serverless import ServerlessInferenceConfig

        kwargs["serverless_inference_config"] = ServerlessInferenceConfig(*serverless)
    else:
        kwargs.update(initial_instance_count=instance_count, instance_type=config.instance("serve"))
        if not config.is_local:
            kwargs.update(
                container_startup_health_check_timeout=STARTUP_TIMEOUT_S, model_data_download_timeout=STARTUP_TIMEOUT_S
            )
    return served_model.deploy(**kwargs)


def autoscale(
    session,
    endpoint_name: str,
    min_instances: int,
    max_instances: int,
    invocations_per_instance: float,
    variant: str = "AllTraffic",
) -> None:
    """Target tracking on SageMakerVariantInvocationsPerInstance (Application Auto Scaling)."""
    client = session.boto_session.client("application-autoscaling")
    resource = f"endpoint/{endpoint_name}/variant/{variant}"
    dimension = "sagemaker:variant:DesiredInstanceCount"
    client.register_scalable_target(
        ServiceNamespace="sagemaker",
        ResourceId=resource,
        ScalableDimension=dimension,
        MinCapacity=min_instances,
        MaxCapacity=max_instances,
    )
    client.put_scaling_policy(
        PolicyName=f"{endpoint_name}-invocations",
        ServiceNamespace="sagemaker",
        ResourceId=resource,
        ScalableDimension=dimension,
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": float(invocations_per_instance),
            "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
            "ScaleInCooldown": 300,
            "ScaleOutCooldown": 60,
        },
    )


def invoke_with_predictor(predictor, path: Path, top_k: int) -> dict:
    return predictor.predict(
        path.read_bytes(),
        initial_args={
            "ContentType": content_type(path),
            "Accept": "application/json",
            "CustomAttributes": f"top_k={top_k}",
        },
    )


def invoke_with_boto3(runtime_client, endpoint_name: str, path: Path, top_k: int) -> dict:
    """The way the second seed called its endpoint: boto3's sagemaker-runtime client."""
    response = runtime_client.invoke_endpoint(
        EndpointName=endpoint_name,
        ContentType=content_type(path),
        Accept="application/json",
        CustomAttributes=f"top_k={top_k}",
        Body=path.read_bytes(),
    )
    return json.loads(response["Body"].read())


def transformer_arguments(config: Config, output_uri: str, instance_count: int, max_payload_mb: int) -> dict:
    """A batch transform on either SDK: one image per request (SingleRecord, no splitting), JSON out per file."""
    return dict(
        instance_count=instance_count,
        instance_type=config.instance("serve"),
        output_path=output_uri,
        strategy="SingleRecord",
        max_payload=max_payload_mb,
        accept="application/json",
        env={"SAGEMAKER_MAX_PAYLOAD_IN_MB": str(max_payload_mb)},
        tags=[PROJECT_TAG],
    )


# Transformer.transform's arguments on either SDK; logs=False: following logs needs CloudWatch, which local
# mode does not have
TRANSFORM_REQUEST = {"content_type": "application/x-image", "split_type": None, "logs": False}


def transform(
    served_model, config: Config, input_uri: str, output_uri: str, instance_count: int = 1, max_payload_mb: int = 20
):
    """Batch transform (transformer_arguments) of every image under input_uri."""
    transformer = served_model.transformer(**transformer_arguments(config, output_uri, instance_count, max_payload_mb))
    transformer.transform(input_uri, wait=True, **TRANSFORM_REQUEST)
    return transformer


def cleanup(session, endpoint_name: str) -> list[str]:
    """Delete the endpoint, its configuration and its models; -> what was deleted."""
    client = session.sagemaker_client
    deleted = []
    config_name = client.describe_endpoint(EndpointName=endpoint_name)["EndpointConfigName"]
    variants = client.describe_endpoint_config(EndpointConfigName=config_name)["ProductionVariants"]
    client.delete_endpoint(EndpointName=endpoint_name)
    deleted.append(f"endpoint {endpoint_name}")
    client.delete_endpoint_config(EndpointConfigName=config_name)
    deleted.append(f"endpoint config {config_name}")
    for variant in variants:
        if "ModelName" in variant:  # an inference component endpoint's variant names none
            client.delete_model(ModelName=variant["ModelName"])
            deleted.append(f"model {variant['ModelName']}")
    return deleted
