"""Profiling inside the training image, written under /opt/ml/output/profiler.

  system.jsonl  one line per sample (every `profiler-interval-ms`, 500 ms by
                default, as ProfilerConfig(system_monitor_interval_millis=500)):
                CPU per core, memory, disk and network I/O rates, GPU
                utilisation and memory (NVML via pynvml, else `nvidia-smi -lms`,
                else none);
  steps.jsonl   one line per training step: time waiting for the loader and
                time computing (forward, backward, optimiser step), and for
                an optimiser step its global number and learning rate;
  trace/        a torch.profiler trace of a few training steps on a bounded
                schedule (trainer/trace.py): Chrome trace JSON for Perfetto, the
                same for TensorBoard's profiler plugin, and its operator table;
  meta.json     what the report needs to judge the numbers (cores, GPUs,
                batch size, loader workers).

`python -m insights.profiler_report DIR` turns it into one HTML report.
Everything here is best effort: a failure is logged and profiling stops.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

from trainer import trace as steptrace

SAGEMAKER_CONFIG = "profilerconfig.json"
TRACE_WARMUP_STEPS = 2  # the first steps pay for allocator and oneDNN/cuDNN warm-up


def wanted(hp, paths) -> bool:
    """`profiler` true/false, or auto: on (sampling and step timing cost well under 2%)."""
    return True if hp.profiler is None else hp.profiler


def trace_steps(hp, paths) -> int:
    """The torch.profiler trace costs about a second however long the job (scripts/bench.py debugger):
    taken only when profiling is asked for, by `profiler true` or SageMaker's ProfilerConfig."""
    asked = hp.profiler is True or (paths.root / "input" / "config" / SAGEMAKER_CONFIG).is_file()
    return hp.profiler_trace_steps if asked else 0


def sagemaker_interval_ms(paths) -> int | None:
    """system_monitor_interval_millis from SageMaker's ProfilerConfig, when the job has one."""
    path = paths.root / "input" / "config" / SAGEMAKER_CONFIG
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    value = config.get("ProfilingIntervalInMilliseconds") or config.get("ProfilingParameters", {}).get(
        "ProfilingIntervalInMilliseconds"
    )
    return int(value) if value else None


class NullProfiler:
    enabled = False

    def timed(self, batches, epoch: int, first_step: int = 0):
        return batches

    def note(self, **fields) -> None:
        """Add fields to the current step's line."""

    def close(self) -> None: ...


