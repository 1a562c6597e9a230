"""run_study: the Optuna study (in a work directory, or shared by several tuners), resumed where a run left
it, its trials in a pool."""

from __future__ import annotations

import fcntl
import json
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import optuna

import container_engine
from contract.spec import hyperparameters, images
from contract.spec import search_space as spaces
from storage_url import STUDY_NAME

from . import slots as hardware
from .claims import Claims, counts, tuner_id
from .errors import TuningError
from .reports import StudyResult, write_reports
from .runners import RUNNERS, ContainerRunner, ProcessRunner
from .space import GRID_POINTS, SAMPLERS, grid_size, make_pruner, make_sampler, space_with_overrides
from .storage import (
    GRACE_PERIOD_S,
    HEARTBEAT_INTERVAL_S,
    ClaimLock,
    Heartbeats,
    default_url,
    open_storage,
    optuna_quiet,
    redact,
)
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
    storage: str | None = None,
    study_name: str = STUDY_NAME,
    heartbeat_interval: int = HEARTBEAT_INTERVAL_S,
    grace_period: int = GRACE_PERIOD_S,
    log: Callable[[str], None] = lambda line: print(line, flush=True),
) -> StudyResult:
    """Run (or resume) a local study of `n_trials` trials in `workdir`; see the module's docstring.

    fixed_overrides: hyperparameters for every trial (e.g. {"epochs": 3}); they win over the
    space's fixed ones and take searched ones out of the search. enqueue: parameter sets to try
    first (Optuna's enqueue_trial; not enqueued again on a rerun). engine: the
    container engine to run trials with (default: scripts/engine.sh's). KeyboardInterrupt stops the running
    trials, writes the results so far and is re-raised; a rerun resumes.

    storage: a database URL (storage.py) for a study shared by several tuners, each with its own
    workdir (its trials' files); default the workdir's study.db. heartbeat_interval, grace_period
    (seconds): how often a tuner proves its running trials alive, and how long after the last proof
    another tuner takes them for dead and re-queues them (claims.py).
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
    private = storage is None  # the workdir's own SQLite file: no other tuner can be using it
    url = storage or default_url(workdir)
    shown_url = redact(url)
    rdb = claim_lock = heartbeats = None
    try:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        rdb = open_storage(url, heartbeat_interval, grace_period)
        claim_lock = ClaimLock(rdb, url, study_name)
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
        heartbeats = Heartbeats(rdb, heartbeat_interval, log, url)
        with claim_lock.held():  # one tuner at a time makes the study, its settings, its queue
            where = workdir if private else f"study {study_name} in {shown_url}"
            study = _open_study(rdb, study_name, space, fixed, where, "workdir" if private else "study name")
            # a fresh random stream per tuner run: a resumed run must not replay the first run's samples,
            # and two tuners sharing a study must not draw the same ones
            runs = int(study.user_attrs.get("tuner_runs", 0))
            study.set_user_attr("tuner_runs", runs + 1)
            study.sampler = make_sampler(sampler, space, seed + len(study.trials) + 7919 * runs, target, grid_points)
            study.pruner = make_pruner(pruner)  # it reads every tuner's reports from the storage
            claims = Claims(
                study,
                rdb,
                claim_lock,
                heartbeats,
                tuner_id(workdir),
                private,
                grace_period,
                target,
                the_runner.cleanup,
                log,
            )
            claims.requeue_dead()
            for params in enqueue:
                study.enqueue_trial(dict(params), skip_if_exists=True)
            tracking = track_study(study, log)  # MLflow, when MLFLOW_TRACKING_URI names a server
            done, running = counts(study)

        runtime = {}  # trial-only settings, not part of best_params.json
        if "profiler" in hyperparameters.BY_NAME and "profiler" not in fixed:
            runtime["profiler"] = "false"  # no profile per trial
        work = TrialWork(
            study,
            rdb,
            claims,
            space,
            fixed,
            runtime,
            the_runner,
            workdir,
            study.user_attrs["token"],
            log,
            trial_env=tracking.trial_env,
            poll_s=heartbeat_interval,
        )
        remaining = max(0, target - done - running)
        log(
            f"study {study_name} in {workdir if private else shown_url}: {done} of {target} trials done, "
            + (f"{running} running in other tuners, " if running else "")
            + f"{remaining} to run "
            f"(sampler {sampler}, pruner {pruner}, runner {runner}, {width} in parallel, "
            f"{slots[0].threads} thread(s) and {slots[0].workers} loader worker(s) each"
            + (f", GPUs {','.join(gpus)}" if gpus else "")
            + ")"
        )

        the_runner.expect(remaining)
        try:
            try:
                interrupted = _run_trials(work, slots, log)
            finally:
                the_runner.close()
            result = write_reports(study, space, fixed, workdir, target, keep_models, shown_url)
        except BaseException as exc:  # the study's MLflow run ends too
            tracking.end("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            raise
        tracking.finish(result, space.objective_metric, "KILLED" if interrupted else "FINISHED")
        result.interrupted = interrupted
        if interrupted:
            raise KeyboardInterrupt
        return result
    finally:
        if heartbeats is not None:
            heartbeats.stop()
        if claim_lock is not None:
            claim_lock.close()
        if rdb is not None:
            rdb.engine.dispose()  # a shared database's connections go now, not at exit
        lock.close()


def _definition(space: spaces.SearchSpace, fixed: dict) -> dict:
    """What makes a study this search: a study holding another one is refused, not mixed."""
    return json.loads(
        json.dumps(
            {
                "parameters": [asdict(p) for p in space.parameters],
                "fixed": hyperparameters.to_sagemaker(fixed),
                "objective": space.objective_metric,
            }
        )
    )


def _open_study(rdb, study_name: str, space: spaces.SearchSpace, fixed: dict, where, other: str) -> optuna.Study:
    """The study `study_name` in `rdb`, made with this search's definition or found holding it (under the
    claim lock: one tuner at a time makes it). `where` and `other` name it and its way out in the refusal."""
    direction: Literal["minimize", "maximize"] = (
        "minimize" if space.objective_type.lower().startswith("min") else "maximize"
    )
    definition = _definition(space, fixed)
    with optuna_quiet():
        study = optuna.create_study(storage=rdb, study_name=study_name, direction=direction, load_if_exists=True)
    if "definition" not in study.user_attrs:
        study.set_user_attr("definition", definition)
        study.set_user_attr("space", space.name)
        study.set_user_attr("token", uuid.uuid4().hex[:8])
    elif study.user_attrs["definition"] != definition:
        raise TuningError(
            f"{where} holds a study of another search (space {study.user_attrs.get('space')}, "
            f"fixed {study.user_attrs['definition']['fixed']}): use another {other}"
        )
    return study


def _run_trials(work: TrialWork, slots: list, log: Callable[[str], None]) -> bool:
    """Every slot's worker until the study has its trials; True when Ctrl-C stopped them."""
    with ThreadPoolExecutor(len(slots), thread_name_prefix="trial") as pool:
        futures = [pool.submit(work.worker, slot) for slot in slots]
        try:
            for future in as_completed(futures):
                future.result()
        except KeyboardInterrupt:
            log("interrupted: stopping the running trials (a rerun resumes the study)")
            work.interrupt()
            return True
    return False
