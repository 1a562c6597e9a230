"""The GPU proof (scripts/gpu_proof.py): the CUDA training and serving paths, run for real on one GPU
in a few minutes, or with --tiny on a CPU (CI), where the GPU-only checks read "n/a (no GPU)".

  profile.py   the two sizes (GPU, tiny)
  training.py  the trainer as a subprocess: throughput against its limit, device, AMP, exact resume,
               the profiler's GPU samples and CUDA kernels
  serving.py   container/serve per precision: agreement, req/s against the forward limit, CUDA
               never initialised in gunicorn's master, a user inference.py touching CUDA at import
  loadgen.py   one load-generating process (standard library only)
  probe/       sitecustomize.py: the master's CUDA state, from inside it
  report.py    the table (markdown and JSON) and the verdict
  main.py      the command line
docs/benchmarks.md ("GPU proof") has the one-line command for a bare CUDA machine.
"""

from benchmarks.gpu_proof.main import main

__all__ = ["main"]
