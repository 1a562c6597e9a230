"""The tuner's command-line arguments (scripts/tune_local.py, and sm.py tune --local)."""

from __future__ import annotations

from contract.spec import hyperparameters, images
from contract.spec import search_space as spaces
from storage_url import STORAGE_ENV, STUDY_NAME
from storage_url import from_environment as storage_env

from .errors import TuningError
from .runners import RUNNERS
from .space import GRID_POINTS, PRUNERS, SAMPLERS
from .storage import GRACE_PERIOD_S, HEARTBEAT_INTERVAL_S


def parse_overrides(items: list[str]) -> dict:
    """['epochs=3', 'lr=0.01'] -> {'epochs': 3, 'lr': 0.01}"""
    try:
        return hyperparameters.parse_assignments(items, typed=True)
    except hyperparameters.HyperparameterError as exc:
        raise TuningError(str(exc)) from None


def add_arguments(parser) -> None:
    parser.add_argument(
        "--space",
        default="seed1",
        help=f"search space: a preset ({', '.join(spaces.PRESETS)}) or a JSON file (default seed1)",
    )
    parser.add_argument("--trials", type=int, default=20, help="trials in the study (default 20)")
    parser.add_argument("--sampler", choices=SAMPLERS, default="tpe", help="tpe (Bayesian, default), random, grid")
    parser.add_argument(
        "--grid-points",
        type=int,
        default=GRID_POINTS,
        help=f"grid points per integer/continuous range (default {GRID_POINTS})",
    )
    parser.add_argument(
        "--parallel", type=int, default=None, help="trials at once (default and most: one per GPU, or one per 2 cores)"
    )
    parser.add_argument(
        "--runner",
        choices=RUNNERS,
        default="process",
        help="process: python container/toolkit_entry_point.py; container: the byoc-train image",
    )
    parser.add_argument("--pruner", choices=PRUNERS, default="median", help="early stopping of trials (default median)")
    parser.add_argument("--seed", type=int, default=0, help="sampler seed")
    parser.add_argument("--image", default=images.train_image(), help="training image for --runner container")
    parser.add_argument(
        "--keep-models", action="store_true", help="keep every completed trial's model, not only the best"
    )
    add_storage_arguments(parser)


def add_storage_arguments(parser, heartbeat: bool = True) -> None:
    """--storage and --study-name (sm.py tune --local too); heartbeat: the heartbeat's settings as well."""
    parser.add_argument(
        "--storage",
        metavar="URL",
        help="a database shared by several tuners, e.g. postgresql+psycopg://tuner@db-host:5432/tuning "
        f"(default: ${STORAGE_ENV}, else the workdir's study.db; the password from PGPASSWORD or ~/.pgpass)",
    )
    parser.add_argument("--study-name", default=STUDY_NAME, help=f"the study in the storage (default {STUDY_NAME})")
    if heartbeat:
        parser.add_argument(
            "--heartbeat-interval",
            type=int,
            default=HEARTBEAT_INTERVAL_S,
            metavar="S",
            help=f"seconds between a tuner's heartbeats for its running trials (default {HEARTBEAT_INTERVAL_S})",
        )
        parser.add_argument(
            "--grace-period",
            type=int,
            default=GRACE_PERIOD_S,
            metavar="S",
            help=f"seconds without a heartbeat after which another tuner re-queues a trial (default {GRACE_PERIOD_S})",
        )


def storage_url(args) -> str | None:
    """--storage, else $TUNING_STORAGE_URL, else None (the workdir's own SQLite file)."""
    return args.storage or storage_env()
