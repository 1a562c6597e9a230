"""One HTML file from what trainer/profiler.py wrote: charts and verdicts.

    python -m insights.profiler_report /opt/ml/output/profiler [--out report.html] [--json verdicts.json]

The verdicts follow SageMaker's profiler rules (LowGPUUtilization, CPUBottleneck,
IOBottleneck, BatchSize, StepOutlier) with their default thresholds where the
data allow; each carries the numbers behind it and what to change. Steps come
from steps.jsonl (time waiting for the loader vs computing), utilisation from
system.jsonl. The charts are PNGs embedded in the page, so the report is one file.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

WARMUP_STEPS = 2  # first steps of a job: allocator, oneDNN/cuDNN autotuning, worker start-up
# Defaults of SageMaker's profiler rules
LOW_GPU_P95, LOW_GPU_P5 = 70.0, 10.0
CPU_BUSY, GPU_IDLE = 90.0, 10.0
BATCH_P95 = 70.0
IOWAIT = 50.0
STEP_OUTLIER_STDDEV = 3.0
DATA_WAIT_SHARE = 0.20  # share of step time spent waiting for the loader that makes it the bottleneck


@dataclass
class Verdict:
    rule: str
    status: str  # IssuesFound, NoIssuesFound, NotApplicable
    summary: str
    numbers: dict = field(default_factory=dict)
    advice: str = ""


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line cut short by a killed job
            pass
    return rows


def load(folder: Path) -> dict:
    meta = json.loads((folder / "meta.json").read_text()) if (folder / "meta.json").is_file() else {}
    return {"meta": meta, "system": read_jsonl(folder / "system.jsonl"), "steps": read_jsonl(folder / "steps.jsonl")}


def _pct(values, q) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def analyse(run: dict) -> list[Verdict]:
    meta, system, steps = run["meta"], run["system"], run["steps"]
    # warm-up steps and the steps under torch.profiler are slow for reasons of their own
    body = [s for s in (steps[WARMUP_STEPS:] if len(steps) > WARMUP_STEPS else steps) if not s.get("traced")]
    data = np.array([s["data_s"] for s in body], dtype=float)
    compute = np.array([s["compute_s"] for s in body], dtype=float)
    total = data + compute
    cpu = np.array([s["cpu_total"] for s in system], dtype=float)
    iowait = np.array([s.get("iowait", 0.0) for s in system], dtype=float)
    gpu_util = np.array([np.mean([g["util"] for g in s["gpus"]]) for s in system if s.get("gpus")], dtype=float)
    gpu_mem = np.array(
        [
            np.mean([100 * g["mem_used_mb"] / max(g["mem_total_mb"], 1) for g in s["gpus"]])
            for s in system
            if s.get("gpus")
        ],
        dtype=float,
    )
    wait_share = float(data.sum() / total.sum()) if total.sum() > 0 else 0.0
    waits = int((data > compute).sum())
    workers, batch = meta.get("num_workers"), meta.get("batch_size")
    cores = meta.get("cpu_count")
    verdicts = []
    numbers: dict[str, Any]  # each rule's numbers, in its verdict

    def na(rule, why):
        verdicts.append(Verdict(rule, "NotApplicable", why))

    # LowGPUUtilization
    if len(gpu_util):
        low = _pct(gpu_util, 95) < LOW_GPU_P95
        numbers = {
            "gpu_util_p5": _pct(gpu_util, 5),
            "gpu_util_p50": _pct(gpu_util, 50),
            "gpu_util_p95": _pct(gpu_util, 95),
            "samples": len(gpu_util),
        }
        verdicts.append(
            Verdict(
                "LowGPUUtilization",
                "IssuesFound" if low else "NoIssuesFound",
                f"GPU utilisation p95 {numbers['gpu_util_p95']:.0f}% (threshold {LOW_GPU_P95:.0f}%), "
                f"p50 {numbers['gpu_util_p50']:.0f}%",
                numbers,
                "The GPU waits: if the loader is the cause (see CPUBottleneck) add workers; otherwise raise "
                "batch-size, or choose a smaller instance."
                if low
                else "",
            )
        )
    else:
        na("LowGPUUtilization", "no GPU was sampled (CPU training, or no NVML/nvidia-smi)")

    # CPUBottleneck: the training loop waits for the CPU-side loader
    if len(total):
        busy = float((cpu > CPU_BUSY).mean()) if len(cpu) else 0.0
        gpu_idle = float((gpu_util < GPU_IDLE).mean()) if len(gpu_util) else None
        hit = wait_share > DATA_WAIT_SHARE
        numbers = {
            "data_wait_share": wait_share,
            "steps_waiting_longer_than_computing": waits,
            "steps": len(total),
            "median_data_wait_s": _pct(data, 50),
            "median_compute_s": _pct(compute, 50),
            "cpu_busy_share": busy,
            "gpu_idle_share": gpu_idle,
            "num_workers": workers,
            "cpu_count": cores,
        }
        more = min((workers or 0) * 2 or 2, max(cores or 2, 2))
        verdicts.append(
            Verdict(
                "CPUBottleneck",
                "IssuesFound" if hit else "NoIssuesFound",
                f"{100 * wait_share:.0f}% of step time was spent waiting for the data loader "
                f"(threshold {100 * DATA_WAIT_SHARE:.0f}%); {waits} of {len(total)} steps waited longer than "
                f"they computed; CPU above {CPU_BUSY:.0f}% in {100 * busy:.0f}% of samples",
                numbers,
                f"Feed the loop faster: num-workers {workers} -> {more} (the machine has {cores} cores), "
                "smaller or pre-resized JPEGs, a smaller image-size; on GPUs the CPU should not be the "
                "limit: a GPU instance with more vCPUs helps."
                if hit
                else "",
            )
        )
    else:
        na("CPUBottleneck", "no training steps were recorded")

    # IOBottleneck: waiting for storage (iowait) while the loop waits for data
    if len(iowait) and len(total):
        hit = _pct(iowait, 95) > IOWAIT and wait_share > DATA_WAIT_SHARE
        reads = [s.get("disk_read_mb_s", 0.0) for s in system]
        numbers = {
            "iowait_p95": _pct(iowait, 95),
            "iowait_mean": float(iowait.mean()),
            "disk_read_mb_s_p95": _pct(reads, 95),
            "data_wait_share": wait_share,
        }
        verdicts.append(
            Verdict(
                "IOBottleneck",
                "IssuesFound" if hit else "NoIssuesFound",
                f"CPU iowait p95 {numbers['iowait_p95']:.0f}% (threshold {IOWAIT:.0f}%), disk reads p95 "
                f"{numbers['disk_read_mb_s_p95']:.1f} MB/s",
                numbers,
                "Storage is slow: use FastFile or File input mode instead of reading from a network mount, "
                "pack images into fewer, larger files (tar/zip channel), or stage them on local NVMe."
                if hit
                else "",
            )
        )
    else:
        na("IOBottleneck", "no system samples")

    # BatchSize: everything is idle, the batch is too small to keep the device busy
    if len(gpu_util):
        hit = _pct(gpu_util, 95) < BATCH_P95 and _pct(gpu_mem, 95) < BATCH_P95 and _pct(cpu, 95) < BATCH_P95
        numbers = {
            "gpu_util_p95": _pct(gpu_util, 95),
            "gpu_memory_p95": _pct(gpu_mem, 95),
            "cpu_p95": _pct(cpu, 95),
            "batch_size": batch,
        }
        verdicts.append(
            Verdict(
                "BatchSize",
                "IssuesFound" if hit else "NoIssuesFound",
                f"GPU p95 {numbers['gpu_util_p95']:.0f}%, GPU memory p95 {numbers['gpu_memory_p95']:.0f}%, CPU p95 "
                f"{numbers['cpu_p95']:.0f}% (all below {BATCH_P95:.0f}% means the batch is too small)",
                numbers,
                f"Raise batch-size ({batch} -> {2 * (batch or 1)}) and scale lr with it, or use a smaller instance."
                if hit
                else "",
            )
        )
    else:
        na("BatchSize", "no GPU was sampled: on CPUs the batch size is bounded by memory, not utilisation")

    # StepOutlier
    if len(total) >= 5:
        limit = float(total.mean() + STEP_OUTLIER_STDDEV * total.std())
        slow = [
            (s["epoch"], s["step"], s["data_s"] + s["compute_s"]) for s in body if s["data_s"] + s["compute_s"] > limit
        ]
        numbers = {
            "mean_step_s": float(total.mean()),
            "stddev_s": float(total.std()),
            "limit_s": limit,
            "outliers": len(slow),
            "slowest": [
                {"epoch": e, "step": st, "seconds": round(t, 4)} for e, st, t in sorted(slow, key=lambda x: -x[2])[:5]
            ],
        }
        verdicts.append(
            Verdict(
                "StepOutlier",
                "IssuesFound" if slow else "NoIssuesFound",
                f"{len(slow)} step(s) took longer than mean + {STEP_OUTLIER_STDDEV:g} sigma = {limit:.3f} s "
                f"(mean {total.mean():.3f} s)",
                numbers,
                "Look at what those steps have in common (first steps of an epoch: loader workers starting, "
                "raise prefetch or use persistent workers; periodic: checkpoints, debugger saves, other "
                "jobs on the host)."
                if slow
                else "",
            )
        )
    else:
        na("StepOutlier", "fewer than 5 steps after warm-up")
    return verdicts


# -- the numbers, in words ------------------------------------------------------


def _share(x) -> str:
    return f"{100 * x:.0f}%"


def _ms(x) -> str:
    return f"{1000 * x:,.0f} ms" if x >= 0.01 else f"{1000 * x:.1f} ms"


# (keys, phrase): a phrase is shown when every key it names has a value
PHRASES = [
    (("data_wait_share",), lambda n: f"data loading {_share(n['data_wait_share'])} of step time"),
    (
        ("steps_waiting_longer_than_computing", "steps"),
        lambda n: (
            f"{n['steps_waiting_longer_than_computing']} of {n['steps']} steps waited longer for data than "
            "they computed"
        ),
    ),
    (
        ("median_data_wait_s", "median_compute_s"),
        lambda n: (
            f"median step: {_ms(n['median_data_wait_s'])} waiting for data, {_ms(n['median_compute_s'])} computing"
        ),
    ),
    (("cpu_busy_share",), lambda n: f"CPU above {CPU_BUSY:.0f}% busy in {_share(n['cpu_busy_share'])} of samples"),
    (("gpu_idle_share",), lambda n: f"GPU idle (under {GPU_IDLE:.0f}%) in {_share(n['gpu_idle_share'])} of samples"),
    (("num_workers", "cpu_count"), lambda n: f"{n['num_workers']} loader workers on {n['cpu_count']} CPU cores"),
    (
        ("gpu_util_p5", "gpu_util_p50", "gpu_util_p95", "samples"),
        lambda n: (
            f"GPU utilisation {n['gpu_util_p5']:.0f}% (5th percentile), {n['gpu_util_p50']:.0f}% (median), "
            f"{n['gpu_util_p95']:.0f}% (95th) over {n['samples']} samples"
        ),
    ),
    (
        ("gpu_util_p95", "gpu_memory_p95", "cpu_p95"),
        lambda n: (
            f"95th percentiles: GPU {n['gpu_util_p95']:.0f}% busy, GPU memory {n['gpu_memory_p95']:.0f}% used, "
            f"CPU {n['cpu_p95']:.0f}% busy"
        ),
    ),
    (("batch_size",), lambda n: f"batch size {n['batch_size']}"),
    (
        ("iowait_p95", "iowait_mean"),
        lambda n: (
            f"CPU waiting for storage {n['iowait_p95']:.0f}% of the time (95th percentile), "
            f"{n['iowait_mean']:.0f}% on average"
        ),
    ),
    (("disk_read_mb_s_p95",), lambda n: f"disk reads {n['disk_read_mb_s_p95']:.1f} MB/s (95th percentile)"),
    (
        ("mean_step_s", "stddev_s", "limit_s"),
        lambda n: (
            f"steps take {_ms(n['mean_step_s'])} on average (± {_ms(n['stddev_s'])}); slower than "
            f"{_ms(n['limit_s'])} counts as an outlier"
        ),
    ),
    (
        ("outliers",),
        lambda n: (
            f"{n['outliers']} outlier step(s)"
            + "".join(f"; epoch {s['epoch']} step {s['step']} took {_ms(s['seconds'])}" for s in n.get("slowest", []))
        ),
    ),
]


def in_words(numbers: dict) -> str:
    """A verdict's numbers as an HTML list of sentences with units."""
    items = [
        phrase(numbers)
        for keys, phrase in PHRASES
        if all(
            numbers.get(k) is not None and not (isinstance(numbers[k], float) and np.isnan(numbers[k])) for k in keys
        )
    ]
    return "<ul>" + "".join(f"<li>{html.escape(item)}</li>" for item in items) + "</ul>" if items else ""


