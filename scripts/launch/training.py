"""Training jobs: a generic Estimator(image_uri=...) around the training image."""

from __future__ import annotations

from pathlib import Path

from contract.spec.hyperparameters import to_sagemaker
from contract.spec.metrics import METRIC_DEFINITIONS
from launch.config import Config

CHANNELS = ("training", "validation", "test", "pretrained")
PROJECT_TAG = {"Key": "project", "Value": "byoc-image-classifier"}


def output_location(config: Config, what: str, workdir: Path | None = None) -> str:
    if config.is_local:
        folder = (workdir or Path("build/sagemaker-local")).resolve() / what
        folder.mkdir(parents=True, exist_ok=True)
        return f"file://{folder}"
    return f"{config.s3_prefix.rstrip('/')}/{what}"


def channel_uri(session, config: Config, name: str, source: str) -> str:
    """An S3 URI as given; a local folder or archive: file:// in local mode, uploaded to S3 otherwise."""
    if source.startswith(("s3://", "file://")):
        return source
    path = Path(source).resolve()
    if not path.exists():
        raise SystemExit(f"channel {name}: {source} does not exist")
    if config.is_local:
        return f"file://{path}"
    return session.upload_data(
        str(path),
        bucket=config.s3_prefix.split("/")[2],
        key_prefix="/".join(config.s3_prefix.split("/")[3:] + ["data", name]),
    )


def job_name(base: str = "byoc-train") -> str:
    from sagemaker.utils import name_from_base

    return name_from_base(base)


def estimator(
    session,
    config: Config,
    hyperparameters: dict,
    name: str,
    debugger: dict | None = None,
    tags: list[dict] | None = None,
    workdir: Path | None = None,
    environment: dict | None = None,
):
    """The Estimator for training job `name` (pass the same name to fit()).

    `debugger` holds Estimator keyword arguments (debugger_hook_config, rules,
    profiler_config). Checkpoints go to a prefix of this job's own: a managed
    spot restart of the job finds them, and no other job does."""
    from sagemaker.estimator import Estimator

    kwargs = dict(
        image_uri=config.train_image,
        role=config.role,
        instance_count=config.train_instance_count,
        instance_type=config.instance("train"),
        hyperparameters=to_sagemaker(hyperparameters),
        metric_definitions=METRIC_DEFINITIONS,
        output_path=output_location(config, "output", workdir),
        base_job_name="byoc-train",
        max_run=config.max_run_s,
        tags=[PROJECT_TAG, *(tags or [])],
        environment=dict(environment or {}),
        sagemaker_session=session,
    )
    if config.is_local:
        # local mode has no debugger rules, profiler or checkpoint sync
        kwargs.update(disable_profiler=True, debugger_hook_config=False)
    else:
        kwargs.update(
            checkpoint_s3_uri=f"{config.s3_prefix.rstrip('/')}/checkpoints/{name}",
            use_spot_instances=config.spot,
            max_wait=config.max_wait_s if config.spot else None,
            **(debugger or {}),
        )
    return Estimator(**kwargs)


def inputs(session, config: Config, sources: dict[str, str]) -> dict:
    from sagemaker.inputs import TrainingInput

    if "training" not in sources:
        raise SystemExit("the training channel is required (--data)")
    return {
        name: TrainingInput(channel_uri(session, config, name, source)) for name, source in sources.items() if source
    }
