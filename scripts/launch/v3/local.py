"""Local endpoints and batch transform through v3's LocalSession (sagemaker.core.local), on our serving
image, with no AWS account: the session's sagemaker client (create_model / create_endpoint_config /
create_endpoint, then invoke_endpoint) drives docker-compose as SageMaker drives hosts.

Why not ModelBuilder(mode=LOCAL_CONTAINER).deploy(): its local mode starts only the model servers it
knows (TorchServe, DJL, TGI, ...), not an image that is its own server, and it calls STS and IAM on
the way. The LocalSession layer below it starts any image that answers /ping and /invocations.
"""

from __future__ import annotations

import json
from pathlib import Path

from launch.config import Config
from launch.hosting import content_type


def create_model(session, config: Config, model_data: str, name: str, env: dict | None = None) -> str:
    """A local model; model_data a file:// URI (v3 training leaves compressed_artifacts/model.tar.gz)."""
    session.sagemaker_client.create_model(
        ModelName=name,
        PrimaryContainer={"Image": config.serve_image, "ModelDataUrl": model_data, "Environment": env or {}},
    )
    return name


class LocalEndpoint:
    """One endpoint on this machine (port 8080), for as long as the `with` block runs."""

    def __init__(self, session, config: Config, model_name: str, name: str, instance_count: int = 1):
        self.session, self.name = session, name
        client = session.sagemaker_client
        client.create_endpoint_config(
            EndpointConfigName=name,
            ProductionVariants=[
                {
                    "VariantName": "AllTraffic",
                    "ModelName": model_name,
                    "InitialInstanceCount": instance_count,
                    "InstanceType": config.instance("serve"),
                }
            ],
        )
        client.create_endpoint(EndpointName=name, EndpointConfigName=name)  # returns once /ping passes

    def invoke(self, path: Path, top_k: int) -> dict:
        response = self.session.sagemaker_runtime_client.invoke_endpoint(
            EndpointName=self.name,
            Body=path.read_bytes(),
            ContentType=content_type(path),
            Accept="application/json",
            CustomAttributes=f"top_k={top_k}",
        )
        return json.loads(response["Body"].read())

    def stop(self) -> None:
        client = self.session.sagemaker_client
        client.delete_endpoint(EndpointName=self.name)
        client.delete_endpoint_config(EndpointConfigName=self.name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
