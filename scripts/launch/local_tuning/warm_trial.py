"""A trainer process started ahead of its trial: imports done, waiting for the trial's settings.

The local tuner's process runner keeps one per slot, started while the
previous trial runs. A trial then begins with torch, the trainer and
torch._dynamo (which every torch optimiser imports on first use) already
imported: about 2.5 s of the 4 s a feature-cached trial costs on 2 cores.

Protocol: one JSON line on stdin, {"argv": [...], "env": {...}}; the
environment is updated and the trainer's main runs with argv, exactly as
`python container/toolkit_entry_point.py ARGV` would. End of input without a line means the
spare is not needed: exit 0 at once. The slot's settings that are read at
import (OMP_NUM_THREADS, CUDA_VISIBLE_DEVICES) come with the process's own
environment, not the request.
"""

import json
import os
import sys

import torch._dynamo  # noqa: F401  (what the optimiser would import during the trial)

from trainer import job  # the checkout's container/ is on PYTHONPATH (runners.ProcessRunner.slot_env)

if __name__ == "__main__":
    line = sys.stdin.readline()
    if not line.strip():
        sys.exit(0)
    request = json.loads(line)
    os.environ.update(request["env"])
    job.run_and_exit(request["argv"])  # as container/toolkit_entry_point.py
