#!/usr/bin/env python3
"""Hyperparameter tuning on this machine with Optuna: the search SageMaker's tuner runs, locally.

    scripts/tune_local.py [--space seed1|seed2|SPACE.json] [--data DIR] [--workdir build/tuning]
                          [--trials 20] [--sampler tpe|random|grid] [--parallel N]
                          [--runner process|container] [--hp name=value ...]
                          [--storage postgresql+psycopg://user@host:5432/db] [--study-name NAME]

Each trial trains with the trainer (`python container/toolkit_entry_point.py`, or the
byoc-train image with --runner container) on a fresh /opt/ml tree under
WORKDIR/trials/NNNN/; its validation loss per epoch, read with SageMaker's
metric regex, drives the sampler and the median pruner. Diverging trials
(NaN/inf loss) are pruned. Rerunning the same command resumes the study from
WORKDIR/study.db (also after a kill); a larger --trials extends it. With
--storage (a PostgreSQL URL), several tuners on one or more machines share one
study, each with its own --workdir: the trials are divided between them.

Without --data the synthetic sample set is made and small, fast settings apply
(resnet18, no pretrained weights, 64 px, 3 epochs); --hp overrides any
hyperparameter for every trial and takes a searched one out of the search.
Results: WORKDIR/leaderboard.csv, best_params.json, *.png; the table is printed.
See scripts/launch/local_tuning/ for the details.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import container_path  # noqa: F401  (first: container/ on the import path)
from contract.spec import presets
from contract.spec.search_space import SearchSpaceError
from launch import local_tuning

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="image folder or archive (default: make the sample data set)")
    parser.add_argument("--workdir", type=Path, default=ROOT / "build" / "tuning")
    parser.add_argument(
        "--hp",
        nargs="+",
        action="extend",
        default=[],
        metavar="NAME=VALUE",
        help="hyperparameter for every trial, e.g. --hp epochs=3 backbone=resnet18",
    )
    parser.add_argument(
        "--enqueue",
        action="append",
        default=[],
        metavar="NAME=VALUE[,NAME=VALUE]",
        help="parameters to try first, e.g. --enqueue lr=0.01,batch-size=64 (once per study)",
    )
    local_tuning.add_arguments(parser)
    args = parser.parse_args(argv)

    # SIGTERM (kill, a CI timeout) stops like Ctrl-C: running trials stopped, results written
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        overrides = local_tuning.parse_overrides(args.hp)
        enqueue = [local_tuning.parse_overrides(item.split(",")) for item in args.enqueue]
        data = args.data
        if data is None:
            import make_sample_data

            data = args.workdir.resolve() / "sample-data" / "dogImages"
            if not data.is_dir():
                make_sample_data.make(data)
            overrides = {**presets.TUNING_SAMPLE, **overrides}  # quick on the sample data
            print(f"sample data in {data}; settings {', '.join(f'{k}={v}' for k, v in overrides.items())}")
        result = local_tuning.run_study(
            args.space,
            data,
            args.workdir,
            args.trials,
            sampler=args.sampler,
            parallel=args.parallel,
            runner=args.runner,
            fixed_overrides=overrides,
            seed=args.seed,
            pruner=args.pruner,
            grid_points=args.grid_points,
            enqueue=enqueue,
            image=args.image,
            keep_models=args.keep_models,
            storage=local_tuning.storage_url(args),
            study_name=args.study_name,
            heartbeat_interval=args.heartbeat_interval,
            grace_period=args.grace_period,
        )
    except (local_tuning.TuningError, SearchSpaceError) as exc:
        print(f"tune_local: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted; rerun the same command to resume ({args.workdir})", file=sys.stderr)
        return 130
    local_tuning.print_summary(result)
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
