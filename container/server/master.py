"""gunicorn's master, as `serve` starts it (`python -m server.master`, the allocator chosen).

The settings are read here, once, before gunicorn starts: a bad value stops the server with
a one-line reason (exit status 2) before anything listens or forks. The same frozen Settings
then reach gunicorn's configuration (gunicorn_config.config) and, through the fork, every
worker's Flask app (create_app): no worker reads the environment again, so the master and
its workers cannot disagree on a number the host's probes (cores, memory, GPUs) worked out.
"""

from __future__ import annotations

import logging
import os
import sys

from gunicorn.app.base import BaseApplication

from server import allocator, rundir
from server.settings import Settings


class Master(BaseApplication):
    """gunicorn with its configuration and its app made from `settings`, not from a config file
    or the command line."""

    def __init__(self, settings: Settings):
        self.settings = settings
        super().__init__()  # calls load_config

    def load_config(self) -> None:
        from server.gunicorn_config import config  # after rundir.prepare: it imports server.metrics

        for name, value in config(self.settings).items():
            self.cfg.set(name, value)

    def load(self):
        # In each worker, after the fork (gunicorn loads the app there): the master's settings.
        from server.app import create_app

        return create_app(self.settings)


def main() -> int:
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        print(f"serve: {exc}", file=sys.stderr, flush=True)
        return 2
    # For what reads the environment itself, never our code: prometheus_client its folder
    # (PROMETHEUS_MULTIPROC_DIR), and a model's inference.py what it likes, resolved as here.
    os.environ.update(settings.to_env())
    print(f"serve: {settings}; allocator: {allocator.described(os.environ)}", flush=True)
    rundir.prepare(settings)  # or SystemExit with a one-line reason; before server.metrics is imported
    from server.app import LOG_FORMAT

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    Master(settings).run()  # returns only through SystemExit, when gunicorn stops
    return 0


if __name__ == "__main__":
    sys.exit(main())
