"""Local hyperparameter tuning with Optuna: SageMaker's tuning job, run on this machine.

    from launch.local_tuning import run_study
    result = run_study("seed1", data, workdir, n_trials=20, sampler="tpe", runner="process",
                       fixed_overrides={"epochs": 3})
    print(result.markdown())

The search space is container/trainer/search_space.py's (a preset or a JSON
file); the objective is the trainer's validation loss, read from its log with
the regex SageMaker's tuner uses (metrics.METRIC_DEFINITIONS), minimised. As
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
`python container/train.py` would run it, in a process started ahead with its
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
"""
from __future__ import annotations

import csv
import fcntl
import json
import math
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import traceback
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import container_engine
import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

ROOT = Path(__file__).resolve().parent.parent.parent
if str(ROOT / "container") not in sys.path:
    sys.path.insert(0, str(ROOT / "container"))

from insights import tuning_report  # noqa: E402
from trainer import hyperparameters  # noqa: E402
from trainer import search_space as spaces  # noqa: E402

from .config import LOCAL_TRAIN_IMAGE  # noqa: E402

STUDY_NAME = "local-tuning"
SAMPLERS = ("tpe", "random", "grid")
RUNNERS = ("process", "container")
PRUNERS = ("median", "none")
GRID_POINTS = 3
STOP_GRACE_S = 15  # SIGTERM, then this long for the trainer's checkpoint, then SIGKILL
DIVERGED = re.compile(r"loss became (nan|[-+]?inf)", re.IGNORECASE)
EPOCH = re.compile(r"\bepoch=(\d+)")
WARM_TRIAL = Path(__file__).resolve().parent / "warm_trial.py"  # container/train.py's main, imported ahead
CACHE_HP, CONTAINER_CACHE = "feature-cache", "/opt/feature-cache"  # the trainer's feature cache folder


class TuningError(RuntimeError):
    """The study cannot start or go on; the message is one line."""


# -- results ------------------------------------------------------------------

@dataclass
class TrialRow:
    number: int
    state: str
    objective: float | None
    params: dict
    duration_s: float | None
    epochs: int
    note: str
    log: Path
    finished: float | None = None  # when it ended (time.time())


@dataclass
class StudyResult:
    workdir: Path
    storage: str
    study_name: str
    n_trials: int
    rows: list[TrialRow]  # best first
    best: TrialRow | None
    best_params: dict | None
    files: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    interrupted: bool = False

    def count(self, state: str) -> int:
        return sum(row.state == state for row in self.rows)

    def markdown(self) -> str:
        lines = ["| trial | state | objective | params | duration |", "|---|---|---|---|---|"]
        for row in self.rows:
            params = ", ".join(f"{k}={_fmt(v)}" for k, v in row.params.items())
            objective = "" if row.objective is None else f"{row.objective:.6g}"
            state = row.state + (f" ({row.note})" if row.note and row.state != "COMPLETE" else "")
            duration = "" if row.duration_s is None else f"{row.duration_s:.0f} s"
            lines.append(f"| {row.number} | {state} | {objective} | {params} | {duration} |")
        return "\n".join(lines)


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# -- search space -> Optuna -----------------------------------------------------

def grid_values(param: spaces.Parameter, points: int = GRID_POINTS) -> list:
    """The grid of one parameter: categorical values, or `points` points over [low, high]."""
    if param.type == "categorical":
        return list(param.values)
    if points < 2:
        raise TuningError("grid_points must be at least 2")
    low, high = float(param.low), float(param.high)
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
        return trial.suggest_int(param.name, int(param.low), int(param.high), log=log)
    return trial.suggest_float(param.name, float(param.low), float(param.high), log=log)


class _GridSampler(optuna.samplers.GridSampler):
    # GridSampler stops optimize() when the grid is exhausted; with ask/tell that
    # raises instead. The study is limited to the grid's size here anyway.
    def after_trial(self, study, trial, state, values) -> None:
        pass


def make_sampler(name: str, space: spaces.SearchSpace, seed: int, n_trials: int,
                 grid_points: int = GRID_POINTS) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        # a few random trials first (SageMaker's Bayesian strategy starts randomly too), then TPE
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, n_trials // 3)),
                                              multivariate=True, constant_liar=True)
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


