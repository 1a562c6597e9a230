"""run_study: the Optuna study in a work directory, resumed where a run left it, its trials in a pool."""

from __future__ import annotations

import fcntl
import json
import queue
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import optuna
from optuna.trial import FrozenTrial, TrialState

import container_engine
from contract.spec import hyperparameters, images
from contract.spec import search_space as spaces

from . import slots as hardware
from .errors import TuningError
from .reports import STUDY_NAME, StudyResult, params_text, write_reports
from .runners import RUNNERS, ContainerRunner, ProcessRunner
from .space import GRID_POINTS, SAMPLERS, grid_size, make_pruner, make_sampler, space_with_overrides
from .tracking import track_study
from .trials import TrialWork


def _lock(workdir: Path):
    handle = open(workdir / ".lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise TuningError(f"another tuning run is using {workdir}") from None
    return handle


def _interrupted(trial: FrozenTrial) -> bool:
    return trial.state == TrialState.FAIL and bool(trial.user_attrs.get("interrupted"))


def _finished(study: optuna.Study) -> int:
    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return sum(t.state in done and not _interrupted(t) for t in study.get_trials(deepcopy=False))


def _requeue_stale(study: optuna.Study, storage, runner, log) -> None:
    """RUNNING trials belong to a run that was killed (we hold the lock): fail them, re-queue their parameters."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        runner.cleanup(trial)
        storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
        storage.set_trial_user_attr(trial._trial_id, "note", "interrupted; parameters re-queued")
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        if trial.params:
            study.enqueue_trial(trial.params, user_attrs={"requeued_from": trial.number})
            log(f"trial {trial.number} was interrupted: re-queued ({params_text(trial.params)})")
        else:
            log(f"trial {trial.number} was interrupted before it started")


def run_study(
    space: spaces.SearchSpace | str,
    data: Path | str,
    workdir: Path | str,
    n_trials: int,
    sampler: str = "tpe",
    parallel: int | None = None,
    runner: str = "process",
    fixed_overrides: dict | None = None,
    seed: int = 0,
    *,
    pruner: str = "median",
    grid_points: int = GRID_POINTS,
    enqueue: list[dict] | tuple = (),
    image: str | None = None,
    engine: container_engine.Engine | None = None,
    keep_models: bool = False,
    log: Callable[[str], None] = lambda line: print(line, flush=True),
) -> StudyResult:
    """Run (or resume) a local study of `n_trials` trials in `workdir`; see the module's docstring.

    fixed_overrides: hyperparameters for every trial (e.g. {"epochs": 3}); they win over the
    space's fixed ones and take searched ones out of the search. enqueue: parameter sets to try
    first (Optuna's enqueue_trial; not enqueued again on a rerun). engine: the
    container engine to run trials with (default: scripts/engine.sh's). KeyboardInterrupt stops the running
    trials, writes the results so far and is re-raised; a rerun resumes.
    """
    space = spaces.load(space) if isinstance(space, str) else space
    data, workdir = Path(data).resolve(), Path(workdir).resolve()
    if not data.exists():
        raise TuningError(f"data {data} does not exist")
    if runner not in RUNNERS:
        raise TuningError(f"runner must be one of {', '.join(RUNNERS)}; got {runner!r}")
    if sampler not in SAMPLERS:
        raise TuningError(f"sampler must be one of {', '.join(SAMPLERS)}; got {sampler!r}")
    overrides = dict(fixed_overrides or {})
    space, fixed = space_with_overrides(space, overrides, log)
    target = n_trials
    if sampler == "grid" and grid_size(space, grid_points) < n_trials:
        target = grid_size(space, grid_points)
        log(f"the grid has {target} points: running {target} trials, not {n_trials}")

    workdir.mkdir(parents=True, exist_ok=True)
    lock = _lock(workdir)
    try:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage_url = f"sqlite:///{workdir / 'study.db'}"
        storage = optuna.storages.RDBStorage(storage_url, engine_kwargs={"connect_args": {"timeout": 60}})
        direction: Literal["minimize", "maximize"] = (
            "minimize" if space.objective_type.lower().startswith("min") else "maximize"
        )
        study = optuna.create_study(storage=storage, study_name=STUDY_NAME, direction=direction, load_if_exists=True)
        definition = json.loads(
            json.dumps(
                {
                    "parameters": [asdict(p) for p in space.parameters],
                    "fixed": hyperparameters.to_sagemaker(fixed),
                    "objective": space.objective_metric,
                }
            )
        )
        if "definition" not in study.user_attrs:
            study.set_user_attr("definition", definition)
            study.set_user_attr("space", space.name)
            study.set_user_attr("token", uuid.uuid4().hex[:8])
        elif study.user_attrs["definition"] != definition:
            raise TuningError(
                f"{workdir} holds a study of another search (space {study.user_attrs.get('space')}, "
                f"fixed {study.user_attrs['definition']['fixed']}): use another workdir"
            )
        # a fresh random stream per run: a resumed run must not replay the first run's samples
        study.sampler = make_sampler(sampler, space, seed + len(study.trials), target, grid_points)
        study.pruner = make_pruner(pruner)

        gpus, cores = hardware.detect_gpus(), hardware.cpu_count()
        width = hardware.default_parallel(parallel, len(gpus), cores)
        if parallel and width < parallel:
            log(f"parallel {parallel} lowered to {width} ({len(gpus)} GPU(s), {cores} cores)")
        slots = hardware.make_slots(width, gpus, cores)
        the_runner = (
            ProcessRunner(data, workdir)
            if runner == "process"
            else ContainerRunner(data, image or images.train_image(), engine)
        )
        _requeue_stale(study, storage, the_runner, log)
        for params in enqueue:
            study.enqueue_trial(dict(params), skip_if_exists=True)

        runtime = {}  # trial-only settings, not part of best_params.json
        if "profiler" in hyperparameters.BY_NAME and "profiler" not in fixed:
            runtime["profiler"] = "false"  # no profile per trial
        tracking = track_study(study, log)  # MLflow, when MLFLOW_TRACKING_URI names a server
        work = TrialWork(
            study,
            storage,
            space,
            fixed,
            runtime,
            the_runner,
            workdir,
            study.user_attrs["token"],
            log,
            trial_env=tracking.trial_env,
        )
        done = _finished(study)
        remaining = max(0, target - done)
        log(
            f"study {STUDY_NAME} in {workdir}: {done} of {target} trials done, {remaining} to run "
            f"(sampler {sampler}, pruner {pruner}, runner {runner}, {width} in parallel, "
            f"{slots[0].threads} thread(s) and {slots[0].workers} loader worker(s) each"
            + (f", GPUs {','.join(gpus)}" if gpus else "")
            + ")"
        )

        interrupted = False
        the_runner.expect(remaining)
        slot_queue: queue.Queue = queue.Queue()
        for slot in slots:
            slot_queue.put(slot)
        try:
            try:
                with ThreadPoolExecutor(width, thread_name_prefix="trial") as pool:
                    futures = [pool.submit(work.worker, slot_queue) for _ in range(remaining)]
                    try:
                        for future in as_completed(futures):
                            future.result()
                    except KeyboardInterrupt:
                        interrupted = True
                        log("interrupted: stopping the running trials (a rerun resumes the study)")
                        for future in futures:
                            future.cancel()
                        work.interrupt()
            finally:
                the_runner.close()
            result = write_reports(study, space, fixed, workdir, target, keep_models)
        except BaseException as exc:  # the study's MLflow run ends too
            tracking.end("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            raise
        tracking.finish(result, space.objective_metric, "KILLED" if interrupted else "FINISHED")
        result.interrupted = interrupted
        if interrupted:
            raise KeyboardInterrupt
        return result
    finally:
        lock.close()
