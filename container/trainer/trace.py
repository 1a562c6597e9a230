"""A torch.profiler trace of a few training steps, on a bounded schedule (SageMaker Profiler's successor).

The schedule skips `wait` steps (allocator and oneDNN/cuDNN warm-up, loader start), profiles
`warmup` steps and throws them away (the profiler's own start-up), then records `active` steps,
once. What it writes, under the profiler's folder:

  trace/trace.json                      Chrome trace JSON: Perfetto (ui.perfetto.dev) or chrome://tracing
  trace/tensorboard/*.pt.trace.json     the same trace where TensorBoard's profiler plugin looks
                                        (tensorboard --logdir trace/tensorboard)
  trace/operators.txt                   the operators by self time

Best effort: a failure is logged and the trace is given up, never the training.
"""

from __future__ import annotations

import shutil
import socket
import sys
import time
import traceback
from pathlib import Path

WARMUP_STEPS = 1  # profiled and discarded: the profiler's own first-step cost


def schedule_for(steps_left_in_epoch: int, wait: int, active: int) -> tuple[int, int, int] | None:
    """(wait, warmup, active) that fit in what is left of the epoch; None when nothing fits."""
    if steps_left_in_epoch - wait - WARMUP_STEPS < 1:  # a short epoch: no waiting
        wait = 0
    active = min(active, steps_left_in_epoch - wait - WARMUP_STEPS)
    return (wait, WARMUP_STEPS, active) if active >= 1 else None


class StepTrace:
    """Call step() after every training step; done once the active steps are recorded."""

    def __init__(self, folder: Path, wait: int, warmup: int, active: int, meta: dict):
        import torch

        self.folder, self.meta, self.done = folder, meta, False
        self.steps, self.wait, self.warmup, self.total = 0, wait, warmup, wait + warmup + active
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.profile = torch.profiler.profile(
            activities=activities,
            record_shapes=False,
            schedule=torch.profiler.schedule(wait=wait, warmup=warmup, active=active, repeat=1),
            on_trace_ready=self._export,
        )
        self.profile.__enter__()
        meta["trace_schedule"] = {"wait": wait, "warmup": warmup, "active": active}

    @property
    def recording(self) -> bool:
        """The current step runs under the profiler (slower: the report leaves it out)."""
        return not self.done and self.steps >= self.wait

    def step(self) -> bool:
        """One training step is over; True once the trace is written (or given up)."""
        try:
            self.profile.step()
            self.steps += 1
            if self.steps >= self.total:
                self.close()
        except Exception:
            self._give_up("stepping")
        return self.done

    def close(self) -> None:
        if self.done:
            return
        self.done = True
        try:
            self.profile.__exit__(None, None, None)
        except Exception:
            self._give_up("stopping")

    def _export(self, profile) -> None:
        started = time.perf_counter()
        try:
            import torch

            folder = self.folder / "tensorboard"
            folder.mkdir(parents=True, exist_ok=True)
            before = set(folder.glob("*.pt.trace.json"))
            torch.profiler.tensorboard_trace_handler(str(folder), worker_name=socket.gethostname())(profile)
            written = sorted(set(folder.glob("*.pt.trace.json")) - before)
            if written:  # one export, two places: the plain name for Perfetto, the plugin's for TensorBoard
                shutil.copyfile(written[-1], self.folder / "trace.json")
            sort = (
                "self_cuda_time_total"
                if any(e.device_type.name == "CUDA" for e in profile.events())
                else "self_cpu_time_total"
            )
            (self.folder / "operators.txt").write_text(profile.key_averages().table(sort_by=sort, row_limit=30))
            self.meta["trace_export_s"] = round(time.perf_counter() - started, 3)  # paid by the training loop
        except Exception:
            self._give_up("writing")

    def _give_up(self, what: str) -> None:
        self.done = True
        print(
            f"profiler: torch.profiler trace failed while {what}:\n" + traceback.format_exc(),
            file=sys.stderr,
            flush=True,
        )


def start(folder: Path, steps_left_in_epoch: int, wait: int, active: int, meta: dict) -> StepTrace | None:
    schedule = schedule_for(steps_left_in_epoch, wait, active)
    if schedule is None:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return StepTrace(folder, *schedule, meta)
    except Exception:
        print("profiler: torch.profiler trace unavailable:\n" + traceback.format_exc(), file=sys.stderr, flush=True)
        return None
