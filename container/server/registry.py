"""The multi-model endpoint's registry: which models are loaded, shared by every
gunicorn worker through files, so a load through one worker is visible to all.

One JSON file per model under settings.registry_dir (the file name is a hash of
the model's name: SageMaker's names are opaque strings, checked by
parsing.model_name), written atomically;
changes happen under an exclusive lock on a lock file, reads need none.
A model is first *reserved* (a second load of the name is a 409 from then on,
whichever worker answers) and *ready* once its loading worker succeeded; a
reservation whose worker died is void. Each entry has a generation, so a name
unloaded and loaded again is not mistaken for the model a worker still holds.
Nothing here loads a model or knows HTTP.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from contract.artifact import atomic_write_bytes
from server.errors import Overloaded, RequestError
from server.parsing import model_name

LOCK_WAIT_S = 10


class AlreadyLoaded(RequestError):
    status = 409


class ModelNotLoaded(RequestError):
    status = 404


@dataclass(frozen=True)
class Entry:
    name: str
    url: str
    generation: str
    ready: bool = False
    owner_pid: int = 0  # the worker loading it, while not ready
    cost: int = 0  # bytes against the memory budget, as measured by the worker that loaded it


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ModelRegistry:
    def __init__(self, directory):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def _path(self, name: str) -> Path:
        model_name(name)  # every operation's name passes here: 400 before it is hashed
        return self.directory / (hashlib.sha256(name.encode()).hexdigest() + ".json")

    @contextmanager
    def _locked(self):
        with open(self.directory / ".lock", "a+b") as lock:
            # Held for a few file operations; a worker that dies holding it releases it. A
            # waiter still gives up after LOCK_WAIT_S rather than wait without a bound.
            deadline = time.monotonic() + LOCK_WAIT_S
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise Overloaded("the model registry is busy; try again") from None
                    time.sleep(0.005)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self, path: Path) -> Entry | None:
        try:
            entry = Entry(**json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        if not entry.ready and not _alive(entry.owner_pid):
            return None  # its loader died mid-load
        return entry

    def _write(self, entry: Entry) -> None:
        atomic_write_bytes(self._path(entry.name), json.dumps(asdict(entry)).encode())

    def reserve(self, name: str, url: str) -> Entry:
        """The name is this worker's to load; AlreadyLoaded if loaded or being loaded."""
        with self._locked():
            if self._read(self._path(name)) is not None:
                raise AlreadyLoaded(f"model {name!r} is already loaded")
            entry = Entry(name, url, uuid.uuid4().hex, ready=False, owner_pid=os.getpid())
            self._write(entry)
            return entry

    def commit(self, entry: Entry, cost: int = 0) -> Entry:
        ready = Entry(entry.name, entry.url, entry.generation, ready=True, cost=cost)
        with self._locked():
            self._write(ready)
        return ready

    def remove(self, name: str, generation: str | None = None) -> Entry:
        """Unload `name` (only that generation, when given); ModelNotLoaded if it is not there."""
        with self._locked():
            path = self._path(name)
            entry = self._read(path)
            if (
                entry is None
                or (generation is None and not entry.ready)
                or (generation is not None and entry.generation != generation)
            ):
                raise ModelNotLoaded(f"model {name!r} is not loaded")
            path.unlink()
            return entry

    def get(self, name: str) -> Entry:
        """The ready entry of `name`; ModelNotLoaded if none."""
        entry = self._read(self._path(name))
        if entry is None or not entry.ready:
            raise ModelNotLoaded(f"model {name!r} is not loaded")
        return entry

    def ready(self) -> list[Entry]:
        """Every loaded model, by name."""
        entries = (self._read(path) for path in self.directory.glob("*.json"))
        return sorted((entry for entry in entries if entry and entry.ready), key=lambda entry: entry.name)
