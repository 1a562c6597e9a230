"""The training image's ENTRYPOINT: `docker run IMAGE train`, as SageMaker starts it.

It runs the sagemaker-training toolkit's `train` (which runs toolkit_entry_point.py
with the job's hyperparameters) and adds what the toolkit lacks:
  * SIGTERM (StopTrainingJob, spot interruption) reaches the trainer, which
    checkpoints and exits 0; the toolkit itself does not forward signals, and
    killing it would break the trainer's log pipe mid-checkpoint;
  * `docker run -v DIR:/opt/ml` works: the program is put back into the
    mounted /opt/ml/code, and a single host name resolves without --hostname.
Any other command (`bash`, `python ...`) is run as given.

A failed job's reason needs nothing here: the trainer writes its one line to
/opt/ml/output/failure itself, and the toolkit writes its own report only where
that file does not exist (trainer/runtime.failure_file).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

from contract.spec import paths

PROGRAM_DIR = Path(__file__).resolve().parent.parent
OPT_ML = paths.base_dir()  # SAGEMAKER_BASE_DIR, as the toolkit reads it


def ensure_code_dir() -> None:
    """Mirror the toolkit: it only looks in /opt/ml/code, which a mount may hide."""
    code = OPT_ML / paths.CODE_DIR
    hp_file = OPT_ML / paths.CONFIG_DIR / paths.HYPERPARAMETERS_FILE
    user_code = hp_file.is_file() and "sagemaker_submit_directory" in json.loads(hp_file.read_text() or "{}")
    if user_code or (code.is_dir() and any(code.iterdir())):
        return
    code.mkdir(parents=True, exist_ok=True)
    shutil.copy(PROGRAM_DIR / paths.TOOLKIT_ENTRY_POINT, code / paths.TOOLKIT_ENTRY_POINT)


def ensure_hosts_resolve() -> None:
    """A lone host (algo-1) resolves to this container when Docker was not told its name."""
    config = OPT_ML / paths.CONFIG_DIR / paths.RESOURCE_CONFIG_FILE
    if not config.is_file():
        return
    hosts = json.loads(config.read_text()).get("hosts", [])
    if len(hosts) != 1:
        return
    try:
        socket.gethostbyname(hosts[0])
    except OSError:
        with open("/etc/hosts", "a") as f:
            f.write(f"127.0.0.1 {hosts[0]}\n")


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def run_training() -> int:
    ensure_code_dir()
    ensure_hosts_resolve()
    (OPT_ML / paths.FAILURE_FILE).unlink(missing_ok=True)  # a new job: an earlier run's reason is none of it
    toolkit = subprocess.Popen(["train"])

    def forward(signum, frame):
        targets = children(toolkit.pid) or [toolkit.pid]
        print(f"[entry] forwarding signal {signum} to the trainer ({targets})", flush=True)
        for pid in targets:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    return toolkit.wait()


def main(argv: list[str]) -> int:
    if not argv or argv[0] == "train":
        return run_training()
    os.execvp(argv[0], argv)
    return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
