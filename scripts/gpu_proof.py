#!/usr/bin/env python3
"""The GPU proof: the trainer and the server on this machine's GPU, one table, non-zero on any failed check.

    python3 scripts/gpu_proof.py --out DIR          # a CUDA machine (docs/benchmarks.md, "GPU proof")
    python3 scripts/gpu_proof.py --tiny --out DIR   # a CPU: what CI runs (tests/process/test_gpu_proof.py)

The work is in scripts/benchmarks/gpu_proof/; the wheels a bare CUDA machine lacks come from
scripts/gpu_proof_wheels.sh."""

from __future__ import annotations

import sys

import container_path  # noqa: F401  (first: container/ on the import path)
from benchmarks.gpu_proof import main

if __name__ == "__main__":
    sys.exit(main())
