"""DDP: one process per GPU (or `processes-per-host`) under torchrun, one node per SageMaker host.

How the trainer re-launches itself under torchrun, joins the process group,
and sums, gathers and merges values over the ranks (each a no-op without DDP).
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from contract.spec.paths import TOOLKIT_ENTRY_POINT


def hosts() -> tuple[list[str], str]:
    all_hosts = json.loads(os.environ.get("SM_HOSTS", '["algo-1"]'))
    return all_hosts, os.environ.get("SM_CURRENT_HOST", all_hosts[0])


# What torchrun starts in each process. Not sys.argv[0]: a process that called
# main() some other way (the local tuner's pre-started trial process) would
# have torchrun start that program instead.
ENTRY_SCRIPT = Path(__file__).resolve().parent.parent / TOOLKIT_ENTRY_POINT


def under_torchrun() -> bool:
    """This process is one of torchrun's workers (torchrun sets LOCAL_RANK, RANK and WORLD_SIZE)."""
    return "LOCAL_RANK" in os.environ


class LaunchError(RuntimeError):
    """This host cannot run the job as asked: a one-line reason for /opt/ml/output/failure."""


def check_devices(gpus: int, cuda_available: bool, processes_per_host: int, cpus: int | None = None) -> None:
    """Refuse to train on the CPU of a GPU host, more NCCL processes than GPUs (they would share one), and
    more CPU processes than cores: each loads torch and the model, and 500 were an OOM kill with no reason."""
    if gpus > 0 and not cuda_available:
        raise LaunchError(
            f"SM_NUM_GPUS={gpus} but CUDA is unavailable in the container (no NVIDIA driver or device visible): "
            "refusing to train on the CPU; run the image with the NVIDIA container runtime"
        )
    if gpus > 0 and processes_per_host > gpus:
        raise LaunchError(
            f"hyperparameter processes-per-host: {processes_per_host} processes on a host with {gpus} GPU(s); "
            "NCCL needs a GPU per process: at most the GPU count (0 = one per GPU)"
        )
    cpus = len(os.sched_getaffinity(0)) if cpus is None else cpus
    if gpus == 0 and processes_per_host > cpus:
        raise LaunchError(
            f"hyperparameter processes-per-host: {processes_per_host} processes on a host with {cpus} CPU core(s) "
            "and no GPU: at most one per core"
        )


def relaunch_under_torchrun(processes_per_host: int, argv: list[str]) -> None:
    """Re-exec the trainer under torchrun when more than one process is wanted.

    One process per GPU (or `processes-per-host`), one node per SageMaker host,
    rendezvous at the first host. Returns when a single process suffices.
    """
    if under_torchrun():
        return
    all_hosts, current = hosts()
    gpus = int(os.environ.get("SM_NUM_GPUS", torch.cuda.device_count()))
    check_devices(gpus, torch.cuda.is_available(), processes_per_host)
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
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nnodes={len(all_hosts)}",
        f"--nproc-per-node={nproc}",
        f"--node-rank={all_hosts.index(current)}",
        f"--master-addr={master}",
        f"--master-port={os.environ.get('MASTER_PORT', '29500')}",
        str(ENTRY_SCRIPT),
        *argv,
    ]
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


def init_distributed(timeout_s: int) -> tuple[Distributed, torch.device]:
    """Join the process group (under torchrun); every collective then fails after `timeout_s` instead of
    waiting for ever on a rank that stalled, died or took another path."""
    if not under_torchrun():
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return Distributed(), device
    local_rank = int(os.environ["LOCAL_RANK"])
    timeout = datetime.timedelta(seconds=timeout_s)
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        # a timed-out NCCL collective raises in the waiting call (a reason in the failure file) instead of
        # the watchdog aborting the process; our agreements read their result on the host at once anyway
        os.environ.setdefault("TORCH_NCCL_BLOCKING_WAIT", "1")
        dist.init_process_group(backend="nccl", timeout=timeout, device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group(backend="gloo", timeout=timeout)
    return Distributed(dist.get_rank(), dist.get_world_size(), local_rank), device


def timeout_reason(exc: BaseException, timeout_s: int) -> str | None:
    """A one-line reason when `exc` is a collective that timed out (gloo's and NCCL's wording); else None."""
    text = " ".join(str(exc).split())
    if not dist.is_initialized() or "timed out" not in text.lower() and "timeout" not in text.lower():
        return None
    return (
        f"a collective waited more than collective-timeout ({timeout_s} s) for the other ranks: one of them "
        f"stalled, failed or took another path ({type(exc).__name__}: {text[:300]})"
    )


def peer_lost(exc: BaseException) -> bool:
    """`exc` is gloo's answer to another rank's exit: a consequence, whose reason that rank writes."""
    return dist.is_initialized() and any(words in str(exc) for words in ("closed by peer", "reset by peer"))


def broadcast_from_main(value):
    """Rank 0's `value` (picklable: CPU tensors, plain values) on every rank; `value` itself without DDP."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


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


def rank_says(dist_info: Distributed, message: str) -> None:
    """A line in its own host's log from this rank, named. One write of the whole line: the ranks of a host
    share one pipe, and under PYTHONUNBUFFERED (the toolkit's and our launchers') `print` writes the text and
    its newline apart, so two ranks' lines ran together into one."""
    sys.stdout.write(f"[rank {dist_info.rank}/{dist_info.world_size} on {hosts()[1]}] {message}\n")
    sys.stdout.flush()
