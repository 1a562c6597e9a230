#!/usr/bin/env python3
"""Serving at the machine's limit, per precision (SAGEMAKER_MODEL_PRECISION), in one run.

    .venv/bin/python scripts/bench.py precision [--precisions fp32,bf16,int8] [--images 32] [--cell-seconds 30]

Prints the CPU's instruction sets, the decode cost of a 500x375 JPEG, and per
precision: the in-process forward limit (best batch size, channels-last), the
endpoint's req/s at concurrency 1, 4, 16 with p50/p99, and top-1 agreement with
fp32; then a verdict against issue #16's goals. The parts live in benchmarks/harness/.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import container_path  # noqa: F401  (first: container/ on the import path)
from benchmarks.harness import limits, precisions, tables, workload  # noqa: E402
from contract import artifact  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precisions", default="fp32,bf16,int8")
    parser.add_argument("--images", type=int, default=32, help="500x375 JPEGs sent (and checked for agreement)")
    parser.add_argument("--cell-seconds", type=float, default=30.0, help="time cap per concurrency cell")
    parser.add_argument("--limit-seconds", type=float, default=3.0, help="per batch size, in-process")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_precision."))
    try:
        images = workload.make_photos(args.images, seed=0)
        model_dir = workload.make_model_dir(work / "model", images[:2])
        calibration = work / "calibration-source"
        calibration.mkdir()
        for index, data in enumerate(workload.make_photos(artifact.CALIBRATION_IMAGES, seed=1)):
            (calibration / f"{index:03d}.jpg").write_bytes(data)
        prep = artifact.preprocessing(artifact.read_config(model_dir))
        artifact.write_calibration(model_dir, sorted(calibration.iterdir()), prep)
        counts = {1: 64, 4: 128, 16: 384}  # each cell also ends at --cell-seconds
        rows = precisions.run(
            model_dir, images, args.precisions.split(","), counts, args.cell_seconds, args.limit_seconds, work
        )
        print("\n" + tables.precision_table(rows, limits.cpu_flags(), limits.decode_ms(images[0], prep), len(images)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
