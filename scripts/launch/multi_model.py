"""A multi-model endpoint of the serving image with SDK v2's MultiDataModel:
every model.tar.gz under one S3 prefix can be invoked by its path there
(TargetModel), loaded on first use and unloaded when memory runs short.

The image answers SageMaker's multi-model API when SAGEMAKER_MULTI_MODEL=true
(container/server/multi_model_routes.py). SDK v3 has no MultiDataModel; with
`sm.py --sdk v3` this command is refused with that reason.
"""

from __future__ import annotations

from pathlib import Path

from launch.config import Config
from launch.hosting import content_type, image_predictor_class
from launch.training import PROJECT_TAG

MULTI_MODEL_ENV = {"SAGEMAKER_MULTI_MODEL": "true"}


def multi_data_model(session, config: Config, name: str, model_prefix: str, memory_budget_mb: int | None = None):
    """`model_prefix`: the S3 prefix (s3://bucket/models/) holding the models' tar.gz files."""
    from sagemaker.multidatamodel import MultiDataModel

    env = dict(MULTI_MODEL_ENV)
    if memory_budget_mb:
        env["SAGEMAKER_MODEL_MEMORY_BUDGET_MB"] = str(memory_budget_mb)
    return MultiDataModel(
        name=name,
        model_data_prefix=model_prefix.rstrip("/") + "/",
        image_uri=config.serve_image,
        role=config.role,
        env=env,
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
        target = f"{Path(source.rstrip('/')).parent.parent.name or Path(source).stem}.tar.gz"
        mme.add_model(model_data_source=source, model_data_path=target)
        targets.append(target)
    return targets


def invoke(predictor, target_model: str, path: Path, top_k: int) -> dict:
    return predictor.predict(
        path.read_bytes(),
        target_model=target_model,
        initial_args={"ContentType": content_type(path), "CustomAttributes": f"top_k={top_k}"},
    )