# -- charts ------------------------------------------------------------------


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def charts(run: dict) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out, system, steps = [], run["system"], run["steps"]
    if system:
        t0 = system[0]["t"]
        t = [s["t"] - t0 for s in system]
        fig, ax = plt.subplots(figsize=(9, 3.2))
        ax.plot(t, [s["cpu_total"] for s in system], label="CPU %")
        ax.plot(t, [s["mem_percent"] for s in system], label="memory %")
        if any(s.get("gpus") for s in system):
            for i in range(max(len(s.get("gpus", [])) for s in system)):
                ax.plot(
                    t,
                    [s["gpus"][i]["util"] if len(s.get("gpus", [])) > i else np.nan for s in system],
                    label=f"GPU {i} %",
                )
        ax.set(xlabel="seconds", ylabel="%", ylim=(0, 105), title="Utilisation over time")
        ax.legend(loc="upper right", fontsize=8)
        out.append(("Utilisation over time", _png(fig)))
        plt.close(fig)
    if steps:
        x = np.arange(len(steps))
        data = [s["data_s"] for s in steps]
        compute = [s["compute_s"] for s in steps]
        fig, ax = plt.subplots(figsize=(9, 3.2))
        ax.bar(x, compute, width=1.0, label="compute")
        ax.bar(x, data, width=1.0, bottom=compute, label="waiting for data")
        ax.set(xlabel="training step", ylabel="seconds", title="Step time: compute vs data wait")
        ax.legend(fontsize=8)
        out.append(("Step time split", _png(fig)))
        plt.close(fig)
        slowest = sorted(steps, key=lambda s: -(s["data_s"] + s["compute_s"]))[:10][::-1]
        fig, ax = plt.subplots(figsize=(9, 3.2))
        labels = [f"e{s['epoch']} s{s['step']}" for s in slowest]
        ax.barh(labels, [s["compute_s"] for s in slowest], label="compute")
        ax.barh(labels, [s["data_s"] for s in slowest], left=[s["compute_s"] for s in slowest], label="data wait")
        ax.set(xlabel="seconds", title="Slowest steps")
        ax.legend(fontsize=8)
        out.append(("Slowest steps", _png(fig)))
        plt.close(fig)
    return out


