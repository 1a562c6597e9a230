"""What `.venv/bin/mypy` (no arguments: .ci/run's type check) checks, as mypy itself finds its files from
pyproject.toml: every Python file under container/ and scripts/ except those left out by name. A caller
outside the checked files (a benchmark calling a function whose signature had changed) once reached CI."""

from __future__ import annotations

import io
from pathlib import Path

from helpers.training import ROOT

# pyproject.toml's [tool.mypy] exclude, and why: run_local.py's stages are mixins that use the attributes
# of the class that combines them (workflow/run.py), which mypy cannot see until they declare them
NOT_YET = ("scripts/run_local.py", "scripts/workflow/")


def mypy_files(monkeypatch) -> set[Path]:
    from mypy import config_parser, find_sources
    from mypy.options import Options

    monkeypatch.chdir(ROOT)  # [tool.mypy] files are relative to where mypy runs: the repository root
    options = Options()
    config_parser.parse_config_file(options, lambda: None, "pyproject.toml", io.StringIO(), io.StringIO())
    return {Path(source.path).resolve() for source in find_sources.create_source_list(options.files, options)}


def test_mypy_checks_every_python_file_of_the_programs_and_scripts(monkeypatch):
    checked = mypy_files(monkeypatch)
    every = {path.resolve() for folder in ("container", "scripts") for path in (ROOT / folder).rglob("*.py")}
    left_out = sorted(
        name for name in (path.relative_to(ROOT).as_posix() for path in every - checked) if not name.startswith(NOT_YET)
    )
    assert not left_out, f"not type-checked: {left_out}"
    for named in ("scripts/gpu_proof.py", "scripts/benchmarks/runtimes.py", "scripts/sm.py"):
        assert ROOT / named in checked
