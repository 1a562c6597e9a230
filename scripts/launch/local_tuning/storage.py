"""Where a study lives: the work directory's SQLite file (the default), or a shared database that several
tuners, on one machine or many, work on together (PostgreSQL).

A shared study stays correct with any number of tuners because every change of a trial's state (ask,
tell, re-queue) happens under one lock per study across all of them (ClaimLock: a PostgreSQL advisory
lock, or a file lock beside a SQLite file), and because each tuner proves that its running trials are
alive by Optuna's heartbeat (Heartbeats: a row per trial updated every `interval` seconds by the
database's clock). A RUNNING trial whose heartbeat is older than the grace period belongs to a tuner
that died; any tuner then fails it and re-queues its parameters (study._requeue). A trial that never
got a heartbeat is given one when first seen (adopted), so it too goes stale if nobody keeps it alive.

URLs are SQLAlchemy's, as Optuna takes them:

    sqlite:////abs/path/study.db
    postgresql+psycopg://tuner@db.example.org:5432/tuning     (the password from PGPASSWORD or ~/.pgpass)

A password written in the URL is never printed (scripts/storage_url.py's redact); error messages are
scrubbed of it too.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
from optuna.trial import TrialState

from storage_url import redact, scrub

from .errors import TuningError

if TYPE_CHECKING:
    from sqlalchemy import Connection

SCHEMES = ("sqlite", "postgresql")  # the dialects a ClaimLock exists for
HEARTBEAT_INTERVAL_S = 10  # each tuner records its running trials' heartbeats this often
GRACE_PERIOD_S = 60  # a RUNNING trial whose heartbeat is older than this is taken as dead
LOCK_TIMEOUT_S = 60  # the longest a tuner waits for another one's claim (held for milliseconds)
CONNECT_TIMEOUT_S = 20  # a database that does not answer fails the run within OPEN_ATTEMPTS times this
OPEN_ATTEMPTS = 3


def dialect(url: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        name = make_url(url).get_backend_name()
    except (ArgumentError, ValueError):
        raise TuningError(
            f"storage {redact(url)!r} is not a database URL (e.g. postgresql+psycopg://user@host/db)"
        ) from None
    if name not in SCHEMES:
        raise TuningError(f"storage {redact(url)}: only {' and '.join(SCHEMES)} are supported, not {name}")
    return name


def open_storage(url: str, heartbeat_interval: int, grace_period: int) -> optuna.storages.RDBStorage:
    """Optuna's RDBStorage with heartbeats on; a database that cannot be reached is a TuningError saying
    why, without the password."""
    kind = dialect(url)
    if grace_period <= heartbeat_interval:
        raise TuningError(
            f"the grace period ({grace_period} s) must be longer than the heartbeat ({heartbeat_interval} s)"
        )
    connect_args: dict = {"timeout": 60} if kind == "sqlite" else {"connect_timeout": CONNECT_TIMEOUT_S}
    engine_kwargs: dict[str, object] = {"connect_args": connect_args}
    if kind == "postgresql":
        engine_kwargs["pool_pre_ping"] = True  # a connection the server dropped is replaced, not failed on
    for attempt in range(OPEN_ATTEMPTS):
        try:
            with optuna_quiet():
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period,
                )
        except ImportError as exc:
            raise TuningError(
                f"storage {redact(url)}: its driver is not installed ({exc.name}); see container/requirements-train.txt"
            ) from None
        except Exception as exc:
            # two tuners making a fresh database's tables at once: one of them fails, and the next try finds
            # them; a server that cannot be reached or refuses the login (OperationalError) is said at once
            from sqlalchemy.exc import OperationalError

            if attempt + 1 < OPEN_ATTEMPTS and not isinstance(exc, OperationalError):
                time.sleep(2)
                continue
            message = scrub(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, url)
            raise TuningError(f"storage {redact(url)} cannot be opened: {message[:300]}") from None
    raise AssertionError("unreachable")


@contextlib.contextmanager
def optuna_quiet() -> Iterator[None]:
    """Optuna's warnings that heartbeats are experimental and meant for optimize(): we run them ourselves."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        yield