# -- hardware shares ------------------------------------------------------------

@dataclass(frozen=True)
class Slot:
    """One trial's share of the machine."""
    index: int
    threads: int  # OMP_NUM_THREADS
    workers: int  # the trainer's num-workers (data loader processes)
    gpu: str | None = None


def detect_gpus() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return []
        if out.returncode == 0:
            return [str(i) for i, _ in enumerate(l for l in out.stdout.splitlines() if l.startswith("GPU "))]
    return []


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def default_parallel(requested: int | None, gpus: int, cores: int) -> int:
    """max(1, min(GPUs or cores // 2, requested)): trials in parallel."""
    bound = gpus or max(1, cores // 2)
    return max(1, min(bound, requested or bound))


def make_slots(parallel: int, gpus: list[str], cores: int) -> list[Slot]:
    share = max(1, cores // parallel)
    slots = []
    for i in range(parallel):
        if gpus:  # the GPU computes; the cores decode images
            workers = min(8, max(1, share - 1))
            slots.append(Slot(i, max(1, share - workers), workers, gpus[i % len(gpus)]))
        else:  # the cores compute; a quarter of them decode
            workers = share // 4
            slots.append(Slot(i, max(1, share - workers), workers))
    return slots


# -- runners ----------------------------------------------------------------------

# Run in the child between fork and the real program: die with the tuner's thread
# (SIGKILL of the tuner included), so no trial outlives a killed study.
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))\n"  # PR_SET_PDEATHSIG
    "os.getppid() == int(sys.argv[1]) or sys.exit(1)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n")


def _die_with_parent(cmd: list[str]) -> list[str]:
    if not sys.platform.startswith("linux"):
        return cmd
    return [sys.executable, "-S", "-c", _DIE_WITH_PARENT, str(os.getpid()), *cmd]


def _hp_strings(hps: dict) -> dict[str, str]:
    return hyperparameters.to_sagemaker(hps)


