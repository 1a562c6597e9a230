"""Where things live in /opt/ml, how the job fails, how SIGTERM stops it, how the process ends.

DDP (torchrun, the process group, sums over ranks) is in distributed.py."""

from __future__ import annotations

import gc
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
from trainer.distributed import under_torchrun


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


def failure_file(paths: Paths) -> Path:
    """Where SageMaker reads a failed job's FailureReason. The trainer writes it before it exits, and
    the sagemaker-training toolkit, which then reports the script's non-zero exit, writes its own
    multi-line report there only where no file exists (sagemaker_training.files.write_failure_file):
    the trainer's one line stands, with no copy kept elsewhere."""
    return paths.root / spec_paths.FAILURE_FILE


def clear_failure(paths: Paths) -> None:
    """A new job's start (before torchrun's workers exist): an earlier run's reason is no reason of this one."""
    failure_file(paths).unlink(missing_ok=True)


def write_failure(paths: Paths, reason: str) -> None:
    """Every rank that fails calls this; the first one's reason is kept (O_EXCL), since a rank's failure
    makes the others fail after it, in collectives that lost their peer: later reasons go to the log."""
    label = f"rank {os.environ['RANK']}: " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
    line = (label + " ".join(str(reason).split()))[:1000]  # one line; SageMaker shows 1 KB
    path = failure_file(paths)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(line + "\n")
    except OSError:  # FileExistsError: another rank failed first
        pass
    print(f"FAILED: {line}", file=sys.stderr, flush=True)


# Fault injection for the resume tests: rank 0 sends itself SIGTERM after this
# optimizer step, through the same handler a real StopTrainingJob reaches.
SIGTERM_AT_STEP_ENV = "TRAINER_SIGTERM_AT_STEP"
# The same, after the first batch of the first pass over this split ("validation", "test"):
# a stop during validation or the final scoring.
SIGTERM_IN_SPLIT_ENV = "TRAINER_SIGTERM_IN_SPLIT"
# Fault injection for the failure tests: this rank fails after its first optimizer step.
FAIL_ON_RANK_ENV = "TRAINER_FAIL_ON_RANK"
# ... and this rank stops answering (sleeps this many seconds) after its first optimizer step.
STALL_ENV = "TRAINER_STALL_ON_RANK"  # "RANK:SECONDS"


class StopFlag:
    """Set by SIGTERM (StopTrainingJob, spot interruption); SIGKILL follows 30 s later."""

    def __init__(self):
        self.requested = False
        self.received_at: float | None = None  # time.monotonic() of the signal
        self.sigterm_at_step = int(os.environ.get(SIGTERM_AT_STEP_ENV, "0")) or None
        self.fail_on_rank = int(os.environ.get(FAIL_ON_RANK_ENV, "-1"))
        self.sigterm_in_split = os.environ.get(SIGTERM_IN_SPLIT_ENV) or None
        stall = os.environ.get(STALL_ENV, "-1:0").split(":")
        self.stall_rank, self.stall_seconds = int(stall[0]), float(stall[1])
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True
        self.received_at = time.monotonic()
        print("SIGTERM received: saving a checkpoint after this step", flush=True)

    def step_done(self, global_step: int, rank: int) -> None:
        if rank == 0 and global_step == self.sigterm_at_step:
            os.kill(os.getpid(), signal.SIGTERM)
        if rank == self.fail_on_rank:
            raise TrainingFailure(f"injected failure on rank {rank} ({FAIL_ON_RANK_ENV})")
        if rank == self.stall_rank:
            self.stall_rank = -1  # once
            time.sleep(self.stall_seconds)

    def eval_batch_done(self, split: str, rank: int) -> None:
        if rank == 0 and split == self.sigterm_in_split:
            self.sigterm_in_split = None  # once
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