class ClaimLock:
    """One study's lock across tuners and, with its thread lock, across a tuner's threads. Held while a
    tuner counts the trials and asks for one, tells an outcome, or re-queues a dead tuner's trial: so no
    two tuners run past n_trials, or both re-queue the same trial, or tell a trial another just failed."""

    def __init__(self, storage: optuna.storages.RDBStorage, url: str, study_name: str):
        self.threads = threading.RLock()
        self.url, self.kind = url, dialect(url)
        key = hashlib.sha256(f"byoc-tuning:{study_name}".encode()).digest()
        self.key = int.from_bytes(key[:8], "big", signed=True)  # PostgreSQL's bigint advisory lock key
        self.engine = storage.engine
        self.connection: Connection | None = None  # PostgreSQL: one per tuner; the lock goes when it closes
        self.file = None
        if self.kind == "sqlite":
            database = storage.engine.url.database
            if not database or database == ":memory:":
                raise TuningError("a SQLite storage must be a file (sqlite:////path/to/study.db)")
            self.file = open(f"{database}.lock", "w")

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        with self.threads:
            if self.file is not None:
                fcntl.flock(self.file, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(self.file, fcntl.LOCK_UN)
                return
            from sqlalchemy import text
            from sqlalchemy.exc import DBAPIError

            connection = self._locked()
            try:
                yield
            finally:
                try:
                    connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self.key})
                except DBAPIError as exc:
                    # the session went while the lock was held, and the server released the lock with it
                    if not exc.connection_invalidated:
                        raise

    def _locked(self):
        """The lock connection, holding the lock. A connection the server dropped since the last claim
        (a restart, an idle timeout, a failover) took its lock with it: it is replaced once, not failed on."""
        from sqlalchemy import text
        from sqlalchemy.exc import DBAPIError

        for attempt in range(2):
            connection = self._connection()
            try:
                connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": self.key})
                return connection
            except DBAPIError as exc:
                if attempt or not exc.connection_invalidated:
                    raise
        raise AssertionError("unreachable")

    def _connection(self):
        from sqlalchemy import text

        if self.connection is None or self.connection.closed or self.connection.invalidated:
            connection = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            # bounded: a tuner that cannot get the lock in this long fails, it does not hang
            connection.execute(text(f"SET lock_timeout = '{LOCK_TIMEOUT_S}s'"))
            self.connection = connection
        return self.connection

    def close(self) -> None:
        with self.threads:
            if self.connection is not None:
                with contextlib.suppress(Exception):
                    self.connection.close()
                self.connection = None
            if self.file is not None:
                self.file.close()
                self.file = None


class Heartbeats:
    """A thread that records the heartbeat of this tuner's running trials every `interval` seconds."""

    def __init__(self, storage: optuna.storages.RDBStorage, interval: int, log: Callable[[str], None], url: str):
        self.storage, self.interval, self.log, self.url = storage, interval, log, url
        self.trials: set[int] = set()
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.failing = False
        self.thread = threading.Thread(target=self._beat, name="heartbeats", daemon=True)
        self.thread.start()

    def add(self, trial_id: int) -> None:
        """A trial this tuner just asked for: its first heartbeat now (the caller holds the claim lock)."""
        self.storage.record_heartbeat(trial_id)
        with self.lock:
            self.trials.add(trial_id)

    def running(self) -> set[int]:
        with self.lock:
            return set(self.trials)

    def remove(self, trial_id: int) -> None:
        with self.lock:
            self.trials.discard(trial_id)

    def _beat(self) -> None:
        while not self.stopped.wait(self.interval):
            with self.lock:
                trials = sorted(self.trials)
            for trial_id in trials:
                try:
                    self.storage.record_heartbeat(trial_id)
                    if self.failing:
                        self.failing = False
                        self.log("heartbeats: recorded again")
                except Exception as exc:  # the database away for a moment: said once, tried again
                    if not self.failing:
                        self.failing = True
                        self.log(
                            f"heartbeats: cannot record ({scrub(str(exc).splitlines()[0], self.url)[:200]}); "
                            "after the grace period other tuners may take these trials over"
                        )

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=self.interval + 5)


def heartbeat_ages(storage: optuna.storages.RDBStorage, study_id: int) -> dict[int, float | None]:
    """Each RUNNING trial's seconds since its last heartbeat, by the database's clock (None: never had
    one). Optuna's own _get_stale_trial_ids skips trials without a heartbeat; we need those too."""
    import sqlalchemy
    from optuna.storages._rdb import models
    from sqlalchemy import orm

    session = storage.scoped_session()
    try:
        now = session.execute(sqlalchemy.func.now()).scalar()
        assert now is not None
        now = now.replace(tzinfo=None)  # as Optuna does: PostgreSQL's now() is timezone-aware
        running = (
            session.query(models.TrialModel)
            .options(orm.selectinload(models.TrialModel.heartbeats))
            .filter(models.TrialModel.state == TrialState.RUNNING)
            .filter(models.TrialModel.study_id == study_id)
            .all()
        )
        return {
            int(trial.trial_id): (now - trial.heartbeats[0].heartbeat).total_seconds() if trial.heartbeats else None
            for trial in running
        }
    finally:
        session.rollback()
        session.close()


def default_url(workdir: Path) -> str:
    return f"sqlite:///{workdir / 'study.db'}"
