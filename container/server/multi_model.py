"""A multi-model endpoint's models in one gunicorn worker (SAGEMAKER_MULTI_MODEL=true).

The registry (registry.py) says which models are loaded, for every worker;
each worker holds in memory those it served recently, each an InferenceService
with its own batcher:

    load(name, url)     POST /models: reserve the name (409 if taken), load it
                        here, then mark it ready for all workers; 507 when it
                        cannot fit the memory budget
    using(name)         a request's model: loaded here on first use (lazily)
                        when another worker loaded it; 404 if not loaded
    unload(name)        DELETE /models/{name}: out of the registry; workers
                        drop their copies on their next look at it

Memory: each model counts settings.model_memory_bytes (its weights twice)
against SAGEMAKER_MODEL_MEMORY_BUDGET_MB; above it, the least recently used
models not serving a request leave this worker's memory (they stay loaded
for the endpoint and come back on their next request). A model being loaded
holds only its own lock: requests to the others go on.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from contract.spec.artifact import CODE_DIR, CONFIG_FILE
from server.errors import RequestError
from server.metrics import MODEL_EVICTIONS, MODEL_LOAD_SECONDS, MODELS_IN_MEMORY
from server.registry import Entry, ModelNotLoaded, ModelRegistry
from server.settings import Settings, model_memory_bytes

log = logging.getLogger(__name__)


class InsufficientMemory(RequestError):
    status = 507


@dataclass
class _Resident:
    entry: Entry
    cost: int
    service: object = None
    users: int = 0
    retired: bool = False  # out of this worker's memory once its last request ends
    lock: threading.Lock = field(default_factory=threading.Lock)  # held while loading


def model_cost(url: str) -> int:
    return max(1, model_memory_bytes(url))


def check_model_dir(url) -> None:
    path = Path(url)
    if not path.is_dir():
        raise RequestError(f"model url {str(url)!r} is not a directory")
    if not (path / CONFIG_FILE).is_file() and not (path / CODE_DIR / "inference.py").is_file():
        raise RequestError(f"model url {str(url)!r} holds neither {CONFIG_FILE} nor {CODE_DIR}/inference.py")


class WorkerModels:
    def __init__(self, settings: Settings, registry: ModelRegistry | None = None):
        self.settings = settings
        self.registry = registry or ModelRegistry(settings.registry_dir)
        self.budget = settings.model_memory_budget_bytes
        self._lock = threading.Lock()  # guards _resident; never held while loading
        self._resident: OrderedDict[str, _Resident] = OrderedDict()  # least recently used first

    # --- the endpoint's operations -------------------------------------------
    def load(self, name: str, url: str) -> Entry:
        entry = self.registry.reserve(name, url)  # 409 first, whatever the url holds
        try:
            check_model_dir(url)
            cost = model_cost(url)
            if cost > self.budget:
                raise InsufficientMemory(
                    f"model {name!r} needs about {cost >> 20} MB, more than the "
                    f"{self.budget >> 20} MB budget (SAGEMAKER_MODEL_MEMORY_BUDGET_MB)"
                )
            resident = self._admit(entry, cost)
            try:
                with resident.lock:
                    self._start(resident)
            finally:
                self._done_with(resident)
            return self.registry.commit(entry)
        except BaseException:
            self._drop(name, entry.generation)
            self.registry.remove(name, entry.generation)
            raise

    def unload(self, name: str) -> Entry:
        entry = self.registry.remove(name)
        self._drop(name, entry.generation)
        return entry

    @contextmanager
    def using(self, name: str):
        """The model's InferenceService, held in memory while the block runs."""
        try:
            entry = self.registry.get(name)
        except ModelNotLoaded:
            self._drop(name, None)  # unloaded through another worker
            raise
        resident = self._admit(entry, model_cost(entry.url))
        try:
            with resident.lock:  # only this model's: others are served meanwhile
                if resident.service is None:
                    self._start(resident)
            yield resident.service
        finally:
            self._done_with(resident)

    def _done_with(self, resident: _Resident) -> None:
        with self._lock:
            resident.users -= 1
            if resident.retired and resident.users == 0:
                self._close(resident)
        self._evict_over_budget()

    def in_memory(self) -> list[str]:
        with self._lock:
            return [name for name, resident in self._resident.items() if resident.service is not None]

    # --- this worker's memory ------------------------------------------------
    def _admit(self, entry: Entry, cost: int) -> _Resident:
        """This worker's slot for `entry`, marked in use and most recently used."""
        with self._lock:
            resident = self._resident.get(entry.name)
            if resident is not None and resident.entry.generation != entry.generation:
                self._release(self._resident.pop(entry.name))  # unloaded and loaded again elsewhere
                resident = None
            if resident is None:
                self._sweep_unloaded()
                busy = sum(other.cost for other in self._resident.values() if other.users)
                if busy + cost > self.budget:
                    raise InsufficientMemory(
                        f"model {entry.name!r} does not fit beside the models serving "
                        "requests now (SAGEMAKER_MODEL_MEMORY_BUDGET_MB)"
                    )
                resident = self._resident[entry.name] = _Resident(entry, cost)
            self._resident.move_to_end(entry.name)
            resident.users += 1
        self._evict_over_budget()
        return resident

    def _start(self, resident: _Resident) -> None:
        from server.service import InferenceService

        started = time.monotonic()
        service = InferenceService(
            resident.entry.url, self.settings, module_name=f"inference_{resident.entry.generation}"
        )
        service.start_in_worker()
        resident.service = service
        MODEL_LOAD_SECONDS.observe(time.monotonic() - started)
        MODELS_IN_MEMORY.inc()
        log.info(
            "worker %d loaded model %r from %s in %.2f s",
            os.getpid(),
            resident.entry.name,
            resident.entry.url,
            time.monotonic() - started,
        )

    def _evict_over_budget(self) -> None:
        with self._lock:
            total = sum(resident.cost for resident in self._resident.values())
            for name in list(self._resident):
                if total <= self.budget:
                    break
                resident = self._resident[name]
                if resident.users == 0:
                    total -= resident.cost
                    self._release(self._resident.pop(name))
                    MODEL_EVICTIONS.inc()
                    log.info("worker %d unloaded model %r (memory budget)", os.getpid(), name)

    def _sweep_unloaded(self) -> None:
        """With _lock held: let go of models unloaded through other workers."""
        for name, resident in list(self._resident.items()):
            try:
                current = self.registry.get(name).generation
            except ModelNotLoaded:
                current = None
            if current != resident.entry.generation and not resident.users:  # users: a POST still loading it
                self._release(self._resident.pop(name))

    def _drop(self, name: str, generation: str | None) -> None:
        """Out of this worker's memory (any generation when None)."""
        with self._lock:
            resident = self._resident.get(name)
            if resident is not None and generation in (None, resident.entry.generation):
                self._release(self._resident.pop(name))

    def _release(self, resident: _Resident) -> None:
        """With _lock held: closed now, or when the requests using it end."""
        resident.retired = True
        if resident.users == 0:
            self._close(resident)

    @staticmethod
    def _close(resident: _Resident) -> None:
        if resident.service is not None:
            resident.service.close()
            resident.service = None
            MODELS_IN_MEMORY.dec()
            gc.collect()