def render(folder: Path, run: dict, verdicts: list[Verdict]) -> str:
    meta = run["meta"]
    rows = "".join(
        f"<tr class='{v.status}'><td>{v.rule}</td><td>{v.status}</td><td>{html.escape(v.summary)}</td>"
        f"<td>{html.escape(v.advice)}</td><td>{in_words(v.numbers)}</td></tr>"
        for v in verdicts
    )
    images = "".join(
        f"<h2>{title}</h2><img alt='{title}' src='data:image/png;base64,{png}'>" for title, png in charts(run)
    )
    trace = folder / "trace" / "operators.txt"
    operators = (
        f"<h2>Top operators (torch.profiler)</h2><pre>{html.escape(trace.read_text())}</pre>" if trace.is_file() else ""
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Profiler report</title><style>
body{{font-family:sans-serif;margin:2em;max-width:1100px}} td,th{{border:1px solid #ccc;padding:4px;
vertical-align:top;font-size:90%}} table{{border-collapse:collapse}} .IssuesFound td:nth-child(2){{color:#b00;
font-weight:bold}} .NoIssuesFound td:nth-child(2){{color:#070}} code{{font-size:80%;word-break:break-all}}
</style></head><body><h1>Profiler report</h1>
<p>{html.escape(str(folder))}: {len(run["steps"])} training steps, {len(run["system"])} system samples every
{meta.get("interval_ms", "?")} ms; device {meta.get("device", "?")}, batch size {meta.get("batch_size", "?")},
{meta.get("num_workers", "?")} loader workers, {meta.get("cpu_count", "?")} cores, GPU source
{meta.get("gpu_source", "?")}.</p>
<h2>Verdicts</h2><table><tr><th>rule</th><th>status</th><th>finding</th><th>what to change</th><th>the numbers</th>
</tr>{rows}</table>{images}{operators}</body></html>"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m insights.profiler_report", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="what the profiler wrote (/opt/ml/output/profiler)")
    parser.add_argument("--out", type=Path, help="HTML file (default FOLDER/profiler-report.html)")
    parser.add_argument("--json", type=Path, help="also write the verdicts as JSON")
    args = parser.parse_args(argv)
    run = load(args.folder)
    if not run["steps"] and not run["system"]:
        print(f"no profiler data in {args.folder}", file=sys.stderr)
        return 1
    verdicts = analyse(run)
    out = args.out or args.folder / "profiler-report.html"
    out.write_text(render(args.folder, run, verdicts))
    if args.json:
        args.json.write_text(json.dumps([asdict(v) for v in verdicts], indent=1, default=float))
    for v in verdicts:
        print(f"{v.rule:18s} {v.status:14s} {v.summary}")
    print(f"report: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
