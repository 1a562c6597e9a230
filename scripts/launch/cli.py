"""What sm.py's commands share whichever SDK runs them: --hp and --tag parsing, printing, local channels."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from contract.spec.hyperparameters import HyperparameterError, parse_assignments


def parse_hps(items: list[str]) -> dict:
    try:
        return parse_assignments(items)
    except HyperparameterError as exc:
        raise SystemExit(f"--hp: {exc}") from None


def parse_tags(items: list[str]) -> list[dict]:
    return [{"Key": k, "Value": v} for k, _, v in (item.partition("=") for item in items)]


def print_top(source: str, result: dict) -> None:
    top = result["predictions"]
    print(f"{source}: " + ", ".join(f"{p['label']} {p['probability']:.3f}" for p in top))


def local_channels(sources: dict, workdir: Path) -> dict:
    """Local mode mounts a file's whole folder as its channel (v2's LocalFileDataSource, v3's
    FileSystemDataSource), where SageMaker delivers the one object: a file (dogImages.zip, a .pth)
    gets a channel folder holding only it."""
    staged = dict(sources)
    for name, source in sources.items():
        path = Path(source) if source and not source.startswith(("s3://", "file://")) else None
        if path is None or not path.is_file():
            continue
        folder = workdir / "channels" / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        try:
            os.link(path.resolve(), folder / path.name)  # no copy of a large archive where a link will do
        except OSError:
            shutil.copy2(path, folder / path.name)
        staged[name] = str(folder)
    return staged
