"""The environment variables that turn on experiment tracking in the training image.

MLflow's own (its client reads them):
    MLFLOW_TRACKING_URI       an http(s) server, a SageMaker managed tracking server's ARN
                              (the sagemaker-mlflow plugin), or a file store
    MLFLOW_EXPERIMENT_NAME    the experiment (default: DEFAULT_EXPERIMENT)
Ours (container/trainer/tracking.py reads them):
    TRAINER_MLFLOW_PARENT_RUN_ID   make the job's run a child of that run (a tuning study's)
    TRAINER_MLFLOW_RUN_NAME        the run's name (default: SageMaker's TRAINING_JOB_NAME)
    TRAINER_MLFLOW_REGISTER_MODEL  register the job's model under this name

A SageMaker job gets them through its `environment`; sm.py's --mlflow, --mlflow-experiment and
--register-model set them, run_local.py --mlflow and the local tuner set them for their containers.
"""

from __future__ import annotations

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_NAME"
PARENT_RUN_ENV = "TRAINER_MLFLOW_PARENT_RUN_ID"
RUN_NAME_ENV = "TRAINER_MLFLOW_RUN_NAME"
REGISTER_ENV = "TRAINER_MLFLOW_REGISTER_MODEL"
DEFAULT_EXPERIMENT = "byoc-image-classifier"


def job_environment(uri: str | None = None, experiment: str | None = None, register_as: str | None = None) -> dict:
    """The variables a training job needs to log to MLflow (empty without a tracking URI)."""
    if not uri:
        return {}
    env = {TRACKING_URI_ENV: uri}
    if experiment:
        env[EXPERIMENT_ENV] = experiment
    if register_as:
        env[REGISTER_ENV] = register_as
    return env
