"""A multi-model endpoint of the serving image with SDK v2's MultiDataModel:
every model.tar.gz under one S3 prefix can be invoked by its path there
(TargetModel), loaded on first use and unloaded when memory runs short.

The image answers SageMaker's multi-model API when SAGEMAKER_MULTI_MODEL=true
(container/server/multi_model_routes.py). SDK v3 has no MultiDataModel: its
path (launch/v3/multi_model.py) sends the same requests with sagemaker.core's
resources and shares the environment and target names defined here.
"""

from __future__ import annotations

from pathlib import Path

from launch.config import Config
from launch.hosting import content_type, image_predictor_class
from launch.training import PROJECT_TAG

MULTI_MODEL_ENV = {"SAGEMAKER_MULTI_MODEL": "true"}


def environment(memory_budget_mb: int | None = None) -> dict[str, str]:
    """The container's environment on either SDK."""
    env = dict(MULTI_MODEL_ENV)
    if memory_budget_mb:
        env["SAGEMAKER_MODEL_MEMORY_BUDGET_MB"] = str(memory_budget_mb)
    return env


def prefix_uri(model_prefix: str) -> str:
    """The ModelDataUrl of a multi-model container: the prefix, ending in '/'."""
    return model_prefix.rstrip("/") + "/"


def target_name(source: str) -> str:
    """A training job's s3://.../JOB/output/model.tar.gz -> its TargetModel name under the prefix, JOB.tar.gz."""
    return f"{Path(source.rstrip('/')).parent.parent.name or Path(source).stem}.tar.gz"


def multi_data_model(session, config: Config, name: str, model_prefix: str, memory_budget_mb: int | None = None):
    """`model_prefix`: the S3 prefix (s3://bucket/models/) holding the models' tar.gz files."""
    from sagemaker.multidatamodel import MultiDataModel

    return MultiDataModel(
        name=name,
        model_data_prefix=prefix_uri(model_prefix),
        image_uri=config.serve_image,
        role=config.role,
        env=environment(memory_budget_mb),
        predictor_cls=image_predictor_class(),
        sagemaker_session=session,
    )


def deploy(mme, config: Config, endpoint_name: str, instance_count: int = 1, wait: bool = True):
    # No startup health-check timeout: a multi-model container loads no model
    # at start (/ping is 200 at once), and MultiDataModel.deploy drops that
    # argument anyway (a test caught it being passed and lost).
    return mme.deploy(
        initial_instance_count=instance_count,
        instance_type=config.instance("serve"),
        endpoint_name=endpoint_name,
        wait=wait,
        tags=[PROJECT_TAG],
    )


def add_models(mme, model_data: list[str]) -> list[str]:
    """Copy each model.tar.gz under the endpoint's prefix as <name>.tar.gz -> the TargetModel names."""
    targets = []
    for source in model_data:
        target = target_name(source)
        mme.add_model(model_data_source=source, model_data_path=target)
        targets.append(target)
    return targets


def invoke(predictor, target_model: str, path: Path, top_k: int) -> dict:
    return predictor.predict(
        path.read_bytes(),
        target_model=target_model,
        initial_args={"ContentType": content_type(path), "CustomAttributes": f"top_k={top_k}"},
    )