class ProcessRunner:
    """`python container/train.py --name value ...` with OPT_ML=<trial>/opt_ml."""
    kind = "process"

    def __init__(self, data: Path, workdir: Path):
        if data.is_dir():
            self.channel = data
        else:  # an archive: the channel is a folder holding it
            self.channel = workdir / "channel"
            self.channel.mkdir(exist_ok=True)
            link = self.channel / data.name
            if not link.exists():
                link.symlink_to(data)
        # Warm spares (warm_trial.py), one per slot: the next trial's process does its
        # imports while the current trial runs. Only as many as trials remain to start.
        self.spares: dict[int, subprocess.Popen] = {}
        self.to_start = 0
        self.lock = threading.Lock()

    def expect(self, trials: int) -> None:
        """How many trials this runner will be asked to start (no spare beyond them)."""
        self.to_start = trials

    @staticmethod
    def slot_env(slot: Slot) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SM_")}
        env.update({"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(slot.threads),
                    "MKL_NUM_THREADS": str(slot.threads)})
        if slot.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot.gpu
        return env

    def spawn(self, slot: Slot) -> subprocess.Popen:
        # the caller's working directory: relative paths (feature-cache, pretrained) mean what they said
        return subprocess.Popen(_die_with_parent([sys.executable, str(WARM_TRIAL)]), env=self.slot_env(slot),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace")

    def start(self, trial_dir: Path, hps: dict, slot: Slot, name: str) -> subprocess.Popen:
        opt_ml = trial_dir / "opt_ml"
        env = {"OPT_ML": str(opt_ml), "TRAINER_SCRATCH": str(trial_dir / "scratch"),
               "TRAINER_REASON_FILE": str(trial_dir / "reason"), "SM_CHANNEL_TRAINING": str(self.channel),
               "MASTER_PORT": str(29500 + (os.getpid() % 200) * 10 + slot.index)}
        argv = [item for k, v in _hp_strings(hps).items() for item in (f"--{k}", v)]
        with self.lock:
            proc = self.spares.pop(slot.index, None)
            self.to_start -= 1
            if proc is None or proc.poll() is not None:
                proc = self.spawn(slot)
            if self.to_start > 0:
                self.spares[slot.index] = self.spawn(slot)
        try:
            proc.stdin.write(json.dumps({"argv": argv, "env": env}) + "\n")
            proc.stdin.close()
        except OSError:
            pass  # it died while importing: its output says why, and its exit status fails the trial
        return proc

    def close(self) -> None:
        """Let unused spares go (end of input: they exit at once)."""
        with self.lock:
            spares, self.spares, self.to_start = list(self.spares.values()), {}, 0
        for proc in spares:
            try:
                proc.stdin.close()
                proc.communicate(timeout=STOP_GRACE_S)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()

    def request_stop(self, proc: subprocess.Popen, name: str) -> None:
        """SIGTERM (the trainer checkpoints and exits), SIGKILL after a grace period; returns at once."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            timer = threading.Timer(STOP_GRACE_S, lambda: proc.poll() is None and proc.kill())
            timer.daemon = True
            timer.start()

    def cleanup(self, trial: FrozenTrial) -> None:
        pass  # its process died with the tuner (_DIE_WITH_PARENT)


def engine_from_script() -> container_engine.Engine:
    """The container engine as scripts/engine.sh sets it up, or a TuningError saying why not."""
    try:
        return container_engine.setup()
    except container_engine.EngineError as exc:
        raise TuningError(f"no container engine: {exc}") from None


class ContainerRunner:
    """`ENGINE run --rm -v trial/opt_ml:/opt/ml -v data:/opt/ml/input/data/training:ro IMAGE train`."""
    kind = "container"

    def __init__(self, data: Path, image: str, engine: container_engine.Engine | None):
        self.data, self.image = data, image
        engine = engine or engine_from_script()
        self.cli, self.env = engine.cli, engine.env
        found = subprocess.run([self.cli, "image", "inspect", image], env=self.env, capture_output=True)
        if found.returncode != 0:
            raise TuningError(f"image {image} not found: build it with `bash scripts/build_image.sh train`")

    def start(self, trial_dir: Path, hps: dict, slot: Slot, name: str) -> subprocess.Popen:
        opt_ml = trial_dir / "opt_ml"
        mounts = []
        if hps.get(CACHE_HP):  # one feature cache for all trials: the host folder, mounted
            host = Path(str(hps[CACHE_HP])).resolve()
            host.mkdir(parents=True, exist_ok=True)
            mounts += ["-v", f"{host}:{CONTAINER_CACHE}"]
            hps = {**hps, CACHE_HP: CONTAINER_CACHE}
        config = opt_ml / "input" / "config"
        config.mkdir(parents=True, exist_ok=True)
        (opt_ml / "input" / "data" / "training").mkdir(parents=True, exist_ok=True)
        (config / "hyperparameters.json").write_text(json.dumps(_hp_strings(hps)))
        (config / "inputdataconfig.json").write_text(json.dumps(
            {"training": {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated",
                          "RecordWrapperType": "None"}}))
        (config / "resourceconfig.json").write_text(json.dumps(
            {"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "eth0"}))
        target = "/opt/ml/input/data/training" + ("" if self.data.is_dir() else f"/{self.data.name}")
        cmd = [shutil.which(self.cli) or self.cli, "run", "--rm", "--name", name,
               "-v", f"{opt_ml}:/opt/ml", "-v", f"{self.data}:{target}:ro", *mounts,
               "-e", f"OMP_NUM_THREADS={slot.threads}", "-e", f"MKL_NUM_THREADS={slot.threads}"]
        if slot.gpu is not None:
            cmd += ["--gpus", f"device={slot.gpu}"] if Path(self.cli).name == "docker" else \
                ["--device", f"nvidia.com/gpu={slot.gpu}"]
        cmd += [self.image, "train"]
        return subprocess.Popen(_die_with_parent(cmd), env=self.env, cwd=trial_dir, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace")

    def request_stop(self, proc: subprocess.Popen, name: str) -> None:
        """`ENGINE stop` (SIGTERM, then SIGKILL after the grace period), in the background."""
        def stop():
            subprocess.run([self.cli, "stop", "-t", str(STOP_GRACE_S), name], env=self.env, capture_output=True)
            subprocess.run([self.cli, "rm", "-f", name], env=self.env, capture_output=True)
        threading.Thread(target=stop, daemon=True).start()

    def expect(self, trials: int) -> None:
        pass  # a container's start-up is the engine's; nothing to start ahead

    def close(self) -> None:
        pass

    def cleanup(self, trial: FrozenTrial) -> None:
        name = trial.user_attrs.get("container")
        if name:  # a killed tuner leaves its containers running
            subprocess.run([self.cli, "rm", "-f", name], env=self.env, capture_output=True)


# -- the study ----------------------------------------------------------------------

def _space_with_overrides(space: spaces.SearchSpace, overrides: dict, log) -> tuple[spaces.SearchSpace, dict]:
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
        hyperparameters.parse([a for k, v in _hp_strings(fixed).items() for a in (f"--{k}", v)])
    except hyperparameters.HyperparameterError as exc:
        raise TuningError(str(exc)) from None
    return replace(space, parameters=params, fixed={k: v for k, v in fixed.items() if k not in overrides}), fixed


class _Study:
    def __init__(self, study: optuna.Study, storage, space, fixed: dict, runtime: dict, runner, workdir: Path,
                 token: str, log: Callable[[str], None]):
        self.study, self.storage, self.space, self.fixed, self.runtime = study, storage, space, fixed, runtime
        self.runner, self.workdir, self.token, self.log = runner, workdir, token, log
        self.regex = re.compile(space.objective_regex)
        self.stopping = threading.Event()
        self.ask_lock = threading.Lock()
        self.active: dict[int, tuple[subprocess.Popen, str]] = {}

    def worker(self, slots: queue.Queue) -> None:
        slot = slots.get()
        try:
            if self.stopping.is_set():
                return
            with self.ask_lock:
                trial = self.study.ask()
            try:
                outcome = self.run_trial(trial, slot)
            except Exception as exc:  # a bug of ours: fail this trial, go on with the study
                traceback.print_exc()
                outcome = (TrialState.FAIL, None, f"tuner error: {type(exc).__name__}: {exc}")
            if outcome is None:  # interrupted: left RUNNING, re-queued by the next run
                return
            state, value, note = outcome
            if note:
                trial.set_user_attr("note", note)
            if state == TrialState.COMPLETE:
                self.study.tell(trial, value)
            else:
                self.study.tell(trial, state=state)
            frozen = self.storage.get_trial(trial._trial_id)
            duration = f"{frozen.duration.total_seconds():.0f} s" if frozen.duration else ""
            shown = f"{value:.6g} " if value is not None else ""
            self.log(f"trial {trial.number} {state.name} {shown}in {duration}"
                     + (f": {note}" if note else "") + f"  ({_params_text(trial.params)})")
        finally:
            slots.put(slot)

    def run_trial(self, trial: Trial, slot: Slot):
        params = {p.name: suggest(trial, p) for p in self.space.parameters}
        hps = {**self.runtime_for(slot), **self.fixed, **params}
        trial_dir = self.workdir / "trials" / f"{trial.number:04d}"
        if trial_dir.exists():  # a trial number is never reused; a leftover from a deleted study
            shutil.rmtree(trial_dir, ignore_errors=True)
        trial_dir.mkdir(parents=True)
        name = f"byoc-tune-{self.token}-{trial.number:04d}"
        trial.set_user_attr("log", str((trial_dir / "log.txt").relative_to(self.workdir)))
        if self.runner.kind == "container":
            trial.set_user_attr("container", name)
        if self.stopping.is_set():
            return None
        values, stop_note = [], None
        with open(trial_dir / "log.txt", "w") as log:
            log.write(f"# trial {trial.number}: {json.dumps(_hp_strings(hps))}\n")
            log.flush()
            proc = self.runner.start(trial_dir, hps, slot, name)
            self.active[trial.number] = (proc, name)
            try:
                for line in proc.stdout:
                    log.write(line)
                    log.flush()
                    match = self.regex.search(line)
                    if not match or stop_note or self.stopping.is_set():
                        continue
                    value = float(match.group(1))
                    epoch_match = EPOCH.search(match.group(0))
                    epoch = int(epoch_match.group(1)) if epoch_match else len(values) + 1
                    if not math.isfinite(value):
                        stop_note = f"diverged: validation loss {value} at epoch {epoch}"
                    else:
                        values.append(value)
                        trial.report(value, epoch)
                        if trial.should_prune():
                            stop_note = f"pruned at epoch {epoch}: validation loss {value:.4g} above the median"
                    if stop_note:
                        log.write(f"# tuner: {stop_note}; stopping the trial\n")
                        self.runner.request_stop(proc, name)
                rc = proc.wait()
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                self.active.pop(trial.number, None)
        for scratch in ("scratch", "opt_ml/checkpoints"):  # large, and no trial is resumed part-way
            shutil.rmtree(trial_dir / scratch, ignore_errors=True)
        if stop_note:
            return TrialState.PRUNED, None, stop_note
        if self.stopping.is_set():
            return None
        if rc == 0 and values:
            return TrialState.COMPLETE, values[-1], ""  # SageMaker's tuner takes the last value too
        reason = _failure_reason(trial_dir, rc) if rc != 0 else \
            f"no validation loss in the log (objective regex {self.regex.pattern!r})"
        if DIVERGED.search(reason):
            return TrialState.PRUNED, None, f"diverged: {reason}"
        return TrialState.FAIL, None, reason

    def runtime_for(self, slot: Slot) -> dict:
        hps = dict(self.runtime)
        if "num-workers" not in self.fixed:
            hps["num-workers"] = slot.workers
        return hps

    def interrupt(self) -> None:
        self.stopping.set()
        for proc, name in list(self.active.values()):
            self.runner.request_stop(proc, name)


def _failure_reason(trial_dir: Path, rc: int) -> str:
    try:
        text = (trial_dir / "opt_ml" / "output" / "failure").read_text().strip()
        if text:
            return text.splitlines()[0]
    except OSError:
        pass
    try:
        lines = [l for l in (trial_dir / "log.txt").read_text().splitlines() if l.strip()]
    except OSError:
        lines = []
    return f"exit status {rc}" + (f"; last line: {lines[-1][:300]}" if lines else "")


def _params_text(params: dict) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in params.items())


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
            log(f"trial {trial.number} was interrupted: re-queued ({_params_text(trial.params)})")
        else:
            log(f"trial {trial.number} was interrupted before it started")


def run_study(space: spaces.SearchSpace | str, data: Path | str, workdir: Path | str, n_trials: int,
              sampler: str = "tpe", parallel: int | None = None, runner: str = "process",
              fixed_overrides: dict | None = None, seed: int = 0, *, pruner: str = "median",
              grid_points: int = GRID_POINTS, enqueue: list[dict] | tuple = (), image: str = LOCAL_TRAIN_IMAGE,
              engine: container_engine.Engine | None = None, keep_models: bool = False,
              log: Callable[[str], None] = lambda line: print(line, flush=True)) -> StudyResult:
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
    space, fixed = _space_with_overrides(space, overrides, log)
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
        direction = "minimize" if space.objective_type.lower().startswith("min") else "maximize"
        study = optuna.create_study(storage=storage, study_name=STUDY_NAME, direction=direction,
                                    load_if_exists=True)
        definition = json.loads(json.dumps({"parameters": [asdict(p) for p in space.parameters],
                                            "fixed": _hp_strings(fixed), "objective": space.objective_metric}))
        if "definition" not in study.user_attrs:
            study.set_user_attr("definition", definition)
            study.set_user_attr("space", space.name)
            study.set_user_attr("token", uuid.uuid4().hex[:8])
        elif study.user_attrs["definition"] != definition:
            raise TuningError(f"{workdir} holds a study of another search (space {study.user_attrs.get('space')}, "
                              f"fixed {study.user_attrs['definition']['fixed']}): use another workdir")
        # a fresh random stream per run: a resumed run must not replay the first run's samples
        study.sampler = make_sampler(sampler, space, seed + len(study.trials), target, grid_points)
        study.pruner = make_pruner(pruner)

        gpus, cores = detect_gpus(), cpu_count()
        width = default_parallel(parallel, len(gpus), cores)
        if parallel and width < parallel:
            log(f"parallel {parallel} lowered to {width} ({len(gpus)} GPU(s), {cores} cores)")
        slots = make_slots(width, gpus, cores)
        the_runner = (ProcessRunner(data, workdir) if runner == "process"
                      else ContainerRunner(data, image or LOCAL_TRAIN_IMAGE, engine))
        _requeue_stale(study, storage, the_runner, log)
        for params in enqueue:
            study.enqueue_trial(dict(params), skip_if_exists=True)

        runtime = {}  # trial-only settings, not part of best_params.json
        if "profiler" in hyperparameters.BY_NAME and "profiler" not in fixed:
            runtime["profiler"] = "false"  # no profile per trial
        work = _Study(study, storage, space, fixed, runtime, the_runner, workdir, study.user_attrs["token"], log)
        done = _finished(study)
        remaining = max(0, target - done)
        log(f"study {STUDY_NAME} in {workdir}: {done} of {target} trials done, {remaining} to run "
            f"(sampler {sampler}, pruner {pruner}, runner {runner}, {width} in parallel, "
            f"{slots[0].threads} thread(s) and {slots[0].workers} loader worker(s) each"
            + (f", GPUs {','.join(gpus)}" if gpus else "") + ")")

        interrupted = False
        the_runner.expect(remaining)
        slot_queue: queue.Queue = queue.Queue()
        for slot in slots:
            slot_queue.put(slot)
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
        result.interrupted = interrupted
        if interrupted:
            raise KeyboardInterrupt
        return result
    finally:
        lock.close()


# -- reports ---------------------------------------------------------------------------

_ORDER = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1, TrialState.FAIL: 2}


def _rows(study: optuna.Study, workdir: Path) -> list[TrialRow]:
    trials = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
    sign = 1 if study.direction == optuna.study.StudyDirection.MINIMIZE else -1
    trials.sort(key=lambda t: (_ORDER.get(t.state, 3), sign * t.value if t.value is not None else math.inf,
                               t.number))
    return [TrialRow(t.number, t.state.name, t.value, dict(t.params),
                     t.duration.total_seconds() if t.duration else None, len(t.intermediate_values),
                     t.user_attrs.get("note", ""), workdir / t.user_attrs.get("log", f"trials/{t.number:04d}/log.txt"),
                     t.datetime_complete.timestamp() if t.datetime_complete else None)
            for t in trials]


def _plots(study: optuna.Study, space, workdir: Path) -> tuple[dict[str, Path], list[str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ov

    files, notes = {}, []
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.value is not None and math.isfinite(t.value)]
    varying = [p.name for p in space.parameters if len({repr(t.params.get(p.name)) for t in complete}) > 1]
    plots = {
        "optimization_history": (ov.plot_optimization_history, complete, "no completed trial"),
        "param_importances": (ov.plot_param_importances, len(complete) >= 2 and len(varying) >= 2,
                              "parameter importances need 2 completed trials and 2 parameters that vary"),
        "intermediate_values": (ov.plot_intermediate_values,
                                any(t.intermediate_values for t in study.get_trials(deepcopy=False)),
                                "no trial reported a validation loss"),
    }
    for name, (plot, possible, why_not) in plots.items():
        path = workdir / f"{name}.png"
        path.unlink(missing_ok=True)
        if not possible:
            notes.append(f"{name}.png not written: {why_not}")
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                axes = plot(study, params=varying) if name == "param_importances" else plot(study)
            figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
            figure.savefig(path, dpi=100, bbox_inches="tight")
            plt.close(figure)
            files[name] = path
        except Exception as exc:  # a plot is a nicety: never fail the study for one
            notes.append(f"{name}.png not written: {type(exc).__name__}: {exc}")
            plt.close("all")
    return files, notes


def write_reports(study: optuna.Study, space, fixed: dict, workdir: Path, n_trials: int,
                  keep_models: bool = False) -> StudyResult:
    rows = _rows(study, workdir)
    order = [p.name for p in space.parameters]
    names = sorted({k for row in rows for k in row.params},
                   key=lambda n: (n not in order, order.index(n) if n in order else 0, n))
    with open(workdir / "leaderboard.csv", "w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["rank", "trial", "state", "objective", "epochs", "duration_s", *names, "note", "log"])
        for rank, row in enumerate(rows, start=1):
            out.writerow([rank, row.number, row.state, "" if row.objective is None else row.objective, row.epochs,
                          "" if row.duration_s is None else round(row.duration_s, 1),
                          *[row.params.get(n, "") for n in names], row.note, row.log.relative_to(workdir)])
    files = {"leaderboard": workdir / "leaderboard.csv"}
    best = rows[0] if rows and rows[0].state == "COMPLETE" else None
    best_params = None
    best_file = workdir / "best_params.json"
    if best is not None:
        best_params = {**best.params, **fixed}
        best_file.write_text(json.dumps(best_params, indent=2) + "\n")
        files["best_params"] = best_file
        if not keep_models:  # a trial's model is kept only while it is the best
            for row in rows[1:]:
                shutil.rmtree(workdir / "trials" / f"{row.number:04d}" / "opt_ml" / "model", ignore_errors=True)
    else:
        best_file.unlink(missing_ok=True)
    plots, notes = _plots(study, space, workdir)
    files.update(plots)
    files["report"] = tuning_report.write(study, workdir)  # one HTML page of the above, with plotly figures
    if best is None:
        notes.insert(0, "no trial completed: no best_params.json")
    return StudyResult(workdir, f"sqlite:///{workdir / 'study.db'}", STUDY_NAME, n_trials, rows, best,
                       best_params, files, notes)


# -- command line (scripts/tune_local.py, and sm.py tune --local) -----------------------

def typed_value(text: str):
    """'3' -> 3, '0.01' -> 0.01, anything else as it is: JSON-friendly, and as Optuna compares values."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def parse_overrides(items: list[str]) -> dict:
    """['epochs=3', 'lr=0.01'] -> {'epochs': 3, 'lr': 0.01}"""
    hps = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise TuningError(f"expected name=value, got {item!r}")
        hps[name.strip()] = typed_value(value.strip())
    return hps


def add_arguments(parser) -> None:
    parser.add_argument("--space", default="seed1",
                        help=f"search space: a preset ({', '.join(spaces.PRESETS)}) or a JSON file (default seed1)")
    parser.add_argument("--trials", type=int, default=20, help="trials in the study (default 20)")
    parser.add_argument("--sampler", choices=SAMPLERS, default="tpe", help="tpe (Bayesian, default), random, grid")
    parser.add_argument("--grid-points", type=int, default=GRID_POINTS,
                        help=f"grid points per integer/continuous range (default {GRID_POINTS})")
    parser.add_argument("--parallel", type=int, default=None,
                        help="trials at once (default and most: one per GPU, or one per 2 cores)")
    parser.add_argument("--runner", choices=RUNNERS, default="process",
                        help="process: python container/train.py; container: the byoc-train image")
    parser.add_argument("--pruner", choices=PRUNERS, default="median", help="early stopping of trials (default median)")
    parser.add_argument("--seed", type=int, default=0, help="sampler seed")
    parser.add_argument("--image", default=LOCAL_TRAIN_IMAGE, help="training image for --runner container")
    parser.add_argument("--keep-models", action="store_true",
                        help="keep every completed trial's model, not only the best")


def print_summary(result: StudyResult, out=print) -> None:
    out("")
    out(result.markdown())
    out("")
    counts = ", ".join(f"{result.count(s)} {s.lower()}" for s in ("COMPLETE", "PRUNED", "FAIL") if result.count(s))
    out(f"{len(result.rows)} trials ({counts or 'none'}); results in {result.workdir}")
    for note in result.notes:
        out(f"  note: {note}")
    if result.best is not None:
        out(f"best: trial {result.best.number}, objective {result.best.objective:.6g}")
        out("train the final model with: " + " ".join(f"--hp {k}={v}" for k, v in
                                                    _hp_strings(result.best_params).items()))
    for name, path in result.files.items():
        out(f"  {name:<22} {path}")
