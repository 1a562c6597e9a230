"""Where things live in /opt/ml, how the job fails, how SIGTERM and DDP work."""
from __future__ import annotations

import gc
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import torch
import torch.distributed as dist

from contract.spec import paths as spec_paths


# The sagemaker-training toolkit replaces /opt/ml/output/failure with its own
# multi-line report when the script exits non-zero; the image's entry point
# (trainer/entry.py) puts our one-line reason back from this copy.
def reason_copy() -> Path:
    # read when needed, not at import: a pre-started trial process gets its environment late
    return Path(os.environ.get("TRAINER_REASON_FILE", "/tmp/trainer-failure-reason"))


@dataclass
class Paths:
    root: Path

    @classmethod
    def from_env(cls) -> Paths:
        # SAGEMAKER_BASE_DIR lets the trainer run outside a container on a local tree
        return cls(spec_paths.base_dir())

    @property
    def model(self) -> Path:
        return Path(os.environ.get("SM_MODEL_DIR", self.root / spec_paths.MODEL_DIR))

    @property
    def output(self) -> Path:
        return self.root / spec_paths.OUTPUT_DIR

    @property
    def output_data(self) -> Path:
        return Path(os.environ.get("SM_OUTPUT_DATA_DIR", self.root / spec_paths.OUTPUT_DATA_DIR))

    @property
    def tensorboard(self) -> Path:
        return self.output / "tensorboard"

    @property
    def checkpoints(self) -> Path:
        return Path(os.environ.get("SM_CHECKPOINT_DIR", self.root / spec_paths.CHECKPOINTS_DIR))

    @property
    def scratch(self) -> Path:
        return Path(os.environ.get("TRAINER_SCRATCH", "/tmp/trainer-scratch"))


class TrainingFailure(RuntimeError):
    """A failure with a one-line reason for /opt/ml/output/failure."""


def write_failure(paths: Paths, reason: str) -> None:
    line = " ".join(str(reason).split())[:1000]  # one line; SageMaker shows 1 KB
    for path in (paths.root / spec_paths.FAILURE_FILE, reason_copy()):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(line + "\n")
        except OSError:
            pass
    print(f"FAILED: {line}", file=sys.stderr, flush=True)


# Fault injection for the resume tests: rank 0 sends itself SIGTERM after this
# optimizer step, through the same handler a real StopTrainingJob reaches.
SIGTERM_AT_STEP_ENV = "TRAINER_SIGTERM_AT_STEP"


class StopFlag:
    """Set by SIGTERM (StopTrainingJob, spot interruption); SIGKILL follows 30 s later."""

    def __init__(self):
        self.requested = False
        self.received_at: float | None = None  # time.monotonic() of the signal
        self.sigterm_at_step = int(os.environ.get(SIGTERM_AT_STEP_ENV, "0")) or None
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True
        self.received_at = time.monotonic()
        print("SIGTERM received: saving a checkpoint after this step", flush=True)

    def step_done(self, global_step: int, is_main: bool) -> None:
        if is_main and global_step == self.sigterm_at_step:
            os.kill(os.getpid(), signal.SIGTERM)

    def seconds_since_signal(self) -> float:
        return time.monotonic() - self.received_at if self.received_at is not None else 0.0

    def agreed(self, device) -> bool:
        """Under DDP every rank must stop at the same step, or collectives hang."""
        if not dist.is_initialized():
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def ignore_sigterm_in_worker(worker_id: int) -> None:
    """Loader workers share the process group; let the main process stop them."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def hosts() -> tuple[list[str], str]:
    all_hosts = json.loads(os.environ.get("SM_HOSTS", '["algo-1"]'))
    return all_hosts, os.environ.get("SM_CURRENT_HOST", all_hosts[0])


# What torchrun starts in each process. Not sys.argv[0]: a process that called
# main() some other way (the local tuner's pre-started trial process) would
# have torchrun start that program instead.
ENTRY_SCRIPT = Path(__file__).resolve().parent.parent / "train.py"


def under_torchrun() -> bool:
    """This process is one of torchrun's workers (torchrun sets LOCAL_RANK, RANK and WORLD_SIZE)."""
    return "LOCAL_RANK" in os.environ


