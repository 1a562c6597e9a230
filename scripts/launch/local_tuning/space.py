"""A search space (contract/spec/search_space.py) as Optuna's sampler and pruner, and the caller's overrides."""

from __future__ import annotations

import math
import warnings
from dataclasses import replace

import optuna
from optuna.trial import Trial

from contract.spec import hyperparameters
from contract.spec import search_space as spaces

from .errors import TuningError

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "none")
GRID_POINTS = 3


def grid_values(param: spaces.Parameter, points: int = GRID_POINTS) -> list:
    """The grid of one parameter: categorical values, or `points` points over [low, high]."""
    if param.type == "categorical":
        return list(param.values)
    if points < 2:
        raise TuningError("grid_points must be at least 2")
    low, high = map(float, param.bounds)
    if param.scaling == "log":
        values = [low * (high / low) ** (i / (points - 1)) for i in range(points)]
    else:
        values = [low + (high - low) * i / (points - 1) for i in range(points)]
    if param.type == "integer":
        return sorted({min(max(int(round(v)), math.ceil(low)), math.floor(high)) for v in values})
    return [min(max(float(f"{v:.6g}"), low), high) for v in values]  # readable, inside the range


def suggest(trial: Trial, param: spaces.Parameter):
    log = param.scaling == "log"
    if param.type == "categorical":
        return trial.suggest_categorical(param.name, list(param.values))
    if param.type == "integer":
        low, high = param.bounds
        return trial.suggest_int(param.name, int(low), int(high), log=log)
    low, high = param.bounds
    return trial.suggest_float(param.name, float(low), float(high), log=log)


class _GridSampler(optuna.samplers.GridSampler):
    # GridSampler stops optimize() when the grid is exhausted; with ask/tell that
    # raises instead. The study is limited to the grid's size here anyway.
    def after_trial(self, study, trial, state, values) -> None:
        pass


def make_sampler(
    name: str, space: spaces.SearchSpace, seed: int, n_trials: int, grid_points: int = GRID_POINTS
) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        # a few random trials first (SageMaker's Bayesian strategy starts randomly too), then TPE
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                seed=seed, n_startup_trials=max(2, min(10, n_trials // 3)), multivariate=True, constant_liar=True
            )
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return _GridSampler({p.name: grid_values(p, grid_points) for p in space.parameters}, seed=seed)
    raise TuningError(f"sampler must be one of {', '.join(SAMPLERS)}; got {name!r}")


def grid_size(space: spaces.SearchSpace, grid_points: int = GRID_POINTS) -> int:
    return math.prod(len(grid_values(p, grid_points)) for p in space.parameters)


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise TuningError(f"pruner must be one of {', '.join(PRUNERS)}; got {name!r}")


def space_with_overrides(space: spaces.SearchSpace, overrides: dict, log) -> tuple[spaces.SearchSpace, dict]:
    """Overrides of searched names hold them fixed; returns (space, all fixed hyperparameters)."""
    for name in overrides:
        if name not in hyperparameters.BY_NAME:
            raise TuningError(f"unknown hyperparameter {name!r}; known: {', '.join(hyperparameters.BY_NAME)}")
    pinned = [p.name for p in space.parameters if p.name in overrides]
    if pinned:
        log(f"held fixed by the overrides, not searched: {', '.join(pinned)}")
    params = tuple(p for p in space.parameters if p.name not in overrides)
    if not params:
        raise TuningError("the overrides leave nothing to search")
    fixed = {**space.fixed, **overrides}
    try:  # fail now, not in every trial
        hyperparameters.parse(hyperparameters.to_argv(hyperparameters.to_sagemaker(fixed)))
    except hyperparameters.HyperparameterError as exc:
        raise TuningError(str(exc)) from None
    return replace(space, parameters=params, fixed={k: v for k, v in fixed.items() if k not in overrides}), fixed
