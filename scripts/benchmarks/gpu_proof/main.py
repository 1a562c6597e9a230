"""The command line of the GPU proof: one run, one table, exit status 0 only when every check passed.

python3 scripts/gpu_proof.py --out DIR          # on a CUDA machine, within 8 minutes
python3 scripts/gpu_proof.py --tiny --out DIR   # on a CPU: CI's run, GPU-only checks n/a
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tarfile
import tempfile
import time
import traceback
from pathlib import Path

import torch

from benchmarks.gpu_proof import serving, training
from benchmarks.gpu_proof.profile import GPU, TINY, Profile
from benchmarks.gpu_proof.report import Report


def about(profile: Profile, gpu: bool) -> dict:
    device = torch.cuda.get_device_name() if gpu else f"CPU ({platform.processor() or platform.machine()})"
    return {
        "device": device,
        "cuda": torch.version.cuda if gpu else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpus": len(os.sched_getaffinity(0)),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "profile": profile.__dict__,
    }


def keep_logs(work: Path, out: Path) -> None:
    """The trainers' and servers' logs in one archive beside the table: a one-shot GPU run's evidence."""
    with tarfile.open(out / "gpu_proof_logs.tar.gz", "w:gz") as tar:
        for path in sorted(work.rglob("*.log")):
            tar.add(path, arcname=str(path.relative_to(work)))


def step(report: Report, work: Path, out: Path, part: str, what, *args):
    """One half of the proof; an exception becomes a failed row, and the other half still runs.
    The logs so far go to `out` after each half (the table goes there after each row)."""
    began = time.perf_counter()
    print(f"gpu_proof: {part} ...", flush=True)
    try:
        return what(report, *args)
    except Exception as exc:
        report.failed(part, "unexpected error", f"{type(exc).__name__}: {exc} | {traceback.format_exc()[-400:]}")
        return None
    finally:
        keep_logs(work, out)
        print(f"gpu_proof: {part} took {time.perf_counter() - began:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="the CI setting: resnet18, 32 px, a few steps, c=4")
    parser.add_argument("--out", type=Path, default=Path("gpu-proof-out"), help="where the JSON, markdown and logs go")
    parser.add_argument("--work", type=Path, help="a folder for the data, /opt/ml trees and logs (default: temporary)")
    args = parser.parse_args(argv)
    gpu = torch.cuda.is_available()
    if not gpu and not args.tiny:
        print("gpu_proof: no CUDA device here; on a CPU run it with --tiny", file=sys.stderr)
        return 2
    profile = TINY if args.tiny else GPU
    args.out.mkdir(parents=True, exist_ok=True)
    report = Report(gpu, about(profile, gpu), folder=args.out)
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gpu-proof-") as temporary:
        work = args.work or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        data = training.make_data(work, profile)
        model_dir = step(report, work, args.out, "training", training.prove, work, data, profile)
        if model_dir is None:  # serving is proven on seeded random weights instead
            model_dir = serving.fallback_model_dir(work / "fallback-model", profile)
        deadline = began + profile.budget_s
        step(report, work, args.out, "serving", serving.prove, work, model_dir, data, profile, deadline)
        report.figure("proof", "wall time, s", time.monotonic() - began)
    print(f"\nGPU proof on {report.about['device']}, torch {torch.__version__}, profile {profile.name}\n")
    print(report.markdown(), flush=True)
    written = report.write(args.out)
    print(f"\nwritten: {written}", flush=True)
    return 0 if report.passed else 1
