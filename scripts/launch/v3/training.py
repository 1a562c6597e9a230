"""Training jobs on SDK v3: sagemaker.train.ModelTrainer(training_image=...) around the training image.

The same facts as the v2 Estimator (launch/training.py): image, channels, hyperparameters, metric
definitions, checkpoint and output paths. Differences v3 imposes: ModelTrainer names the job itself
(`<base>-<timestamp>`), so the checkpoint prefix is the base name's (unique per launch); in local
mode it ignores checkpoints and writes <local_container_root>/compressed_artifacts/model.tar.gz.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from contract.spec.hyperparameters import parse_value, to_sagemaker
from contract.spec.metrics import METRIC_DEFINITIONS
from launch.config import Config
from launch.training import PROJECT_TAG, channel_uri, output_location

LOCAL_INSTANCE = {"local": "local_cpu", "local_gpu": "local_gpu"}  # v3's names for local mode
TENSORBOARD_LOCAL_PATH = "/opt/ml/output/tensorboard"


def typed_hyperparameters(values: dict) -> dict:
    """Our hyperparameters as typed values (v3 sends json.dumps of each: 3, 0.01, [256, 128], true),
    checked against the trainer's spec first; 'auto' and other words stay strings."""
    typed = {}
    for name, text in to_sagemaker(values).items():  # unknown names are refused here
        value = parse_value(name, text)
        typed[name] = value if isinstance(value, (bool, int, float, list, str)) else text
    return typed


def local_artifacts(container_root: Path) -> Path:
    """Where v3's local mode leaves the model (train() returns nothing)."""
    return container_root / "compressed_artifacts" / "model.tar.gz"


def model_trainer(
    session,
    config: Config,
    hyperparameters: dict,
    name: str,
    tags: list[dict] | None = None,
    environment: dict | None = None,
    container_root: Path | None = None,
    subnets: list[str] | None = None,
    security_group_ids: list[str] | None = None,
    network_isolation: bool = False,
    tensorboard: bool = True,
):
    """The ModelTrainer for one launch; its jobs are named `<name>-<timestamp>`."""
    from sagemaker.core.shapes import MetricDefinition, Tag
    from sagemaker.core.training.configs import (
        CheckpointConfig,
        Compute,
        Networking,
        OutputDataConfig,
        StoppingCondition,
        TensorBoardOutputConfig,
    )
    from sagemaker.train.model_trainer import Mode, ModelTrainer

    prefix = config.s3_prefix.rstrip("/")
    kwargs: dict[str, Any] = dict(
        training_image=config.train_image,
        base_job_name=name,
        hyperparameters=typed_hyperparameters(hyperparameters),
        environment=dict(environment or {}),
        tags=[Tag(key=t["Key"], value=t["Value"]) for t in (PROJECT_TAG, *(tags or []))],
    )
    if config.is_local:
        root = (container_root or Path("build/sagemaker-local") / "jobs" / name).resolve()
        root.mkdir(parents=True, exist_ok=True)
        kwargs.update(
            training_mode=Mode.LOCAL_CONTAINER,
            local_container_root=str(root),
            compute=Compute(instance_type=LOCAL_INSTANCE[config.local], instance_count=config.train_instance_count),
        )
        trainer = ModelTrainer(**kwargs)
    else:
        networking = None
        if subnets or security_group_ids or network_isolation:
            networking = Networking(
                subnets=subnets,
                security_group_ids=security_group_ids,
                enable_network_isolation=network_isolation or None,
            )
        kwargs.update(
            sagemaker_session=session,
            role=config.role,
            networking=networking,
            compute=Compute(
                instance_type=config.instance("train"),
                instance_count=config.train_instance_count,
                enable_managed_spot_training=config.spot,
            ),
            stopping_condition=StoppingCondition(
                max_runtime_in_seconds=config.max_run_s,
                max_wait_time_in_seconds=config.max_wait_s if config.spot else None,
            ),
            output_data_config=OutputDataConfig(s3_output_path=output_location(config, "output")),
            checkpoint_config=CheckpointConfig(s3_uri=f"{prefix}/checkpoints/{name}"),
        )
        trainer = ModelTrainer(**kwargs)
        if tensorboard:
            trainer.with_tensorboard_output_config(
                TensorBoardOutputConfig(
                    s3_output_path=f"{prefix}/tensorboard/{name}", local_path=TENSORBOARD_LOCAL_PATH
                )
            )
    return trainer.with_metric_definitions(
        [MetricDefinition(name=m["Name"], regex=m["Regex"]) for m in METRIC_DEFINITIONS]
    )


def input_data(session, config: Config, sources: dict[str, str]) -> list:
    """One InputData per channel: S3 URIs as given; local folders uploaded (AWS) or mounted (local mode)."""
    from sagemaker.core.training.configs import InputData

    if not sources.get("training"):
        raise SystemExit("the training channel is required (--data)")
    channels = []
    for name, source in sources.items():
        if not source:
            continue
        uri = channel_uri(session, config, name, source)
        channels.append(InputData(channel_name=name, data_source=uri.removeprefix("file://")))
    return channels