def relaunch_under_torchrun(processes_per_host: int, argv: list[str]) -> None:
    """Re-exec the trainer under torchrun when more than one process is wanted.

    One process per GPU (or `processes-per-host`), one node per SageMaker host,
    rendezvous at the first host. Returns when a single process suffices.
    """
    if under_torchrun():
        return
    all_hosts, current = hosts()
    gpus = int(os.environ.get("SM_NUM_GPUS", torch.cuda.device_count()))
    nproc = processes_per_host or max(gpus, 1)
    if nproc == 1 and len(all_hosts) == 1:
        return
    master = all_hosts[0] if len(all_hosts) > 1 else "127.0.0.1"
    if len(all_hosts) > 1:
        # Talk over the interface SageMaker names (resourceconfig.json's
        # network_interface_name), as its own framework images do: gloo would
        # otherwise take the address the container's host name resolves to.
        # SDK v3's local mode names "ethwe", which its containers lack: then eth0, else gloo's choice.
        named = os.environ.get("SM_NETWORK_INTERFACE_NAME", "eth0")
        interface = next((name for name in (named, "eth0") if os.path.exists(f"/sys/class/net/{name}")), None)
        if interface:
            os.environ.setdefault("GLOO_SOCKET_IFNAME", interface)
            os.environ.setdefault("NCCL_SOCKET_IFNAME", interface)
    cmd = [sys.executable, "-m", "torch.distributed.run",
           f"--nnodes={len(all_hosts)}", f"--nproc-per-node={nproc}",
           f"--node-rank={all_hosts.index(current)}",
           f"--master-addr={master}", f"--master-port={os.environ.get('MASTER_PORT', '29500')}",
           str(ENTRY_SCRIPT), *argv]
    print(f"launching {nproc} process(es) per host on {len(all_hosts)} host(s): {' '.join(cmd)}", flush=True)
    os.execv(sys.executable, cmd)


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> tuple[Distributed, torch.device]:
    if not under_torchrun():
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return Distributed(), device
    local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    dist.init_process_group(backend=backend)
    return Distributed(dist.get_rank(), dist.get_world_size(), local_rank), device


def all_sum(values: list[float], device) -> list[float]:
    if not dist.is_initialized():
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def all_gather(value) -> list:
    """Every rank's `value` (picklable), by rank; [value] without DDP."""
    if not dist.is_initialized():
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def all_max(value: float, device) -> float:
    if not dist.is_initialized():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.item()


def wait_for_all_ranks() -> None:
    """Return once every rank got here: the master's files are written before any host leaves.

    A job may end when its first host exits (SageMaker local mode's compose
    stops the others then), so no host may leave while the master still writes
    the model, the report or a SIGTERM checkpoint.
    """
    if dist.is_initialized():
        dist.barrier()


def union_over_ranks(groups: dict[str, set[str]]) -> dict[str, set[str]]:
    """Every rank's {name: set of strings} merged, on every rank.

    A union, not a sum: DistributedSampler reshuffles each epoch, so one file
    can reach two ranks (and padding repeats files): a sum would count it twice.
    """
    if not dist.is_initialized():
        return groups
    merged: dict[str, set[str]] = {}
    for part in all_gather({name: sorted(values) for name, values in groups.items()}):
        for name, values in part.items():
            merged.setdefault(name, set()).update(values)
    return merged


def exit_process(status: int) -> NoReturn:
    """Leave with `status`: the trainer's last act, once main has closed what it wrote."""
    sys.stdout.flush()
    sys.stderr.flush()
    if under_torchrun():
        # A torchrun worker skips interpreter shutdown. Gloo's worker threads
        # outlive destroy_process_group (DDP's C++ reducer still holds the
        # group), and one that lets go of a collective's tensor after shutdown
        # has begun must take the GIL, which Python answers by ending the
        # thread: std::terminate, SIGABRT, and torchrun fails the whole job.
        # Seen in about 1 run in 6 on a loaded 2-core machine.
        logging.shutdown()
        os._exit(status)
    # Freezing the collector's view lets interpreter shutdown skip full passes
    # over the millions of objects torch (and torch._dynamo, which every
    # optimiser imports) has created: about 1 s of a feature-cached tuning
    # trial's 5 s. Finalisers still run.
    gc.freeze()
    sys.exit(status)
