"""Tuning jobs on SDK v3: sagemaker.train.tuner.HyperparameterTuner(model_trainer=...), from the same
search space (contract/spec/search_space.py) and metric definitions as the v2 tuner (launch/tuning.py).
v3's tuner has no local mode: `sm.py tune --local` runs the Optuna study (launch/local_tuning.py)."""

from __future__ import annotations

from contract.spec.search_space import SearchSpace, SearchSpaceError, sdk_ranges
from launch.tuning import STRATEGIES, best_hyperparameters, leaderboard, tuner_arguments  # noqa: F401 (one definition, both SDKs)


def ranges(space: SearchSpace) -> dict:
    from sagemaker.core.parameter import (
        CategoricalParameter,
        ContinuousParameter,
        IntegerParameter,
    )

    return sdk_ranges(space, ContinuousParameter, IntegerParameter, CategoricalParameter)


def tuner(
    model_trainer,
    space: SearchSpace,
    strategy: str = "Bayesian",
    max_jobs: int = 20,
    max_parallel_jobs: int = 2,
    warm_start_parents: list[str] | None = None,
    epochs: int | None = None,
):
    """The tuner; the trainer should already carry the fixed hyperparameters. Early stopping as in v2:
    Auto, except Hyperband (stops trials itself); Grid takes categorical parameters only."""
    from sagemaker.core.shapes import (
        HyperbandStrategyConfig,
        HyperParameterTuningJobStrategyConfig,
        HyperParameterTuningJobWarmStartConfig,
        ParentHyperParameterTuningJob,
    )
    from sagemaker.train.tuner import HyperparameterTuner, WarmStartTypes

    if strategy not in STRATEGIES:
        raise SearchSpaceError(f"strategy must be one of {', '.join(STRATEGIES)}")
    model_trainer.checkpoint_config = None  # trials start fresh, as in v2
    kwargs = tuner_arguments(space, strategy, max_jobs, max_parallel_jobs, ranges(space))
    if strategy == "Hyperband":
        kwargs["strategy_config"] = HyperParameterTuningJobStrategyConfig(
            hyperband_strategy_config=HyperbandStrategyConfig(min_resource=1, max_resource=epochs or 5)
        )
    if warm_start_parents:
        kwargs["warm_start_config"] = HyperParameterTuningJobWarmStartConfig(
            warm_start_type=WarmStartTypes.IDENTICAL_DATA_AND_ALGORITHM.value,
            parent_hyper_parameter_tuning_jobs=[
                ParentHyperParameterTuningJob(hyper_parameter_tuning_job_name=p) for p in warm_start_parents
            ],
        )
    return HyperparameterTuner(model_trainer, **kwargs)
