"""A local tuning study shared by several tuners through a real PostgreSQL server (issue 24, point 3).

The tuners are real processes (scripts/tune_local.py, process runner) on tiny trials; the server is
Debian's PostgreSQL on 127.0.0.1 (helpers/postgres.py). What must hold: the trials are divided,
n_trials reached exactly, none lost or run twice; a trial running in a live tuner is never taken
(heartbeats), a killed tuner's trial is re-queued by the other and the study still completes;
the median pruner judges with every tuner's reports; no password is ever printed.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from helpers import postgres
from helpers.training import ROOT
from helpers.tuning import HOPELESS_LR, SPACE, TINY
from launch import local_tuning
from launch.local_tuning import claims as sharing
from launch.local_tuning import storage as storages

HEARTBEAT, GRACE = 1, 3  # seconds: short, so that a dead tuner's trial is taken over within the test
TUNER_LIMIT_S = 900  # one tuner's run, on a busy 2-core machine (a few trials: seconds each when idle)


@pytest.fixture(scope="module")
def pg():
    problem = postgres.available()
    assert problem is None, problem
    with postgres.postgres_server() as server:
        yield server


@pytest.fixture
def space_file(tmp_path) -> Path:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(SPACE))
    return path


def load(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url)


def counted(study: optuna.Study) -> list:
    return [t for t in study.trials if t.state.is_finished() and not t.user_attrs.get("interrupted")]


# -- the claims against the real server, no training -------------------------------------


def test_only_dead_tuners_trials_are_requeued(pg, tmp_path):
    url = pg.url()
    rdb = storages.open_storage(url, HEARTBEAT, GRACE)
    lock = storages.ClaimLock(rdb, url, "claims")
    beats = storages.Heartbeats(rdb, HEARTBEAT, print, url)
    lines: list[str] = []
    try:
        study = optuna.create_study(storage=rdb, study_name="claims")
        (tmp_path / "me").mkdir(), (tmp_path / "other").mkdir()
        me, other = sharing.tuner_id(tmp_path / "me"), sharing.tuner_id(tmp_path / "other")

        def started(owner: str, heartbeat: bool) -> optuna.trial.Trial:
            with storages.optuna_quiet():
                trial = study.ask()
            trial.suggest_float("lr", 1e-4, 1e-2, log=True)
            trial.set_user_attr(sharing.TUNER_ATTR, owner)
            if heartbeat:
                rdb.record_heartbeat(trial._trial_id)
            return trial

        mine_dead = started(me, heartbeat=True)  # this tuner's, from a run that was killed
        other_live = started(other, heartbeat=True)  # kept alive below
        other_dead = started(other, heartbeat=True)  # its heartbeat stops
        no_beat = started(other, heartbeat=False)  # its tuner died before its first heartbeat
        claims = sharing.Claims(study, rdb, lock, beats, me, False, GRACE, 10, lambda trial: None, lines.append)

        def states() -> dict[int, TrialState]:
            return {t.number: t.state for t in study.get_trials(deepcopy=False)}

        with lock.held():
            claims.requeue_dead()
        # at once: only this tuner's own dead trial (no other tuner can hold its workdir)
        assert states()[mine_dead.number] == TrialState.FAIL
        assert {states()[t.number] for t in (other_live, other_dead, no_beat)} == {TrialState.RUNNING}
        deadline = time.monotonic() + GRACE + 2
        while time.monotonic() < deadline:  # past the grace period; the live one's tuner keeps beating
            rdb.record_heartbeat(other_live._trial_id)
            time.sleep(HEARTBEAT / 2)
        with lock.held():
            claims.requeue_dead()
        after = states()
        assert after[other_live.number] == TrialState.RUNNING  # never taken from a live tuner
        assert after[other_dead.number] == TrialState.FAIL
        # the first look gave it a heartbeat (adopted, not failed at once); with no tuner beating it, stale now
        assert after[no_beat.number] == TrialState.FAIL

        # each dead trial failed as interrupted once, its parameters queued once
        trials = study.get_trials(deepcopy=False)
        waiting = {t.user_attrs["requeued_from"]: t for t in trials if t.state == TrialState.WAITING}
        assert sorted(waiting) == sorted([mine_dead.number, other_dead.number, no_beat.number])
        for number, queued in waiting.items():
            assert queued.system_attrs["fixed_params"] == trials[number].params  # asked for again as they were
            assert trials[number].user_attrs["interrupted"]
        assert sum("re-queued" in line for line in lines) == 3, lines
        # the live tuner's outcome still counts; the dead one's, if it comes back, is dropped
        assert claims.tell(other_live, TrialState.COMPLETE, 0.5, "")
        assert not claims.tell(other_dead, TrialState.COMPLETE, 0.4, "")
        assert study.trials[other_live.number].value == 0.5 and study.trials[other_dead.number].value is None
    finally:
        beats.stop()
        lock.close()
        rdb.engine.dispose()


def test_a_lock_connection_the_server_dropped_is_replaced(pg):
    """A PostgreSQL restart or idle timeout between two claims (or during one) ends the lock's session;
    the tuner goes on with a new one instead of aborting."""
    from sqlalchemy import text

    url = pg.url()
    rdb = storages.open_storage(url, HEARTBEAT, GRACE)
    lock = storages.ClaimLock(rdb, url, "dropped")

    def session() -> int:
        return lock.connection.execute(text("SELECT pg_backend_pid()")).scalar()

    def drop(pid: int) -> None:
        with rdb.engine.connect() as admin:
            assert admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()

    def held_elsewhere() -> bool:
        with rdb.engine.connect() as other:
            taken = other.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": lock.key}).scalar()
            if taken:
                other.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": lock.key})
            return not taken

    try:
        with lock.held():
            first = session()
        drop(first)  # between two claims
        with lock.held():
            second = session()
            assert second != first and held_elsewhere()
            drop(second)  # while a claim holds it: the lock went with the session
        assert not held_elsewhere()
        with lock.held():
            assert session() not in (first, second) and held_elsewhere()
        assert not held_elsewhere()
    finally:
        lock.close()
        rdb.engine.dispose()


def test_a_bad_storage_is_one_line_without_the_password(pg, sample_data, space_file, tmp_path):
    wrong = pg.url().replace(postgres.PASSWORD, "not-the-password-42")
    with pytest.raises(local_tuning.TuningError) as caught:
        local_tuning.run_study(
            str(space_file), sample_data, tmp_path / "w", 1, fixed_overrides=TINY, storage=wrong, log=print
        )
    message = str(caught.value)
    assert "cannot be opened" in message and "password authentication failed" in message, message
    assert "not-the-password-42" not in message and "***" in message
    with pytest.raises(local_tuning.TuningError, match="only sqlite and postgresql"):
        local_tuning.run_study(
            str(space_file), sample_data, tmp_path / "w", 1, fixed_overrides=TINY, storage="mysql://u:p@h/d", log=print
        )


# -- two tuners, real processes ------------------------------------------------------------


class Tuner:
    """scripts/tune_local.py on the shared study, its output in a file."""

    def __init__(self, name: str, tmp_path: Path, url: str, sample_data: Path, space_file: Path):
        self.workdir, self.output = tmp_path / name, tmp_path / f"{name}.out"
        self.url, self.sample_data, self.space_file = url, sample_data, space_file
        self.proc: subprocess.Popen | None = None

    def command(self, trials: int, *extra: str) -> list[str]:
        return [
            sys.executable,
            str(ROOT / "scripts" / "tune_local.py"),
            "--data",
            str(self.sample_data),
            "--workdir",
            str(self.workdir),
            "--space",
            str(self.space_file),
            "--trials",
            str(trials),
            "--sampler",
            "random",
            "--storage",
            self.url,
            "--study-name",
            "shared",
            "--heartbeat-interval",
            str(HEARTBEAT),
            "--grace-period",
            str(GRACE),
            "--hp",
            *[f"{k}={v}" for k, v in TINY.items()],
            *extra,
        ]

    def start(self, trials: int, *extra: str) -> Tuner:
        with open(self.output, "a") as out:
            self.proc = subprocess.Popen(self.command(trials, *extra), stdout=out, stderr=subprocess.STDOUT)
        return self

    def wait(self) -> str:
        assert self.proc is not None
        try:
            rc = self.proc.wait(timeout=TUNER_LIMIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"{self.workdir.name} did not finish:\n{self.text()[-4000:]}")
        assert rc == 0, self.text()[-4000:]
        return self.text()

    def text(self) -> str:
        return self.output.read_text(errors="replace") if self.output.is_file() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def trial_dirs(self) -> set[str]:
        return {p.parent.name for p in self.workdir.glob("trials/*/opt_ml")}


def ran_by(trial, tuner) -> bool:
    """Whether `tuner` ran `trial`: its id is host:workdir:token (claims.tuner_id)."""
    return f":{tuner.workdir}:" in trial.user_attrs["tuner"]


def test_two_tuners_share_one_study(pg, sample_data, space_file, tmp_path):
    url = pg.url()
    a = Tuner("a", tmp_path, url, sample_data, space_file)
    b = Tuner("b", tmp_path, url, sample_data, space_file)
    try:
        # 1. a alone: two trials, the median pruner's baseline
        a.start(2).wait()
        # 2. b's first trial is hopeless: pruned against a's reports (b has none of its own)
        b_out = b.start(3, "--enqueue", f"lr={HOPELESS_LR}").wait()
        study = load(url, "shared")
        hopeless = study.trials[2]
        assert hopeless.params["lr"] == HOPELESS_LR and hopeless.state == TrialState.PRUNED, b_out[-3000:]
        assert ran_by(hopeless, b) and list(hopeless.intermediate_values) == [1]

        # 3. both at once: the trials are divided, n_trials exactly, none taken from a live tuner
        for tuner in (a, b):
            tuner.start(7)
        outputs = [tuner.wait() for tuner in (a, b)]
        study = load(url, "shared")
        assert len(study.trials) == 7 and len(counted(study)) == 7, [t.state for t in study.trials]
        assert not any(t.user_attrs.get("interrupted") for t in study.trials), outputs  # nothing stolen
        new = study.trials[3:]
        by_tuner = {str(tuner.workdir): {t.number for t in new if ran_by(t, tuner)} for tuner in (a, b)}
        assert all(by_tuner.values()) and sum(map(len, by_tuner.values())) == 4, by_tuner  # both worked
        assert max(t.duration.total_seconds() for t in new) > GRACE  # trials outlived the grace period
        assert len({t.params["lr"] for t in study.trials}) == 7  # no parameters drawn twice
        for tuner in (a, b):  # each trial's files where its tuner ran it
            assert {f"{n:04d}" for n in by_tuner[str(tuner.workdir)]} <= tuner.trial_dirs()

        # 4. a killed mid-trial: b re-queues a's trial once the heartbeat is stale, the study completes
        before = a.trial_dirs()
        a.start(10)
        b.start(10)
        deadline = time.monotonic() + 180
        while not (a.trial_dirs() - before) and time.monotonic() < deadline and a.proc.poll() is None:
            time.sleep(0.2)
        assert a.trial_dirs() - before, "a started no trial:\n" + a.text()[-3000:]
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait(timeout=30)
        (killed_dir,) = a.trial_dirs() - before
        killed = int(killed_dir)
        b_out = b.wait()
        assert f"trial {killed} was interrupted: re-queued" in b_out and "is gone (no heartbeat for" in b_out, b_out
        study = load(url, "shared")
        assert len(counted(study)) == 10, [(t.number, t.state) for t in study.trials]
        dead = study.trials[killed]
        assert dead.state == TrialState.FAIL and dead.user_attrs["interrupted"]
        (again,) = [t for t in study.trials if t.user_attrs.get("requeued_from") == killed]
        assert again.params == dead.params and again.state.is_finished() and not again.user_attrs.get("interrupted")
        assert len({t.params["lr"] for t in counted(study)}) == 10  # none lost, none run twice

        # 5. a resumes: nothing left to do; its reports hold every tuner's trials
        resumed = a.start(10).wait()
        assert "10 of 10 trials done, 0 to run" in resumed, resumed[-3000:]
        leaderboard = (a.workdir / "leaderboard.csv").read_text().splitlines()
        assert leaderboard[0].endswith(",tuner") and len(leaderboard) == 1 + len(study.trials)
        assert any(str(b.workdir) in line for line in leaderboard)

        # the password never printed; the URL shown redacted
        everything = a.text() + b.text()
        assert postgres.PASSWORD not in everything
        assert local_tuning.redact(url) in everything and "***" in local_tuning.redact(url)
    finally:
        a.stop()
        b.stop()
