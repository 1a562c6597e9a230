"""Local hyperparameter tuning with Optuna: SageMaker's tuning job, run on this machine.

    from launch.local_tuning import run_study
    result = run_study("seed1", data, workdir, n_trials=20, sampler="tpe", runner="process",
                       fixed_overrides={"epochs": 3})
    print(result.markdown())

The search space is container/contract/spec/search_space.py's (a preset or a JSON
file); the objective is the trainer's validation loss, read from its log with
the regex SageMaker's tuner uses (contract.spec.metrics), minimised. As
with SageMaker, a trial's objective is the last value it reported.

What maps to what:

    HyperparameterTuner                 here
    strategy Bayesian / Random / Grid   sampler tpe / random / grid
    early_stopping_type "Auto"          pruner "median": each epoch's validation loss against the median
                                        of the finished trials at the same epoch (after 2 trials)
    max_jobs                            n_trials (completed, pruned and failed trials all count)
    max_parallel_jobs                   parallel: at most one trial per GPU, or per 2 cores without GPUs

Grid search needs a finite grid: categorical values are used as they are; an
integer or continuous range becomes `grid_points` points (default 3) from low
to high inclusive, evenly spaced (geometrically for log scaling), integers
rounded and de-duplicated. The study then runs at most the grid's size.
(SageMaker's grid strategy accepts categorical parameters only.)

A trial is the trainer run with the trial's parameters, the space's fixed
hyperparameters and the caller's overrides, on a fresh /opt/ml tree: either as
`python container/toolkit_entry_point.py` would run it, in a process started ahead with its
imports done (runner "process", warm_trial.py), or as `ENGINE run ...
byoc-train:latest train` (runner "container"). A trial whose validation loss becomes NaN/inf, or
that the trainer stops with 'loss became nan/inf', is pruned (diverged); any
other failure fails the trial with the one-line reason from its
/opt/ml/output/failure, and the study goes on.

The work directory holds everything, and a rerun with the same arguments resumes:

    study.db                Optuna storage (SQLite): trials, parameters, intermediate values
    trials/NNNN/log.txt     each trial's full log; trials/NNNN/opt_ml/ its /opt/ml tree
    leaderboard.csv         every trial, best first
    best_params.json        the hyperparameters to train the final model with (best trial + fixed)
    optimization_history.png, param_importances.png, intermediate_values.png

Resuming: one tuner at a time per work directory (a lock file). Trials that a
killed or interrupted run left RUNNING are marked failed and their parameters
re-queued, and the study runs only the trials still missing to reach
n_trials; a larger n_trials extends a finished study.

Sharing: with storage="postgresql+psycopg://user@host/db" several tuners (each with its own work
directory, on one machine or many) work on one study: each claims trials while the study needs
more, the median pruner reads every tuner's reports, and a trial whose tuner died (no heartbeat for
the grace period) is failed and re-queued by another (claims.py, storage.py).

The package, one job a module: errors, space (search space -> Optuna sampler and pruner), slots (the
machine's share per trial), runners (process and container), trials (one trial: run, read, report),
storage (the storage URL, the study's lock across tuners, heartbeats), claims (the trials divided
between tuners, dead tuners' trials re-queued), study (run_study: storage, resume, the pool of
trials), reports (leaderboard, best_params.json, plots, the printed summary), cli (the command
lines' arguments).
"""

from __future__ import annotations

from storage_url import STORAGE_ENV, redact

from .cli import add_arguments, add_storage_arguments, parse_overrides, storage_url
from .errors import TuningError
from .reports import StudyResult, TrialRow, print_summary, write_reports
from .runners import RUNNERS, ContainerRunner, ProcessRunner
from .slots import Slot, cpu_count, default_parallel, detect_gpus, make_slots
from .space import GRID_POINTS, PRUNERS, SAMPLERS, grid_size, grid_values, make_pruner, make_sampler, suggest
from .space import space_with_overrides as _space_with_overrides
from .study import STUDY_NAME, run_study

__all__ = [
    "GRID_POINTS",
    "PRUNERS",
    "RUNNERS",
    "SAMPLERS",
    "STORAGE_ENV",
    "STUDY_NAME",
    "ContainerRunner",
    "ProcessRunner",
    "Slot",
    "StudyResult",
    "TrialRow",
    "TuningError",
    "_space_with_overrides",
    "add_arguments",
    "add_storage_arguments",
    "cpu_count",
    "default_parallel",
    "detect_gpus",
    "grid_size",
    "grid_values",
    "make_pruner",
    "make_sampler",
    "make_slots",
    "parse_overrides",
    "print_summary",
    "redact",
    "run_study",
    "storage_url",
    "suggest",
    "write_reports",
]
