"""How a trial's trainer runs: a pre-started local process, or the training image."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

from optuna.trial import FrozenTrial

import container_engine
import container_path
from contract.spec import hyperparameters, paths

from .errors import TuningError
from .slots import Slot
from .tracking import on_loopback

RUNNERS = ("process", "container")
STOP_GRACE_S = 15  # SIGTERM, then this long for the trainer's checkpoint, then SIGKILL
# trainer/job.py's main, imported ahead (what container/toolkit_entry_point.py runs)
WARM_TRIAL = Path(__file__).resolve().parent / "warm_trial.py"
CACHE_HP, CONTAINER_CACHE = "feature-cache", "/opt/feature-cache"  # the trainer's feature cache folder


# Run in the child between fork and the real program: die with the tuner's thread
# (SIGKILL of the tuner included), so no trial outlives a killed study.
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))\n"  # PR_SET_PDEATHSIG
    "os.getppid() == int(sys.argv[1]) or sys.exit(1)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def _die_with_parent(cmd: list[str]) -> list[str]:
    if not sys.platform.startswith("linux"):
        return cmd
    return [sys.executable, "-S", "-c", _DIE_WITH_PARENT, str(os.getpid()), *cmd]


class ProcessRunner:
    """`python container/toolkit_entry_point.py --name value ...` with SAGEMAKER_BASE_DIR=<trial>/opt_ml."""

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
        env.update(
            {
                "PYTHONUNBUFFERED": "1",
                "OMP_NUM_THREADS": str(slot.threads),
                "MKL_NUM_THREADS": str(slot.threads),
                # warm_trial.py imports the trainer from this checkout's container/
                "PYTHONPATH": os.pathsep.join(
                    p for p in (str(container_path.CONTAINER), os.environ.get("PYTHONPATH")) if p
                ),
            }
        )
        if slot.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot.gpu
        return env

    def spawn(self, slot: Slot) -> subprocess.Popen:
        # the caller's working directory: relative paths (feature-cache, pretrained) mean what they said
        return subprocess.Popen(
            _die_with_parent([sys.executable, str(WARM_TRIAL)]),
            env=self.slot_env(slot),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )

    def start(self, trial_dir: Path, hps: dict, slot: Slot, name: str, env: dict | None = None) -> subprocess.Popen:
        opt_ml = trial_dir / "opt_ml"
        env = {
            **(env or {}),
            paths.BASE_DIR_ENV: str(opt_ml),
            "TRAINER_SCRATCH": str(trial_dir / "scratch"),
            "SM_CHANNEL_TRAINING": str(self.channel),
            "MASTER_PORT": str(29500 + (os.getpid() % 200) * 10 + slot.index),
        }
        argv = hyperparameters.to_argv(hyperparameters.to_sagemaker(hps))
        with self.lock:
            proc = self.spares.pop(slot.index, None)
            self.to_start -= 1
            if proc is None or proc.poll() is not None:
                proc = self.spawn(slot)
            if self.to_start > 0:
                self.spares[slot.index] = self.spawn(slot)
        stdin = proc.stdin
        assert stdin is not None, "spares are spawned with stdin=PIPE"
        try:
            stdin.write(json.dumps({"argv": argv, "env": env}) + "\n")
            stdin.close()
        except OSError:
            pass  # it died while importing: its output says why, and its exit status fails the trial
        return proc

    def close(self) -> None:
        """Let unused spares go (end of input: they exit at once)."""
        with self.lock:
            spares, self.spares, self.to_start = list(self.spares.values()), {}, 0
        for proc in spares:
            try:
                if proc.stdin is not None:
                    proc.stdin.close()
                proc.communicate(timeout=STOP_GRACE_S)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()

    def request_stop(self, proc: subprocess.Popen, name: str) -> None:
        """SIGTERM (the trainer checkpoints and exits), SIGKILL after a grace period; returns at once."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)

            def kill_if_running() -> None:
                if proc.poll() is None:
                    proc.kill()

            timer = threading.Timer(STOP_GRACE_S, kill_if_running)
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
    """`ENGINE run --rm --mount trial/opt_ml at /opt/ml --mount data at /opt/ml/input/data/training IMAGE train`."""

    kind = "container"

    def __init__(self, data: Path, image: str, engine: container_engine.Engine | None):
        self.data, self.image = data, image
        engine = engine or engine_from_script()
        self.cli, self.env = engine.cli, engine.env
        found = subprocess.run([self.cli, "image", "inspect", image], env=self.env, capture_output=True)
        if found.returncode != 0:
            raise TuningError(f"image {image} not found: build it with `bash scripts/build_image.sh train`")

    def start(self, trial_dir: Path, hps: dict, slot: Slot, name: str, env: dict | None = None) -> subprocess.Popen:
        """`env`: the trial's own settings (MLflow's), given with -e; a server on the host's loopback
        is reached on the host's network."""
        opt_ml = trial_dir / "opt_ml"
        env = env or {}
        mounts = []
        if hps.get(CACHE_HP):  # one feature cache for all trials: the host folder, mounted
            host = Path(str(hps[CACHE_HP])).resolve()
            host.mkdir(parents=True, exist_ok=True)
            mounts += container_engine.bind(host, CONTAINER_CACHE)
            hps = {**hps, CACHE_HP: CONTAINER_CACHE}
        paths.write_input_config(opt_ml, hyperparameters.to_sagemaker(hps))
        target = container_engine.channel_mount(self.data, paths.channel(paths.TRAINING_CHANNEL))
        cmd = [
            shutil.which(self.cli) or self.cli,
            "run",
            "--rm",
            "--name",
            name,
            *container_engine.label_flags(),
            *container_engine.bind(opt_ml, paths.DEFAULT_BASE_DIR),
            *target,
            *mounts,
            "-e",
            f"OMP_NUM_THREADS={slot.threads}",
            "-e",
            f"MKL_NUM_THREADS={slot.threads}",
            *[item for key, value in env.items() for item in ("-e", f"{key}={value}")],
            *(["--network", "host"] if on_loopback(env) else []),
        ]
        if slot.gpu is not None:
            cmd += container_engine.gpu_flags(self.cli, slot.gpu)
        cmd += [self.image, "train"]
        return subprocess.Popen(
            _die_with_parent(cmd),
            env=self.env,
            cwd=trial_dir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )

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
