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

Where from: a model's url must resolve (links followed) to a directory inside
settings.multi_model_root (SAGEMAKER_MULTI_MODEL_ROOT, SageMaker's /opt/ml/models)
holding a model; every other url gets one and the same 400, which tells nothing
of what exists. Each load's code/ gets a namespace of its own (user_code.ModelCode).

Memory: a model counts twice (weights and a forward pass's activations) the
larger of the bytes of its directory's files and the bytes of the tensors its
model_fn returned (measured once loaded, then kept in the registry for the other
workers), against SAGEMAKER_MODEL_MEMORY_BUDGET_MB; above it, the least
recently used models not serving a request leave this worker's memory (they
stay loaded for the endpoint and come back on their next request). A model
being loaded holds only its own lock: requests to the others go on.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import logging
import os
import stat
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from contract.spec.artifact import CODE_DIR, CONFIG_FILE
from server.errors import Overloaded, RequestError
from server.metrics import MODEL_EVICTIONS, MODEL_LOAD_SECONDS, MODELS_IN_MEMORY
from server.registry import Entry, ModelNotLoaded, ModelRegistry
from server.settings import Settings

if TYPE_CHECKING:  # imported when a model loads (torch with it)
    from server.service import InferenceService
from server.user_code import ENTRY_MODULE, entry_point

log = logging.getLogger(__name__)


# A request for a model that another thread of this worker is loading waits at most this
# long (SageMaker gives an invocation 60 s), then gets a 503 it may retry.
LOAD_WAIT_S = 30


class InsufficientMemory(RequestError):
    status = 507


@dataclass
class _Resident:
    entry: Entry
    cost: int
    service: InferenceService | None = None
    users: int = 0
    retired: bool = False  # out of this worker's memory once its last request ends
    lock: threading.Lock = field(default_factory=threading.Lock)  # held while loading


def files_bytes(folder) -> int:
    """The bytes of the regular files under `folder` (links not followed)."""
    total = 0
    for parent, _, names in os.walk(folder):
        for name in names:
            with contextlib.suppress(OSError):
                info = os.lstat(os.path.join(parent, name))
                total += info.st_size if stat.S_ISREG(info.st_mode) else 0
    return total


def tensor_bytes(model, depth: int = 0) -> int:
    """The bytes of the tensors model_fn returned: a module's parameters and buffers,
    tensors, and those inside a dict, list or tuple of them (two levels)."""
    import torch

    if isinstance(model, torch.nn.Module):
        return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    if isinstance(model, torch.Tensor):
        return model.numel() * model.element_size()
    if depth < 2 and isinstance(model, (dict, list, tuple)):
        items = model.values() if isinstance(model, dict) else model
        return sum(tensor_bytes(item, depth + 1) for item in items)
    return 0


def model_cost(url, model=None) -> int:
    """What a model counts against the budget: before loading from its files, once loaded its tensors too."""
    return max(1, 2 * files_bytes(url), 2 * tensor_bytes(model))


def check_model_dir(url: str, root: str) -> Path:
    """The model directory `url` names, resolved; RequestError unless it lies in `root` and holds a model."""
    refusal = RequestError(
        f"model url: expected a directory under {root} holding {CONFIG_FILE} or {CODE_DIR}/{ENTRY_MODULE}.py"
    )
    try:
        path = Path(url).resolve(strict=True)
        inside = Path(url).is_absolute() and path.is_relative_to(Path(root).resolve(strict=True))
        holds_model = path.is_dir() and ((path / CONFIG_FILE).is_file() or entry_point(path).is_file())
    except (OSError, ValueError, RuntimeError):  # missing, a NUL byte, a name too long, a link loop
        raise refusal from None
    if not (inside and holds_model):
        raise refusal
    return path


class WorkerModels:
    def __init__(self, settings: Settings, registry: ModelRegistry | None = None):
        self.settings = settings
        self.registry = registry or ModelRegistry(settings.registry_dir)
        self.budget = settings.model_memory_budget_bytes
        self._lock = threading.Lock()  # guards _resident; never held while loading
        self._resident: OrderedDict[str, _Resident] = OrderedDict()  # least recently used first
        self._starts = itertools.count()

    # --- the endpoint's operations -------------------------------------------
    def load(self, name: str, url: str) -> Entry:
        entry = self.registry.reserve(name, url)  # 409 first, whatever the url holds
        try:
            cost = model_cost(check_model_dir(url, self.settings.multi_model_root))
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
            return self.registry.commit(entry, resident.cost)
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
        resident = self._admit(entry, entry.cost or model_cost(entry.url))
        try:
            # only this model's lock: others are served meanwhile; and no request waits
            # without a bound for another thread's load of it
            if not resident.lock.acquire(timeout=LOAD_WAIT_S):
                raise Overloaded(f"model {name!r} is still loading in this worker; try again")
            try:
                if resident.service is None:
                    self._start(resident)
            finally:
                resident.lock.release()
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
        # checked again: the url's links may point elsewhere now. The code's tag is new for every
        # start: a copy being evicted may still serve a request while this one imports its own.
        model_dir = check_model_dir(resident.entry.url, self.settings.multi_model_root)
        tag = f"{resident.entry.generation}_{next(self._starts)}"
        service = InferenceService(model_dir, self.settings, code_tag=tag)
        try:
            service.start_in_worker()
            cost = model_cost(model_dir, service.model)
            if cost > self.budget:
                raise InsufficientMemory(
                    f"model {resident.entry.name!r} takes about {cost >> 20} MB loaded, more than the "
                    f"{self.budget >> 20} MB budget (SAGEMAKER_MODEL_MEMORY_BUDGET_MB)"
                )
        except BaseException:
            service.close()
            raise
        with self._lock:
            resident.cost = max(resident.cost, cost)
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
