"""Profiling in the trainer and the image, and the report's verdicts."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest
import torch

from contract.spec import images as image_names
from helpers.training import CONTAINER, FAST_HPS, build_image, run_trainer, write_sagemaker_config
from insights import profiler_report
from trainer import profiler


class Images(torch.utils.data.Dataset):
    def __init__(self, delay: float):
        self.delay = delay

    def __len__(self):
        return 48

    def __getitem__(self, i):
        time.sleep(self.delay)  # decoding and augmenting a large JPEG
        return torch.randn(3, 8, 8), i % 2


def profile_loop(folder, delay: float) -> list[profiler_report.Verdict]:
    prof = profiler.Profiler(folder, interval_ms=100, trace_steps=2, meta={"batch_size": 4, "num_workers": 0})
    model = torch.nn.Linear(192, 2)
    for epoch in (1, 2):
        for images, labels in prof.timed(torch.utils.data.DataLoader(Images(delay), batch_size=4), epoch):
            torch.nn.functional.cross_entropy(model(images.flatten(1)), labels).backward()
            time.sleep(0.01)  # the forward and backward pass of a real network
    prof.close()
    return {v.rule: v for v in profiler_report.analyse(profiler_report.load(folder))}


def test_a_slow_loader_is_a_data_bottleneck_and_a_fast_one_is_not(tmp_path):
    slow = profile_loop(tmp_path / "slow", delay=0.02)  # 80 ms of loading per ~10 ms step
    assert slow["CPUBottleneck"].status == "IssuesFound", slow["CPUBottleneck"]
    assert slow["CPUBottleneck"].numbers["data_wait_share"] > 0.5
    assert "num-workers" in slow["CPUBottleneck"].advice
    fast = profile_loop(tmp_path / "fast", delay=0.0)
    assert fast["CPUBottleneck"].status == "NoIssuesFound", fast["CPUBottleneck"]
    assert fast["CPUBottleneck"].numbers["data_wait_share"] < 0.2
    steps = profiler_report.read_jsonl(tmp_path / "fast" / "steps.jsonl")
    assert len(steps) == 24 and {s["epoch"] for s in steps} == {1, 2}
    # under torch.profiler: its one warm-up step and the 2 recorded ones (trainer/trace.py's schedule)
    assert sum(s["traced"] for s in steps) == 3 and (tmp_path / "fast" / "trace" / "trace.json").is_file()
    samples = profiler_report.read_jsonl(tmp_path / "fast" / "system.jsonl")
    assert samples and {"cpu", "cpu_total", "mem_percent", "rss_mb", "disk_read_mb_s", "net_recv_mb_s", "gpus"} <= set(
        samples[0]
    )


def run_with(system=(), steps=(), meta=None) -> dict:
    verdicts = profiler_report.analyse(
        {
            "meta": meta or {"batch_size": 32, "num_workers": 4, "cpu_count": 8},
            "system": list(system),
            "steps": list(steps),
        }
    )
    return {v.rule: v for v in verdicts}


def sample(cpu=50.0, gpu=None, gpu_mem=None, iowait=0.0):
    gpus = [] if gpu is None else [{"util": gpu, "mem_used_mb": gpu_mem * 800, "mem_total_mb": 80000}]
    return {
        "t": 0,
        "cpu": [cpu],
        "cpu_total": cpu,
        "iowait": iowait,
        "mem_percent": 30,
        "rss_mb": 1000,
        "disk_read_mb_s": 5.0,
        "gpus": gpus,
    }


def steps(n=40, data=0.01, compute=0.1, slow_at=None):
    return [
        {"epoch": 1, "step": i, "data_s": data, "compute_s": compute * (20 if i == slow_at else 1)} for i in range(n)
    ]


@pytest.mark.parametrize("gpu, expected", [(20.0, "IssuesFound"), (95.0, "NoIssuesFound")])
def test_low_gpu_utilisation(gpu, expected):
    verdict = run_with([sample(gpu=gpu, gpu_mem=80.0)] * 20, steps())["LowGPUUtilization"]
    assert verdict.status == expected and verdict.numbers["gpu_util_p95"] == pytest.approx(gpu)


def test_batch_size_too_small_when_everything_idles():
    idle = run_with([sample(cpu=20, gpu=30, gpu_mem=10)] * 20, steps())["BatchSize"]
    assert idle.status == "IssuesFound" and "32 -> 64" in idle.advice
    assert run_with([sample(cpu=20, gpu=30, gpu_mem=90)] * 20, steps())["BatchSize"].status == "NoIssuesFound"


def test_io_bottleneck_needs_iowait_and_waiting_steps():
    assert run_with([sample(iowait=80)] * 20, steps(data=0.2))["IOBottleneck"].status == "IssuesFound"
    assert run_with([sample(iowait=80)] * 20, steps(data=0.0))["IOBottleneck"].status == "NoIssuesFound"
    assert run_with([sample(iowait=2)] * 20, steps(data=0.2))["IOBottleneck"].status == "NoIssuesFound"


def test_step_outliers_name_the_slow_step():
    verdict = run_with([sample()] * 5, steps(slow_at=30))["StepOutlier"]
    assert verdict.status == "IssuesFound" and verdict.numbers["slowest"][0]["step"] == 30
    assert run_with([sample()] * 5, steps())["StepOutlier"].status == "NoIssuesFound"


def test_cpu_only_verdicts_say_not_applicable():
    verdicts = run_with([sample()] * 5, steps())
    assert verdicts["LowGPUUtilization"].status == verdicts["BatchSize"].status == "NotApplicable"


def test_gpu_reader_reads_every_gpu_or_degrades_to_none():
    """Without a GPU: no source, no samples. With GPUs (it asserted nothing there before): one sample each."""
    reader = profiler.GpuReader(100)
    try:
        if not torch.cuda.is_available():
            assert reader.source == "none" and reader.read() == []
            return
        assert reader.source in ("nvml", "nvidia-smi")
        deadline = time.monotonic() + 10  # nvidia-smi streams its first lines after a moment
        while len(reader.read()) < torch.cuda.device_count() and time.monotonic() < deadline:
            time.sleep(0.1)
        gpus = reader.read()
        assert len(gpus) == torch.cuda.device_count(), gpus
        for gpu in gpus:
            assert (
                0 <= gpu["util"] <= 100 and 0 <= gpu["mem_used_mb"] <= gpu["mem_total_mb"] and gpu["mem_total_mb"] > 0
            )
    finally:
        reader.close()


def check_report(folder, html_path):
    page = html_path.read_text()
    assert len(re.findall(r"<img alt='[^']+' src='data:image/png;base64,", page)) == 3
    for rule in ("LowGPUUtilization", "CPUBottleneck", "IOBottleneck", "BatchSize", "StepOutlier"):
        assert f"<td>{rule}</td>" in page
    assert "Top operators" in page


def test_trainer_profiles_when_asked_and_the_report_is_built(sample_data, tmp_path):
    opt_ml = tmp_path / "opt_ml"
    result = run_trainer(
        opt_ml,
        {"training": sample_data},
        dict(FAST_HPS, epochs=2, profiler="true", **{"profiler-interval-ms": 200, "profiler-trace-steps": 2}),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    folder = opt_ml / "output" / "profiler"
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["interval_ms"] == 200 and meta["batch_size"] == 16 and "ended" in meta
    assert len(profiler_report.read_jsonl(folder / "steps.jsonl")) == 14  # 97 images / 16, two epochs
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "insights.profiler_report",
            str(folder),
            "--out",
            str(tmp_path / "report.html"),
            "--json",
            str(tmp_path / "verdicts.json"),
        ],
        cwd=CONTAINER,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    check_report(folder, tmp_path / "report.html")
    assert {v["rule"] for v in json.loads((tmp_path / "verdicts.json").read_text())} >= {"CPUBottleneck"}


def test_on_by_default_without_the_trace_and_off_when_false(sample_data, tmp_path):
    hps = dict(FAST_HPS, epochs=1, **{"max-steps-per-epoch": 4})
    assert run_trainer(tmp_path / "auto", {"training": sample_data}, hps).returncode == 0
    folder = tmp_path / "auto" / "output" / "profiler"
    assert len(profiler_report.read_jsonl(folder / "steps.jsonl")) == 5  # the loop reads one batch past the cap
    assert not (folder / "trace").exists()  # the trace's fixed cost is paid only when asked for
    assert run_trainer(tmp_path / "off", {"training": sample_data}, dict(hps, profiler="false")).returncode == 0
    assert not (tmp_path / "off" / "output" / "profiler").exists()


# -- in the training image -----------------------------------------------------------------


def test_profiler_and_debugger_in_the_training_container(engine, sample_data, tmp_path):
    import shutil

    build_image(engine, "train")
    opt_ml = tmp_path / "opt_ml"
    shutil.copytree(sample_data, opt_ml / "input" / "data" / "training")
    write_sagemaker_config(opt_ml, dict(FAST_HPS, epochs=2), ["training"])
    config = opt_ml / "input" / "config"
    # what SageMaker writes for ProfilerConfig(system_monitor_interval_millis=500) and a DebuggerHookConfig
    (config / "profilerconfig.json").write_text(json.dumps({"ProfilingIntervalInMilliseconds": 500}))
    (config / "debughookconfig.json").write_text(
        json.dumps(
            {
                "LocalPath": "/opt/ml/output/tensors",
                "CollectionConfigurations": [
                    {"CollectionName": "losses", "CollectionParameters": {"save_interval": "1"}}
                ],
            }
        )
    )
    cli, env = engine.cli, engine.env
    run = subprocess.run(
        [cli, "run", "--rm", "-v", f"{opt_ml}:/opt/ml", image_names.train_image(), "train"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    assert "debugger: smdebug hook from /opt/ml/input/config/debughookconfig.json" in log, log[-4000:]
    assert "could not create the smdebug hook" not in log
    folder = opt_ml / "output" / "profiler"
    assert {"meta.json", "system.jsonl", "steps.jsonl"} <= {p.name for p in folder.iterdir()}
    assert json.loads((folder / "meta.json").read_text())["interval_ms"] == 500
    assert (folder / "trace" / "trace.json").is_file()
    after = subprocess.run(
        [
            cli,
            "run",
            "--rm",
            "-v",
            f"{opt_ml}:/opt/ml",
            image_names.train_image(),
            "bash",
            "-c",
            "python -m insights.profiler_report /opt/ml/output/profiler --out /opt/ml/output/report.html && "
            "python -m insights.rules /opt/ml/output/tensors --rule LossNotDecreasing --out /opt/ml/output/rules.json",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert after.returncode == 0, (after.stdout + after.stderr)[-4000:]
    check_report(folder, opt_ml / "output" / "report.html")
    verdict = json.loads((opt_ml / "output" / "rules.json").read_text())["rules"]["LossNotDecreasing"]
    # two epochs of 7 steps, every loss saved: the rules in the image judged the trial the image wrote
    assert verdict["status"] in ("IssuesFound", "NoIssuesFound") and verdict["judgements"] > 0, verdict
