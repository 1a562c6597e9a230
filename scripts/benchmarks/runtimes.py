#!/usr/bin/env python3
"""Serving at the machine's limit, per runtime x precision (SAGEMAKER_MODEL_RUNTIME and
SAGEMAKER_MODEL_PRECISION), in one run: the successor of `precision`.

    .venv/bin/python scripts/bench.py runtimes [--modes torch:fp32,openvino:int8,...] [--trained-model DIR]
        [--images 32] [--cell-seconds 30] [--limit-seconds 3] [--backbone resnet50 --image-size 224]

Without --modes: every runtime x precision this machine supports (bf16 only with native bf16, the
runtimes whose packages are installed). Prints the CPU's flags, the in-process table (images/s at
the best batch and at batch 1), the endpoint's figures against the best in-process limit of the
same precision, top-1 agreement with fp32 torch, and the verdicts of issue #23's goals.
A tiny check: --images 4 --cell-seconds 2 --limit-seconds 0.2 --backbone resnet18 --image-size 64.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import container_path  # noqa: F401  (first: container/ on the import path)
from benchmarks.harness import limits, runtime_tables, runtimes, workload  # noqa: E402
from contract import artifact  # noqa: E402
from server.precision import NATIVE_BF16  # noqa: E402
from server.runtimes.choice import MODULES, PRECISIONS, installed  # noqa: E402
from server.settings import cpu_cores  # noqa: E402


def supported_modes(flags: set[str]) -> list[tuple[str, str]]:
    modes = []
    for runtime, precisions in (("torch", ("fp32", "bf16", "int8")), *PRECISIONS.items()):
        if runtime != "torch" and not all(installed(module) for module in MODULES[runtime]):
            print(f"  {runtime}: not installed, not measured", flush=True)
            continue
        modes += [(runtime, p) for p in precisions if p != "bf16" or flags & set(NATIVE_BF16)]
    return modes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default="", help="runtime:precision,... (default: all this machine supports)")
    parser.add_argument("--trained-model", type=Path, help="a trained model directory: agreement on its images too")
    parser.add_argument("--images", type=int, default=32, help="500x375 JPEGs sent (and checked for agreement)")
    parser.add_argument("--cell-seconds", type=float, default=30.0, help="time cap per concurrency cell")
    parser.add_argument("--limit-seconds", type=float, default=3.0, help="per batch size, in-process")
    parser.add_argument(
        "--workers",
        default="1",
        help="SAGEMAKER_MODEL_SERVER_WORKERS values, comma-separated (threads: cores / workers)",
    )
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args()
    flags = limits.cpu_flags()
    modes = (
        [tuple(mode.split(":", 1)) for mode in args.modes.split(",")]
        if args.modes
        else supported_modes(set(flags.split()))
    )
    work = Path(tempfile.mkdtemp(prefix="bench_runtimes."))
    try:
        images = workload.make_photos(args.images, seed=0)
        model_dir = workload.make_model_dir(work / "model", images[:2], args.backbone, args.image_size)
        calibration = work / "calibration-source"
        calibration.mkdir()
        for index, data in enumerate(workload.make_photos(artifact.CALIBRATION_IMAGES, seed=1)):
            (calibration / f"{index:03d}.jpg").write_bytes(data)
        prep = artifact.preprocessing(artifact.read_config(model_dir))
        artifact.write_calibration(model_dir, sorted(calibration.iterdir()), prep)
        counts = {1: 64, 16: 384}  # each cell also ends at --cell-seconds
        rows = runtimes.run(
            model_dir,
            args.trained_model,
            images,
            modes,
            counts,
            args.cell_seconds,
            args.limit_seconds,
            work,
            tuple(int(count) for count in args.workers.split(",")),
        )
        decode = limits.decode_ms(images[0], prep)["draft"]
        print("\n" + runtime_tables.runtime_table(rows, flags, decode, len(images), cpu_cores()))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
