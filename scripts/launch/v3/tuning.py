"""Tuning jobs on SDK v3: sagemaker.train.tuner.HyperparameterTuner(model_trainer=...), from the same
search space (contract/spec/search_space.py) and metric definitions as the v2 tuner (launch/tuning.py).
v3's tuner has no local mode: `sm.py tune --local` runs the Optuna study (launch/local_tuning.py)."""

from __future__ import annotations

from contract.spec.search_space import SearchSpace, sdk_ranges
from launch.tuning import STRATEGIES, best_hyperparameters, leaderboard, tuner_arguments  # noqa: F401 (one definition, both SDKs)


def ranges(space: SearchSpace) -> dict:
    from sagemaker.core.parameter import (
        CategoricalParameter,
        ContinuousParameter,
        IntegerParameter,
    )

    return sdk_ranges(space, ContinuousParameter, IntegerParameter, CategoricalParameter)


def tuner(model_trainer, space: SearchSpace, strategy: str = "Bayesian", **options):
    """The tuner (launch/tuning.tuner_arguments, as in v2); the trainer should already carry the fixed
    hyperparameters."""
    from sagemaker.core.shapes import (
        HyperbandStrategyConfig,
        HyperParameterTuningJobStrategyConfig,
        HyperParameterTuningJobWarmStartConfig,
        ParentHyperParameterTuningJob,
    )
    from sagemaker.train.tuner import HyperparameterTuner, WarmStartTypes

    def hyperband(max_resource):
        config = HyperbandStrategyConfig(min_resource=1, max_resource=max_resource)
        return HyperParameterTuningJobStrategyConfig(hyperband_strategy_config=config)

    def warm_start(parents):
        return HyperParameterTuningJobWarmStartConfig(
            warm_start_type=WarmStartTypes.IDENTICAL_DATA_AND_ALGORITHM.value,
            parent_hyper_parameter_tuning_jobs=[
                ParentHyperParameterTuningJob(hyper_parameter_tuning_job_name=p) for p in parents
            ],
        )

    kwargs = tuner_arguments(space, strategy, ranges(space), hyperband, warm_start, **options)
    model_trainer.checkpoint_config = None  # trials start fresh, as in v2
    return HyperparameterTuner(model_trainer, **kwargs)
