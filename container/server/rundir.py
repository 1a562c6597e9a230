"""The server's scratch directory (settings.run_dir): the multi-model registry
and prometheus_client's per-process files. Emptied when the server starts
(files of an earlier, killed server would count as loaded models and as
requests) and removed when it exits; gunicorn's master calls both.

Only a folder this server claimed is ever emptied or removed: claiming writes
MARKER into it, saying whether the server made the folder (removed at exit) or
found it empty (emptied at exit, left in place). A folder that holds files but no
marker (SAGEMAKER_SERVER_RUN_DIR or PROMETHEUS_MULTIPROC_DIR pointed at /opt/ml
by mistake), a symbolic link (the default lies in the shared /tmp), or one
another user owns is refused: prepare exits with a one-line reason before the
server listens. Refused rather than worked around in a fresh subfolder: the
operator named that folder, and a server that silently writes elsewhere hides
the mistake (and would litter the named folder with subfolders).

prepare runs before server.metrics is imported: prometheus_client opens its
files in PROMETHEUS_MULTIPROC_DIR as the metrics are defined.
"""

from __future__ import annotations

import os
import shutil
import stat

from server.settings import Settings

MARKER = ".byoc-server-scratch"
CREATED = "created"  # the marker's text: the server made the folder, and removes it at exit
ADOPTED = "adopted"  # it was there, empty: emptied at exit, the folder itself stays


class Refused(ValueError):
    """A folder the server must not empty; the message names it and says why."""


def _owner(directory: str) -> str | None:
    """CREATED or ADOPTED where this server's marker is in `directory`, else None."""
    try:
        with open(os.path.join(directory, MARKER), encoding="ascii", opener=_no_follow) as marker:
            text = marker.read(16).strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if text in (CREATED, ADOPTED) else None


def _no_follow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW)


def _empty_contents(directory: str, keep: str | None = None) -> None:
    for entry in os.scandir(directory):
        if entry.name == keep:
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                pass


def claim(directory: str, variable: str) -> None:
    """Make `directory` this server's, empty but for its marker; Refused (naming `variable`) where it is not ours to empty."""
    try:
        found = os.lstat(directory)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(os.path.abspath(directory)), exist_ok=True)
        os.mkdir(directory, 0o700)
        _write_marker(directory, CREATED)
        return
    if stat.S_ISLNK(found.st_mode):
        raise Refused(f"{variable}={directory} is a symbolic link: name the folder itself")
    if not stat.S_ISDIR(found.st_mode):
        raise Refused(f"{variable}={directory} is not a folder")
    if found.st_uid != os.getuid():
        raise Refused(f"{variable}={directory} belongs to another user (uid {found.st_uid})")
    owner = _owner(directory)
    if owner is None:
        if any(os.scandir(directory)):
            raise Refused(
                f"{variable}={directory} holds files this server did not make; "
                "name a new or empty folder (the server empties it at start)"
            )
        _write_marker(directory, ADOPTED)
        return
    _empty_contents(directory, keep=MARKER)  # a killed server's files


def _write_marker(directory: str, owner: str) -> None:
    fd = os.open(os.path.join(directory, MARKER), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as marker:
        marker.write(owner + "\n")


def release(directory: str) -> None:
    """Remove `directory` (or empty it, where it was there before) if this server claimed it; else leave it."""
    owner = _owner(directory)
    if owner == CREATED:
        shutil.rmtree(directory, ignore_errors=True)
    elif owner == ADOPTED:
        _empty_contents(directory, keep=MARKER)
        os.unlink(os.path.join(directory, MARKER))  # last: an interrupted release stays ours to finish


def _inside(path: str, folder: str) -> bool:
    return os.path.commonpath([os.path.abspath(path), os.path.abspath(folder)]) == os.path.abspath(folder)


def prepare(settings: Settings) -> None:
    """Claim the scratch folders, or exit with a one-line reason (SystemExit: gunicorn's config loader
    passes it on, where any other exception would print a traceback)."""
    try:
        claim(settings.run_dir, "SAGEMAKER_SERVER_RUN_DIR")
    except (Refused, OSError) as exc:
        raise SystemExit(f"serve: {exc}") from None
    try:
        if _inside(settings.metrics_dir, settings.run_dir):
            os.makedirs(settings.metrics_dir, exist_ok=True)  # inside a folder just claimed, so emptied
        else:
            claim(settings.metrics_dir, "PROMETHEUS_MULTIPROC_DIR")
    except (Refused, OSError) as exc:
        release(settings.run_dir)  # a server that does not start leaves nothing behind
        raise SystemExit(f"serve: {exc}") from None
    if settings.multi_model:
        os.makedirs(settings.registry_dir, exist_ok=True)


def remove(settings: Settings) -> None:
    release(settings.run_dir)
    if not _inside(settings.metrics_dir, settings.run_dir):
        release(settings.metrics_dir)
