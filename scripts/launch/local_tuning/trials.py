"""One trial: its hyperparameters, its trainer run, its validation losses read from the log, its outcome."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import threading
import traceback
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import Trial, TrialState

from contract.spec import hyperparameters, metrics

from .claims import DONE, WAIT, Claims
from .reports import params_text
from .slots import Slot
from .space import suggest

DIVERGED = re.compile(r"loss became (nan|[-+]?inf)", re.IGNORECASE)


class TrialWork:
    """The study's trials: a worker thread per slot claims a trial, runs it, tells the outcome, and again."""

    def __init__(
        self,
        study: optuna.Study,
        storage,
        claims: Claims,
        space,
        fixed: dict,
        runtime: dict,
        runner,
        workdir: Path,
        token: str,
        log: Callable[[str], None],
        trial_env: Callable[[int], dict] = lambda number: {},
        poll_s: float = 5.0,
    ):
        self.claims, self.poll_s = claims, poll_s  # poll_s: how often a waiting slot looks at the study again
        self.study, self.storage, self.space, self.fixed, self.runtime = study, storage, space, fixed, runtime
        self.trial_env = trial_env  # a trial's extra environment, by its number (tracking.py's MLflow settings)
        self.runner, self.workdir, self.token, self.log = runner, workdir, token, log
        self.stopping = threading.Event()
        self.active: dict[int, tuple[subprocess.Popen, str]] = {}

    def worker(self, slot: Slot) -> None:
        """Trials on this slot, one after another, while the study needs more (claims.py divides them)."""
        while not self.stopping.is_set():
            trial = self.claims.claim()
            if trial == DONE:
                return
            if trial == WAIT:  # the running trials would reach n_trials: wait, they may yet die
                self.claims.wait(self.poll_s)
                continue
            assert isinstance(trial, Trial)
            self.run_and_tell(trial, slot)

    def run_and_tell(self, trial: Trial, slot: Slot) -> None:
        try:
            outcome = self.run_trial(trial, slot)
        except UpdateFinishedTrialError:  # another tuner took it for dead meanwhile: it runs again there
            outcome = "taken"
        except Exception as exc:  # a bug of ours: fail this trial, go on with the study
            traceback.print_exc()
            outcome = (TrialState.FAIL, None, f"tuner error: {type(exc).__name__}: {exc}")
        if outcome is None:  # interrupted: left RUNNING, re-queued by the next run (or by another tuner)
            self.claims.release(trial)
            return
        if outcome == "taken" or not self.claims.tell(trial, *outcome):
            self.claims.release(trial)
            self.log(f"trial {trial.number} was taken over by another tuner (its heartbeat was late): result dropped")
            return
        state, value, note = outcome
        frozen = self.storage.get_trial(trial._trial_id)
        duration = f"{frozen.duration.total_seconds():.0f} s" if frozen.duration else ""
        shown = f"{value:.6g} " if value is not None else ""
        self.log(
            f"trial {trial.number} {state.name} {shown}in {duration}"
            + (f": {note}" if note else "")
            + f"  ({params_text(trial.params)})"
        )

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
        values: list[float] = []
        stop_note = None
        with open(trial_dir / "log.txt", "w") as log:
            log.write(f"# trial {trial.number}: {json.dumps(hyperparameters.to_sagemaker(hps))}\n")
            log.flush()
            proc = self.runner.start(trial_dir, hps, slot, name, self.trial_env(trial.number))
            self.active[trial.number] = (proc, name)
            try:
                for line in proc.stdout:
                    log.write(line)
                    log.flush()
                    reading = metrics.read(line, self.space.objective_metric)
                    if not reading or stop_note or self.stopping.is_set():
                        continue
                    value = reading.value
                    epoch = reading.epoch if reading.epoch is not None else len(values) + 1
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
        reason = (
            failure_reason(trial_dir, rc)
            if rc != 0
            else f"no validation loss in the log (objective regex {self.space.objective_regex!r})"
        )
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
        self.claims.release_waiters()
        for proc, name in list(self.active.values()):
            self.runner.request_stop(proc, name)


def failure_reason(trial_dir: Path, rc: int) -> str:
    try:
        text = (trial_dir / "opt_ml" / "output" / "failure").read_text().strip()
        if text:
            return text.splitlines()[0]
    except OSError:
        pass
    try:
        lines = [line for line in (trial_dir / "log.txt").read_text().splitlines() if line.strip()]
    except OSError:
        lines = []
    return f"exit status {rc}" + (f"; last line: {lines[-1][:300]}" if lines else "")
