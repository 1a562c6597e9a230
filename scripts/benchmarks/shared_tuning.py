#!/usr/bin/env python3
"""Shared tuning throughput: trials per hour of one tuner, then of several tuners on one study.

    .venv/bin/python scripts/bench.py shared-tuning --storage postgresql+psycopg://tuner@127.0.0.1:5432/tuning \
        [--trials 8] [--tuners 2] [--parallel 1] [--epochs 2] [--image-size 64]

Each tuner is a real `scripts/tune_local.py` process (runner "process") with its own workdir, all
of them on one study in the database `--storage` names (a PostgreSQL server you started; the
password from PGPASSWORD, or in the URL: it is never printed). First one tuner runs a study of
`--trials` trials, then `--tuners` tuners run a fresh study of the same size together; each study
gets a new name, so nothing is resumed. The trials are small (frozen, randomly initialised
ResNet18 at `--image-size` px, `--epochs` epochs of at most 8 steps, the sample data), so the
coordination's cost (claims, heartbeats, the shared pruner's reads) is not hidden by training;
random search, no pruning (a pruned trial would count as a cheap one).

On one machine, the tuners share its cores: set `--parallel` so that one tuner alone leaves cores
idle (e.g. 1 on 4 cores), or run the command's second half on several machines by hand.

Prints per run: tuners, trials finished, wall time, trials per hour, and how the trials were
divided between the tuners.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import container_path  # noqa: F401  (first: container/ on the import path)
import make_sample_data
import storage_url
from contract.spec import hyperparameters

ROOT = Path(__file__).resolve().parents[2]


def tuners_run(args, data: Path, root: Path, tuners: int) -> dict:
    import optuna

    name = f"bench-{tuners}x-{uuid.uuid4().hex[:6]}"
    hps = {
        "backbone": "resnet18",
        "pretrained": "none",
        "trainable-layers": 0,
        "image-size": args.image_size,
        "epochs": args.epochs,
        "max-steps-per-epoch": 8,
        "profiler": "false",
        "debugger": "false",
    }
    hps = {k: v for k, v in hps.items() if k in hyperparameters.BY_NAME}
    procs = []
    start = time.time()
    for i in range(tuners):
        workdir = root / name / f"tuner{i}"
        workdir.mkdir(parents=True)
        out = open(workdir.parent / f"tuner{i}.out", "w")
        cmd = [
            sys.executable,
            str(ROOT / "scripts" / "tune_local.py"),
            "--data",
            str(data),
            "--workdir",
            str(workdir),
            "--space",
            args.space,
            "--trials",
            str(args.trials),
            "--sampler",
            "random",
            "--pruner",
            "none",
            "--study-name",
            name,
            "--seed",
            str(args.seed),
            *(["--parallel", str(args.parallel)] if args.parallel else []),
            "--hp",
            *[f"{k}={v}" for k, v in hps.items()],
        ]
        env = {**os.environ, storage_url.STORAGE_ENV: args.storage}  # by environment: no password in `ps`
        procs.append((subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env), out, workdir))
    failed = []
    for proc, out, workdir in procs:
        try:
            rc = proc.wait(timeout=args.limit_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        out.close()
        if rc != 0:
            failed.append(f"{workdir.name} exited {rc}: see {out.name}")
    wall = time.time() - start
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=args.storage)
    finished = [t for t in study.trials if t.state.is_finished() and not t.user_attrs.get("interrupted")]
    per_tuner: dict[str, int] = {}
    for trial in finished:
        owner = str(trial.user_attrs.get("tuner", "?")).rsplit("/", 1)[-1]
        per_tuner[owner] = per_tuner.get(owner, 0) + 1
    return {
        "tuners": tuners,
        "trials": len(finished),
        "wall": wall,
        "per_hour": 3600 * len(finished) / wall,
        "split": ", ".join(f"{k}: {v}" for k, v in sorted(per_tuner.items())),
        "failed": failed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storage", default=storage_url.from_environment(), help="the shared database's URL")
    parser.add_argument("--trials", type=int, default=8, help="trials per study")
    parser.add_argument("--tuners", type=int, default=2, help="tuners sharing the second study")
    parser.add_argument("--parallel", type=int, default=1, help="trials at once per tuner")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--space", default=str(ROOT / "scripts" / "demo_space.json"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit-s", type=int, default=3600, help="the longest one tuner may run")
    args = parser.parse_args()
    if not args.storage:
        parser.error(f"--storage (or ${storage_url.STORAGE_ENV}) is required: a PostgreSQL URL")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = make_sample_data.make(root / "sample-data" / "dogImages")
        rows = [tuners_run(args, data, root, 1), tuners_run(args, data, root, args.tuners)]
    print(
        f"\nShared tuning study in {storage_url.redact(args.storage)}: {args.trials} trials per study, "
        f"{args.parallel} at a time per tuner, frozen ResNet18 at {args.image_size} px, {args.epochs} epochs, "
        f"random search, no pruning; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}"
    )
    print("| tuners | trials finished | wall time (s) | trials per hour | trials per tuner |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['tuners']} | {row['trials']} | {row['wall']:.0f} | {row['per_hour']:.0f} | {row['split']} |")
        for line in row["failed"]:
            print(f"  failed: {line}")


if __name__ == "__main__":
    main()
