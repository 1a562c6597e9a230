"""Put on the serving processes' PYTHONPATH by the GPU proof (never in an image): it watches, from
inside gunicorn's master, whether CUDA was ever initialised there.

A master that initialised CUDA forks workers in which CUDA no longer works, and torch's own answer
to "was it?" (torch.cuda.is_initialized()) can only be asked inside that process. So every Python
process started with this folder on its path runs a daemon thread that, once gunicorn's arbiter is
imported (only the master imports it; a worker is forked from it without this thread), writes
{pid, torch imported, initialised now, ever initialised} to $GPU_PROOF_MASTER_PROBE every 0.2 s.
It imports nothing itself: torch is read from sys.modules, where the master's model loading put it.
"""

import json
import os
import sys
import threading
import time

PROBE_ENV = "GPU_PROOF_MASTER_PROBE"
INTERVAL_S = 0.2
GIVE_UP_S = 600  # a process that never becomes gunicorn's master (serve before its exec, a probe child)


def _state(ever: bool) -> dict:
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    now = bool(cuda.is_initialized()) if cuda is not None else False
    return {"pid": os.getpid(), "torch_imported": torch is not None, "cuda_initialized": now, "ever": ever or now}


def _watch(path: str) -> None:
    started = time.monotonic()
    while "gunicorn.arbiter" not in sys.modules:
        if time.monotonic() - started > GIVE_UP_S:
            return
        time.sleep(INTERVAL_S)
    ever = False
    while True:
        state = _state(ever)
        ever = state["ever"]
        partial = f"{path}.{os.getpid()}.tmp"
        with open(partial, "w") as f:
            json.dump(state, f)
        os.replace(partial, path)
        time.sleep(INTERVAL_S)


def _chain() -> None:
    """Run the sitecustomize this one shadows, if the interpreter has one (a venv's may set paths up)."""
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        folder = os.path.abspath(entry or ".")
        candidate = os.path.join(folder, "sitecustomize.py")
        if folder != here and os.path.isfile(candidate):
            spec = importlib.util.spec_from_file_location("_shadowed_sitecustomize", candidate)
            if spec is not None and spec.loader is not None:
                spec.loader.exec_module(importlib.util.module_from_spec(spec))
            return


if os.environ.get(PROBE_ENV):
    threading.Thread(target=_watch, args=(os.environ[PROBE_ENV],), name="gpu-proof-probe", daemon=True).start()
_chain()
