"""The training half of the proof: the project's trainer (container/toolkit_entry_point.py, as the sagemaker-training
toolkit starts it) on generated data in a temporary /opt/ml tree, stopped by SIGTERM in the middle of
its last epoch and restarted (the exact resume), as SageMaker's spot training would: the throughput,
the device and AMP mode in effect and the profiler's output come from the first run. Beside the
trainer's images/s, in this process: the same model and batch's forward+backward limit on synthetic
tensors already on the device, and the trainer's data loader alone."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import make_sample_data
from benchmarks.gpu_proof.profile import Profile
from benchmarks.gpu_proof.report import Report
from contract import artifact
from contract.spec import hyperparameters, metrics, paths
from localnet import free_port

CONTAINER = Path(__file__).resolve().parents[3] / "container"
DATA_TIMEOUT_S = 300.0
SHARD_IMAGES = 200  # training images per class and shard, at least
MODEL_LINE = re.compile(r"amp=(\S+), device=(\S+)")
PART = "training"


@dataclass
class TrainerRun:
    opt_ml: Path
    returncode: int
    log: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def tail(self) -> str:
        return self.log[-600:]


def make_data(folder: Path, profile: Profile) -> Path:
    """scripts/make_sample_data.py's learnable classes, with its mix of formats and one corrupt file in
    train/. It draws about 50 images a second on one core: a large set is drawn in shards, one process
    each (seeds 0, 1, ...), and merged; only shard 0 keeps its corrupt file."""
    root = folder / "data"
    shards = max(1, min(len(os.sched_getaffinity(0)), profile.classes * profile.per_class // SHARD_IMAGES))
    if shards == 1:
        return make_sample_data.make(root, profile.classes, profile.per_class, seed=0)
    per_class = -(-profile.per_class // shards)
    script = Path(make_sample_data.__file__)
    makers = [
        subprocess.Popen(
            [sys.executable, str(script), str(folder / f"shard-{i}"), "--classes", str(profile.classes)]
            + ["--per-class", str(per_class), "--seed", str(i)],
            stdout=subprocess.DEVNULL,
        )
        for i in range(shards)
    ]
    for maker in makers:
        if maker.wait(timeout=DATA_TIMEOUT_S) != 0:
            raise RuntimeError(f"make_sample_data.py exited with {maker.returncode}")
    for i in range(shards):
        shard = folder / f"shard-{i}"
        for path in sorted(p for p in shard.rglob("*") if p.is_file()):
            if i and path.name.startswith("corrupt_"):
                continue
            target = root / path.relative_to(shard).parent / f"s{i:02d}_{path.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            path.rename(target)
        shutil.rmtree(shard)
    return root


def trainer_hyperparameters(profile: Profile) -> dict[str, str]:
    return hyperparameters.as_strings(
        {
            "backbone": profile.backbone,
            "pretrained": "none",
            "image-size": profile.image_size,
            "batch-size": profile.batch_size,
            "epochs": profile.epochs,
            "lr": 0.001,
            "amp": "auto",  # the trainer's own choice: bf16 where native, else fp16 (CUDA)
            "channels-last": "true",
            "num-workers": profile.num_workers,
            "debugger": "false",  # smdebug is not on a bare GPU machine, and not what is proven
            "profiler": "true",
            "profiler-interval-ms": 200,
            "profiler-trace-steps": 3,
        }
    )


def trainer_env(opt_ml: Path, data: Path, extra: dict | None = None) -> dict:
    """What SageMaker's toolkit gives the entry point, on a local /opt/ml tree."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SM_")}
    env.update(
        {
            paths.BASE_DIR_ENV: str(opt_ml),
            "SM_CHANNEL_TRAINING": str(data),
            "SM_NUM_GPUS": str(torch.cuda.device_count()),
            "TRAINER_SCRATCH": str(opt_ml / "scratch"),
            "TORCH_HOME": str(opt_ml / "torch-home"),
            "MASTER_PORT": str(free_port()),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra or {})
    return env


def run_trainer(
    opt_ml: Path, data: Path, hps: dict, name: str, timeout_s: float, extra_env: dict | None = None
) -> TrainerRun:
    """container/toolkit_entry_point.py on `opt_ml`, bounded in time; its output in opt_ml/trainer-NAME.log too."""
    opt_ml.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            [sys.executable, str(CONTAINER / paths.TOOLKIT_ENTRY_POINT), *hyperparameters.to_argv(hps)],
            env=trainer_env(opt_ml, data, extra_env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout_s,
        )
        run = TrainerRun(opt_ml, done.returncode, done.stdout)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        run = TrainerRun(opt_ml, -1, out + f"\n(no exit within {timeout_s:.0f} s)")
    (opt_ml / f"trainer-{name}.log").write_text(run.log)
    return run


def lr_trajectory(opt_ml: Path) -> list[tuple[int, float]]:
    """(global step, learning rate) of every optimizer step, from the profiler's steps.jsonl."""
    path = opt_ml / "output" / "profiler" / "steps.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [(r["global_step"], r["lr"]) for r in map(json.loads, lines) if "lr" in r]


def steps_per_epoch(data: Path, profile: Profile) -> int:
    """The trainer's count: every file of train/ (the corrupt one too) in batches."""
    train_images = sum(path.is_file() for path in (data / "train").rglob("*"))
    return -(-train_images // profile.batch_size)


def expected_amp(gpu: bool) -> str:
    """bf16 where the GPU does it natively (compute capability 8.0 on), else fp16 with a GradScaler."""
    if not gpu:
        return "a GPU's"
    native_bf16 = torch.cuda.get_device_capability()[0] >= 8
    return str(torch.bfloat16 if native_bf16 else torch.float16)


def prove(report: Report, work: Path, data: Path, profile: Profile) -> Path | None:
    """Every training and profiler row of the report; the trained model's folder (None if training failed).

    Two trainer runs on one /opt/ml tree: the first is stopped by SIGTERM after the middle step of
    the last epoch (the trainer's own fault injection, through its real handler), its completed
    epochs give the throughput, its log the device and AMP mode, its profiler folder the trace; the
    second resumes from the checkpoint and finishes."""
    from trainer import runtime  # the variable's one definition

    hps = trainer_hyperparameters(profile)
    per_epoch = steps_per_epoch(data, profile)
    stop_at = (profile.epochs - 1) * per_epoch + per_epoch // 2
    opt_ml = work / "training"
    stopped = run_trainer(
        opt_ml, data, hps, "stopped", profile.trainer_timeout_s, {runtime.SIGTERM_AT_STEP_ENV: str(stop_at)}
    )
    if not report.check(PART, "trainer runs until its SIGTERM, exit 0", stopped.ok, f"exit {stopped.returncode}"):
        report.failed(PART, "trainer log", stopped.tail())
    found = MODEL_LINE.search(stopped.log)
    amp, device = found.groups() if found else ("?", "?")
    report.check(PART, "training device in effect", device.startswith("cuda"), device, gpu_only=True)
    expected = expected_amp(report.gpu)
    report.check(PART, f"AMP in effect (expected {expected})", amp == expected, amp, gpu_only=True)
    report.figure(PART, "channels-last", hps["channels-last"])
    speeds = metrics.parse_log(stopped.log).get("train:images_per_sec", [])
    trainer_rate = max(speeds, default=0.0)
    report.figure(PART, f"trainer images/s (best whole epoch of {len(speeds)}, data loading included)", trainer_rate)
    limit = forward_backward_limit(hps, profile)
    if report.gpu:
        torch.cuda.empty_cache()  # the limit's model and batch, gone with its frame
    report.figure(PART, f"in-process forward+backward limit, batch {profile.batch_size}, img/s", limit)
    report.figure(PART, "trainer / limit", trainer_rate / limit if limit else 0.0)
    rate, workers = loader_rate(data, hps, work / "loader-scratch", profile.limit_seconds * 4)
    report.figure(PART, f"data loader alone ({workers} worker processes), img/s", rate)
    resumed = prove_resume(report, opt_ml, data, hps, profile, stopped, stop_at, per_epoch)
    accuracy = metrics.parse_log(resumed.log).get("test:accuracy", [float("nan")])[-1]
    report.figure(PART, "test accuracy of the resumed run's model", accuracy)
    prove_profiler(report, opt_ml)
    model_dir = opt_ml / paths.MODEL_DIR
    return model_dir if (model_dir / artifact.WEIGHTS_FILE).is_file() else None


def prove_resume(
    report: Report,
    opt_ml: Path,
    data: Path,
    hps: dict,
    profile: Profile,
    stopped: TrainerRun,
    stop_at: int,
    per_epoch: int,
) -> TrainerRun:
    """The stopped run left a mid-epoch checkpoint; a restart on the same folder resumes there and
    takes the optimizer steps the schedule has left, each at its learning rate, and writes the model."""
    checkpoint = opt_ml / paths.CHECKPOINTS_DIR / "checkpoint.pt"
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True) if checkpoint.is_file() else {}
    mid_epoch = stopped.ok and saved.get("global_step") == stop_at and saved.get("step", 0) > 0
    seconds = re.search(r"checkpoint saved ([0-9.]+) s after SIGTERM", stopped.log)
    report.check(
        PART,
        f"SIGTERM after step {stop_at} (mid-epoch {profile.epochs}): checkpoint at that step",
        "SIGTERM received" in stopped.log and mid_epoch,
        f"step {saved.get('global_step')}, saved {seconds.group(1) if seconds else '?'} s after SIGTERM",
    )
    resumed = run_trainer(opt_ml, data, hps, "resumed", profile.trainer_timeout_s)
    message = f"resuming from checkpoint in epoch {saved.get('epoch', -1) + 1} after step {saved.get('step')}"
    finished = resumed.ok and (opt_ml / paths.MODEL_DIR / artifact.WEIGHTS_FILE).is_file()
    report.check(PART, "restart resumes mid-epoch and writes the model", finished and message in resumed.log, message)
    if not finished:
        report.failed(PART, "restart log", resumed.tail())
    expected, got = scheduled_lrs(hps, per_epoch, profile.epochs), lr_trajectory(opt_ml)
    same = [s for s, _ in got] == [s for s, _ in expected] and all(
        abs(a - b) <= 1e-9 * max(abs(b), 1e-12) for (_, a), (_, b) in zip(got, expected, strict=True)
    )
    report.check(
        PART,
        "both runs' optimizer steps and learning rates = the schedule's, none repeated or missed",
        same,
        f"{len(got)} of {len(expected)} steps",
    )
    return resumed


def scheduled_lrs(hps: dict, per_epoch: int, epochs: int) -> list[tuple[int, float]]:
    """(global step, learning rate) of an uninterrupted run, from the trainer's own optimiser and schedule:
    the rate each step is taken at (read before the schedule steps, as the trainer records it)."""
    from trainer.optim import make_optimizer, make_schedule

    hp = hyperparameters.parse(hyperparameters.to_argv(hps))
    optimizer = make_optimizer(hp, [torch.nn.Parameter(torch.zeros(1))])
    schedule = make_schedule(hp, optimizer, per_epoch)
    rates = []
    for step in range(1, epochs * per_epoch + 1):
        rates.append((step, optimizer.param_groups[0]["lr"]))
        optimizer.step()
        schedule.step()
    return rates


def prove_profiler(report: Report, opt_ml: Path) -> None:
    """trainer/profiler.py's samples hold GPU readings, and trainer/trace.py's trace CUDA kernels."""
    folder = opt_ml / "output" / "profiler"
    samples = []
    if (folder / "system.jsonl").is_file():
        samples = [json.loads(line) for line in (folder / "system.jsonl").read_text().splitlines() if line.strip()]
    with_gpu = sum(bool(sample.get("gpus")) for sample in samples)
    report.check("profiler", "system samples with GPU readings", with_gpu > 0, f"{with_gpu} of {len(samples)}", True)
    trace = folder / "trace" / "trace.json"
    events = []
    if trace.is_file():
        events = json.loads(trace.read_text()).get("traceEvents", [])
    kernels = [event for event in events if event.get("cat") == "kernel"]
    report.check("profiler", "torch.profiler trace written", bool(events), f"{len(events)} events")
    names = sorted({event.get("name", "")[:40] for event in kernels})[:3]
    report.check("profiler", "CUDA kernels in the trace", bool(kernels), f"{len(kernels)} ({', '.join(names)})", True)


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def forward_backward_limit(hps: dict, profile: Profile) -> float:
    """Images/s of the trainer's own training step (its model, optimiser, autocast dtype, scaler,
    channels-last) on one batch already on the device: what the trainer would reach with data for free."""
    from trainer import distributed
    from trainer.loop import autocast
    from trainer.optim import amp_dtype, make_optimizer
    from trainer.setup import build_model

    hp = hyperparameters.parse(hyperparameters.to_argv(hps))
    _, device = distributed.init_distributed(hp.collective_timeout)
    _, model, _ = build_model(hp, profile.classes, lambda message: None)
    model = model.to(device).to(memory_format=torch.channels_last).train()
    optimizer = make_optimizer(hp, [p for p in model.parameters() if p.requires_grad])
    amp = amp_dtype(hp, device)
    scaler = torch.amp.GradScaler(enabled=amp == torch.float16)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=hp.label_smoothing)
    size = (profile.batch_size, 3, profile.image_size, profile.image_size)
    images = torch.randn(size, device=device).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, profile.classes, (profile.batch_size,), device=device)

    def step() -> None:
        with autocast(device, amp):
            logits = model(images)
        loss = criterion(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    for _ in range(3):  # cuDNN's algorithm choice, the allocator
        step()
    synchronize()
    done, began = 0, time.perf_counter()
    while time.perf_counter() - began < profile.limit_seconds or done < 3 * profile.batch_size:
        step()
        done += profile.batch_size
    synchronize()
    return done / (time.perf_counter() - began)


def loader_rate(data: Path, hps: dict, scratch: Path, seconds: float) -> tuple[float, int]:
    """Images/s of the trainer's training loader alone (its dataset, augmentation, workers, pinned
    memory), batches drawn and dropped; (rate, worker processes). At most `seconds` after its start."""
    from trainer import data as trainer_data
    from trainer import distributed
    from trainer.loaders import loader

    hp = hyperparameters.parse(hyperparameters.to_argv(hps))
    before = os.environ.get("SM_CHANNEL_TRAINING")
    os.environ["SM_CHANNEL_TRAINING"] = str(data)  # where discover() looks, as in the trainer
    try:
        splits = trainer_data.discover(scratch, hp.val_fraction, hp.seed)
    finally:
        if before is None:
            os.environ.pop("SM_CHANNEL_TRAINING")
        else:
            os.environ["SM_CHANNEL_TRAINING"] = before
    from contract.preprocess import Preprocessing

    dataset = trainer_data.ImageDataset(
        splits.train,
        Preprocessing.for_image_size(hp.image_size),
        train=hp.augment,
        seed=hp.seed,
        crop_scale=hp.crop_scale,
    )
    batches = loader(dataset, hp, distributed.Distributed(), train=True)
    seen, began = 0, time.perf_counter()
    for images, _, _ in batches:  # the first batch's wait (workers starting) counts, as in an epoch
        seen += 0 if images is None else len(images)
        if time.perf_counter() - began > seconds:
            break
    return seen / (time.perf_counter() - began), batches.num_workers
