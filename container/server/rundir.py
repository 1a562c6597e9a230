"""The server's scratch directory (settings.run_dir): the multi-model registry
and prometheus_client's per-process files. Emptied when the server starts
(files of an earlier, killed server would count as loaded models and as
requests) and removed when it exits; gunicorn's master calls both.

prepare runs before server.metrics is imported: prometheus_client opens its
files in PROMETHEUS_MULTIPROC_DIR as the metrics are defined.
"""

from __future__ import annotations

import os
import shutil

from server.settings import Settings


def _empty(directory: str) -> None:
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)


def prepare(settings: Settings) -> None:
    _empty(settings.run_dir)
    _empty(settings.metrics_dir)
    if settings.multi_model:
        os.makedirs(settings.registry_dir, exist_ok=True)


def remove(settings: Settings) -> None:
    shutil.rmtree(settings.run_dir, ignore_errors=True)
    if os.path.isdir(settings.metrics_dir):
        _empty(settings.metrics_dir)  # one the caller named (outside run_dir) stays, empty
