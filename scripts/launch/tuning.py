"""SageMaker's HyperparameterTuner around our training Estimator, from contract/spec/search_space.py."""

from __future__ import annotations

from contract.spec.metrics import METRIC_DEFINITIONS
from contract.spec.search_space import SearchSpace, SearchSpaceError, sdk_ranges

STRATEGIES = ("Bayesian", "Random", "Hyperband", "Grid")


def ranges(space: SearchSpace) -> dict:
    from sagemaker.tuner import CategoricalParameter, ContinuousParameter, IntegerParameter

    return sdk_ranges(space, ContinuousParameter, IntegerParameter, CategoricalParameter)


def tuner_arguments(
    space: SearchSpace,
    strategy: str,
    hyperparameter_ranges: dict,
    hyperband,
    warm_start,
    max_jobs: int = 20,
    max_parallel_jobs: int = 2,
    warm_start_parents: list[str] | None = None,
    epochs: int | None = None,
) -> dict:
    """The tuner's keyword arguments on either SDK; hyperband(max_resource) and warm_start(parents) build the
    SDK's own objects. Early stopping is Auto (SageMaker stops trials that trail the median), except for
    Hyperband, which stops trials itself (up to `epochs`) and allows no other; Grid takes categorical
    parameters only and runs every combination."""
    if strategy not in STRATEGIES:
        raise SearchSpaceError(f"strategy must be one of {', '.join(STRATEGIES)}")
    kwargs = dict(
        objective_metric_name=space.objective_metric,
        objective_type=space.objective_type,
        hyperparameter_ranges=hyperparameter_ranges,
        metric_definitions=METRIC_DEFINITIONS,
        strategy=strategy,
        max_jobs=max_jobs,
        max_parallel_jobs=max_parallel_jobs,
        early_stopping_type="Auto",
        base_tuning_job_name="byoc-tune",
    )
    if strategy == "Grid":
        if any(p.type != "categorical" for p in space.parameters):
            raise SearchSpaceError("Grid search takes categorical parameters only")
        kwargs["max_jobs"] = None  # SageMaker runs the whole grid
    if strategy == "Hyperband":
        kwargs["early_stopping_type"] = "Off"
        kwargs["strategy_config"] = hyperband(epochs or 5)
    if warm_start_parents:
        kwargs["warm_start_config"] = warm_start(warm_start_parents)
    return kwargs


def tuner(estimator, space: SearchSpace, strategy: str = "Bayesian", **options):
    """The tuner (tuner_arguments: options are its max_jobs .. epochs); the estimator should already carry
    the fixed hyperparameters."""
    from sagemaker.tuner import (
        HyperbandStrategyConfig,
        HyperparameterTuner,
        StrategyConfig,
        WarmStartConfig,
        WarmStartTypes,
    )

    def hyperband(max_resource):
        return StrategyConfig(HyperbandStrategyConfig(min_resource=1, max_resource=max_resource))

    def warm_start(parents):
        return WarmStartConfig(WarmStartTypes.IDENTICAL_DATA_AND_ALGORITHM, parents=set(parents))

    kwargs = tuner_arguments(space, strategy, ranges(space), hyperband, warm_start, **options)
    estimator.checkpoint_s3_uri = None  # trials start fresh; SageMaker names their jobs
    return HyperparameterTuner(estimator, **kwargs)


def attach(session, name: str):
    from sagemaker.tuner import HyperparameterTuner

    return HyperparameterTuner.attach(name, sagemaker_session=session)


def leaderboard(tuner_, top: int = 10) -> list[dict]:
    """Finished training jobs, best objective first."""
    frame = tuner_.analytics().dataframe()
    if frame.empty:
        return []
    frame = frame.dropna(subset=["FinalObjectiveValue"])
    ascending = tuner_.objective_type != "Maximize"
    return frame.sort_values("FinalObjectiveValue", ascending=ascending).head(top).to_dict("records")


def best_hyperparameters(session, tuner_) -> dict:
    """The best job's trainer hyperparameters (SageMaker's own entries removed)."""
    job = session.sagemaker_client.describe_training_job(TrainingJobName=tuner_.best_training_job())
    return {k: v.strip('"') for k, v in job["HyperParameters"].items() if not k.startswith(("_", "sagemaker_"))}