class GpuReader:
    """GPU utilisation and memory: NVML through pynvml, else a streaming nvidia-smi, else nothing."""

    def __init__(self, interval_ms: int):
        self.source, self.handles, self.proc = "none", [], None
        self.latest: list = []
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml = pynvml
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            self.source = "nvml" if self.handles else "none"
            return
        except Exception:  # absent module, or no driver: try the next source
            pass
        if shutil.which("nvidia-smi"):
            try:
                # one long-lived process streaming a line per GPU per interval: cheaper than one per sample
                self.proc = subprocess.Popen(
                    [
                        "nvidia-smi",
                        "--query-gpu=index,utilization.gpu,memory.used,memory.total",
                        "--format=csv,noheader,nounits",
                        f"-lms={interval_ms}",
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    text=True,
                )
                self.source = "nvidia-smi"
                threading.Thread(target=self._read_smi, daemon=True).start()
            except OSError:
                self.proc = None

    def _read_smi(self):
        current = {}
        assert self.proc is not None and self.proc.stdout is not None  # started with stdout=PIPE
        for line in self.proc.stdout:
            try:
                index, util, used, total = (float(x) for x in line.split(","))
            except ValueError:
                continue
            current[int(index)] = {"util": util, "mem_used_mb": used, "mem_total_mb": total}
            self.latest = [current[i] for i in sorted(current)]

    def read(self) -> list[dict]:
        if self.handles:
            gpus = []
            for handle in self.handles:
                util = self.nvml.nvmlDeviceGetUtilizationRates(handle)
                mem = self.nvml.nvmlDeviceGetMemoryInfo(handle)
                gpus.append(
                    {"util": float(util.gpu), "mem_used_mb": mem.used / 2**20, "mem_total_mb": mem.total / 2**20}
                )
            return gpus
        return list(self.latest)

    def close(self):
        if self.proc is not None:
            self.proc.terminate()


class SystemSampler(threading.Thread):
    def __init__(self, path: Path, interval_ms: int):
        super().__init__(name="profiler-sampler", daemon=True)
        import psutil

        self.psutil, self.path, self.interval = psutil, path, interval_ms / 1000.0
        self.gpu = GpuReader(interval_ms)
        self.done = threading.Event()
        self.process = psutil.Process()

    def run(self):
        self.psutil.cpu_percent(percpu=True)  # the first call only starts the measurement
        self.last = (time.time(), self.psutil.disk_io_counters(), self.psutil.net_io_counters())
        try:
            with open(self.path, "a") as out:
                while not self.done.wait(self.interval):
                    out.write(json.dumps(self.sample(), separators=(",", ":")) + "\n")
                    out.flush()  # a job killed mid-way still leaves its samples
        except Exception:
            print("profiler: system sampling stopped:\n" + traceback.format_exc(), file=sys.stderr, flush=True)
        finally:
            self.gpu.close()

    def sample(self) -> dict:
        ps, (last_t, last_disk, last_net) = self.psutil, self.last
        now, disk, net = time.time(), ps.disk_io_counters(), ps.net_io_counters()
        dt = max(now - last_t, 1e-6)
        cores = ps.cpu_percent(percpu=True)
        sample = {
            "t": now,
            "cpu": cores,
            "cpu_total": sum(cores) / max(len(cores), 1),
            "iowait": getattr(ps.cpu_times_percent(), "iowait", 0.0),
            "mem_percent": ps.virtual_memory().percent,
            "rss_mb": self._rss_mb(),
            "gpus": self.gpu.read(),
        }
        if disk and last_disk:
            sample["disk_read_mb_s"] = (disk.read_bytes - last_disk.read_bytes) / dt / 2**20
            sample["disk_write_mb_s"] = (disk.write_bytes - last_disk.write_bytes) / dt / 2**20
        if net and last_net:
            sample["net_recv_mb_s"] = (net.bytes_recv - last_net.bytes_recv) / dt / 2**20
            sample["net_sent_mb_s"] = (net.bytes_sent - last_net.bytes_sent) / dt / 2**20
        self.last = (now, disk, net)
        return sample

    def _rss_mb(self) -> float:
        # the trainer and its loader workers
        total = 0
        for proc in [self.process, *self.process.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except self.psutil.Error:
                pass
        return total / 2**20

    def stop(self):
        self.done.set()
        self.join(timeout=5)


class Profiler(NullProfiler):
    enabled = True

    def __init__(self, out_dir: Path, interval_ms: int, trace_steps: int, meta: dict):
        self.out_dir, self.trace_steps = out_dir, trace_steps
        out_dir.mkdir(parents=True, exist_ok=True)
        self.meta = dict(
            meta,
            interval_ms=interval_ms,
            cpu_count=os.cpu_count(),
            host=socket.gethostname(),
            started=time.time(),
            pid=os.getpid(),
        )
        self.steps_file = open(out_dir / "steps.jsonl", "a")
        self.notes: dict = {}
        self.traced = trace_steps == 0
        self.sampler = SystemSampler(out_dir / "system.jsonl", interval_ms)
        self.meta["gpu_source"] = self.sampler.gpu.source
        self.sampler.start()
        self._write_meta()
        print(
            f"profiler: sampling every {interval_ms} ms (GPU: {self.sampler.gpu.source}), "
            f"step times and a {trace_steps}-step trace in {out_dir}",
            flush=True,
        )

    def _write_meta(self):
        (self.out_dir / "meta.json").write_text(json.dumps(self.meta, indent=1))

    def timed(self, batches, epoch: int, first_step: int = 0):
        """Yield the loader's batches, timing the wait for each and the work done with it.

        `first_step`: where in the epoch the batches start (a job resumed mid-epoch)."""
        iterator, step, trace = iter(batches), first_step, None
        if not self.traced:  # the first epoch long enough for the schedule
            left = self.meta.get("steps_per_epoch", sys.maxsize) - first_step
            trace = steptrace.start(self.out_dir / "trace", left, TRACE_WARMUP_STEPS, self.trace_steps, self.meta)
        try:
            while True:
                start = time.perf_counter()
                try:
                    batch = next(iterator)
                except StopIteration:
                    return
                ready = time.perf_counter()
                try:
                    yield batch
                finally:
                    # runs when the loop asks for the next batch, or breaks out of it
                    done = time.perf_counter()
                    images = len(batch[1]) if isinstance(batch, (tuple, list)) and batch[1] is not None else 0
                    self.steps_file.write(
                        json.dumps(
                            {
                                "epoch": epoch,
                                "step": step,
                                "t": time.time() - (done - start),
                                "data_s": round(ready - start, 6),
                                "compute_s": round(done - ready, 6),
                                "images": images,
                                "traced": trace is not None and trace.recording,
                                **self.notes,
                            },
                            separators=(",", ":"),
                        )
                        + "\n"
                    )
                    self.notes = {}
                    if trace is not None and trace.step():
                        trace, self.traced = None, True
                step += 1
        finally:
            if trace is not None:
                trace.close()
                self.traced = True
            self.steps_file.flush()

    def note(self, **fields) -> None:
        self.notes.update(fields)

    def close(self) -> None:
        try:
            self.sampler.stop()
            self.steps_file.close()
            self.meta["ended"] = time.time()
            self._write_meta()
        except Exception:
            print("profiler: close failed:\n" + traceback.format_exc(), file=sys.stderr)


def create(hp, paths, is_main: bool, meta: dict) -> NullProfiler:
    """One profiler per host, in the main process; NullProfiler when switched off."""
    if not (is_main and wanted(hp, paths)):
        return NullProfiler()
    interval = sagemaker_interval_ms(paths) or hp.profiler_interval_ms
    try:
        return Profiler(paths.output / "profiler", interval, trace_steps(hp, paths), meta)
    except Exception:
        print(
            "profiler: could not start; training continues without it:\n" + traceback.format_exc(),
            file=sys.stderr,
            flush=True,
        )
        return NullProfiler()
