#!/usr/bin/env python3
"""The whole workflow on this machine, in containers, with no AWS account.

    scripts/run_local.py [--data DIR_OR_ARCHIVE] [--workdir build/local] [--hp name=value ...]
                         [--trials 4] [--stage NAME ...] [--force] [--sagemaker-local] [--gpu]
                         [--weights-cache DIR] [--mlflow] [--storage URL] [--study-name NAME]

Stages, one line each with its time (a progress bar for trials and epochs on a terminal):
  images    build the training and serving images (layer cache reused)
  data      make the synthetic sample data set, unless --data is given
  tune      a small local tuning study (Optuna, inside the training image; --space)
  train     the final model with the best values, debugger hook and profiler on
  rules     SageMaker Debugger's rules over the training's tensors
  profile   the profiling report and the debugger loss plot
  serve     the serving container on 127.0.0.1 (SageMaker's `serve`)
  classify  the held-out images through /invocations; p50 latency
then a summary. --mlflow starts a local MLflow server (the training image's, on
127.0.0.1, its store in workdir/mlflow) for the run: the tuning study is a parent run
with a child run per trial, the final training one run, all read back in MLflow's UI;
the summary prints its URL, and the server is stopped at the end. --storage (or $TUNING_STORAGE_URL)
puts the tuning study in a shared database (PostgreSQL): other tuners on this or other machines,
started with the same URL and study name, share its trials. --data is given to every stage as SageMaker gives a channel: a
folder as the channel, an archive inside the channel folder (the trainer
unpacks it). ImageNet weights are cached on the host (--weights-cache), so they
are downloaded once. A stage whose inputs have not changed since the last run is
skipped (workdir/state.json); `--stage NAME` runs only that stage (its inputs
must exist), `--force` redoes everything. On failure, the failing stage's log
is printed. Only the Python standard library is needed on the host.
The stages are in scripts/workflow/.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import container_path  # noqa: F401  (first: container/ on the import path, for contract.spec)
import storage_url
from storage_url import STORAGE_ENV, STUDY_NAME
from workflow.run import STAGES, Workflow

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="image folder or archive (default: make the sample data set)")
    parser.add_argument("--workdir", type=Path, default=ROOT / "build" / "local")
    parser.add_argument("--hp", action="append", default=[], metavar="NAME=VALUE", help="training hyperparameter")
    parser.add_argument("--trials", type=int, default=4, help="local tuning trials")
    parser.add_argument(
        "--space",
        help="search space: seed1, seed2 or a JSON file "
        "(default: scripts/demo_space.json on the sample data, else seed1)",
    )
    parser.add_argument("--stage", action="append", choices=STAGES, help="run only this stage (repeatable)")
    parser.add_argument("--force", action="store_true", help="redo every stage")
    parser.add_argument("--sagemaker-local", action="store_true", help="train through SageMaker local mode")
    parser.add_argument("--gpu", action="store_true", help="GPU containers and the GPU serving image")
    parser.add_argument(
        "--weights-cache",
        type=Path,
        help="host folder for ImageNet weight files, mounted as the "
        "training image's torch hub cache (default: this machine's, ~/.cache/torch/hub/checkpoints)",
    )
    parser.add_argument(
        "--mlflow",
        action="store_true",
        help="track the tuning trials and the training in a local MLflow server (workdir/mlflow)",
    )
    parser.add_argument(
        "--storage",
        metavar="URL",
        help="the tuning study in a database that other tuners share, e.g. "
        f"postgresql+psycopg://tuner@db-host:5432/tuning (default ${STORAGE_ENV}, else the workdir's study.db; "
        "the password from PGPASSWORD)",
    )
    parser.add_argument(
        "--study-name", default=STUDY_NAME, help=f"the tuning study's name in the storage (default {STUDY_NAME})"
    )
    args = parser.parse_args()
    args.storage = args.storage or storage_url.from_environment()
    if args.data and not args.data.exists():
        parser.error(f"--data {args.data} does not exist")
    # a kill (not only Ctrl-C) unwinds too: the serving container and the MLflow server are removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    Workflow(args).run()


if __name__ == "__main__":
    main()
