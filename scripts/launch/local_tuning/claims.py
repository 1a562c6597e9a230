"""The study's trials divided between tuners: who runs the next trial, who tells an outcome, who re-queues
a dead tuner's trial. Every such change happens under the study's ClaimLock (storage.py), so that any
number of tuners (threads of one process, processes, machines) sharing one storage reach n_trials
exactly: none run twice, none lost.

Counting: a trial counts once it is finished (complete, pruned or failed) or RUNNING in a live tuner;
a trial failed as interrupted (its tuner died) does not count, and its parameters are queued again.
A tuner asks for a trial only while finished + running < n_trials; when the running ones would reach it,
it waits (they may yet die), and it stops when the finished ones reach it.

A RUNNING trial is dead when its tuner is this one in an earlier life (same host and work directory:
the work directory's lock says the earlier process is gone), or when its heartbeat is older than the
grace period; the default storage, the work directory's own SQLite file, has no other tuner, so there
every RUNNING trial not running here is dead.
"""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, Trial, TrialState

from .reports import params_text
from .storage import ClaimLock, Heartbeats, heartbeat_ages, optuna_quiet

TUNER_ATTR = "tuner"  # a trial's user attribute: tuner_id() of the tuner that ran it
DONE, WAIT = "done", "wait"


TUNER_ID_FILE = ".tuner-id"


def tuner_id(workdir: Path) -> str:
    """host:workdir:token. The token lives in the workdir, so a tuner restarted on it is the same tuner (it
    re-queues its own trials at once), while two tuners whose host and path look alike are not: run_local
    runs every tuner as /work in a container, on the host's network (and hostname) for a database on
    127.0.0.1, and each took the other's running trials for its own dead ones."""
    marker = Path(workdir) / TUNER_ID_FILE
    try:
        token = marker.read_text().strip()
    except FileNotFoundError:
        token = ""
    if not token:
        token = uuid.uuid4().hex[:12]
        staged = marker.with_name(f"{TUNER_ID_FILE}.{token}")
        staged.write_text(token)
        staged.replace(marker)
    return f"{socket.gethostname()}:{workdir}:{token}"


def interrupted(trial: FrozenTrial) -> bool:
    return trial.state == TrialState.FAIL and bool(trial.user_attrs.get("interrupted"))


def counts(study: optuna.Study) -> tuple[int, int]:
    """(finished trials that count, RUNNING trials)"""
    finished = running = 0
    for trial in study.get_trials(deepcopy=False):
        if trial.state == TrialState.RUNNING:
            running += 1
        elif trial.state.is_finished() and not interrupted(trial):
            finished += 1
    return finished, running


class Claims:
    def __init__(
        self,
        study: optuna.Study,
        storage: optuna.storages.RDBStorage,
        lock: ClaimLock,
        heartbeats: Heartbeats,
        tuner: str,
        private: bool,
        grace_period: int,
        target: int,
        cleanup: Callable[[FrozenTrial], None],
        log: Callable[[str], None],
    ):
        self.study, self.storage, self.lock, self.heartbeats = study, storage, lock, heartbeats
        self.tuner, self.private, self.grace_period, self.target = tuner, private, grace_period, target
        self.cleanup, self.log = cleanup, log
        self.changed = threading.Condition()  # a trial of this tuner ended: waiting threads look again

    def requeue_dead(self) -> None:
        """Fail and re-queue the RUNNING trials of tuners that are gone; call with the lock held."""
        ages = heartbeat_ages(self.storage, self.study._study_id)
        alive_here = self.heartbeats.running()
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial._trial_id in alive_here:
                continue
            age = ages.get(trial._trial_id)
            owner = trial.user_attrs.get(TUNER_ATTR)
            if self.private or owner == self.tuner:
                why = "interrupted"
            elif age is not None and age > self.grace_period:
                why = f"its tuner {owner or '(unknown)'} is gone (no heartbeat for {age:.0f} s)"
            else:
                if age is None and trial._trial_id in ages:  # never had a heartbeat: goes stale unless kept alive
                    self.storage.record_heartbeat(trial._trial_id)
                continue
            self._requeue(trial, why)

    def _requeue(self, trial: FrozenTrial, why: str) -> None:
        self.cleanup(trial)
        try:  # attributes first: a finished trial takes none; no tell can come between (the lock)
            self.storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
            self.storage.set_trial_user_attr(trial._trial_id, "note", "interrupted; parameters re-queued")
            self.storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except UpdateFinishedTrialError:  # its tuner told it after all
            return
        if trial.params:
            self.study.enqueue_trial(trial.params, user_attrs={"requeued_from": trial.number})
            self.log(f"trial {trial.number} was interrupted: re-queued ({params_text(trial.params)}); {why}")
        else:
            self.log(f"trial {trial.number} was interrupted before it started; {why}")

    def claim(self) -> Trial | str:
        """A new trial for this tuner, or WAIT (the running trials would reach n_trials), or DONE."""
        with self.lock.held():
            self.requeue_dead()
            finished, running = counts(self.study)
            if finished >= self.target:
                return DONE
            if finished + running >= self.target:
                return WAIT
            with optuna_quiet():
                trial = self.study.ask()
            trial.set_user_attr(TUNER_ATTR, self.tuner)
            self.heartbeats.add(trial._trial_id)
            return trial

    def wait(self, timeout: float) -> None:
        with self.changed:
            self.changed.wait(timeout)

    def tell(self, trial: Trial, state: TrialState, value: float | None, note: str) -> bool:
        """The outcome, unless another tuner took the trial over meanwhile (then False)."""
        try:
            with self.lock.held():
                if self.storage.get_trial(trial._trial_id).state != TrialState.RUNNING:
                    return False  # another tuner failed and re-queued it: its outcome is dropped
                if note:
                    trial.set_user_attr("note", note)
                if state == TrialState.COMPLETE:
                    self.study.tell(trial, value)
                else:
                    self.study.tell(trial, state=state)
                return True
        finally:
            self.release(trial)

    def release(self, trial: Trial) -> None:
        """No more heartbeats for it (told, or left RUNNING by an interrupt: re-queued later)."""
        self.heartbeats.remove(trial._trial_id)
        self.release_waiters()

    def release_waiters(self) -> None:
        with self.changed:
            self.changed.notify_all()
