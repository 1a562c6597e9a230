"""What `.venv/bin/mypy` (no arguments: .ci/run's type check) checks, as mypy itself finds its files from
pyproject.toml: every Python file under container/ and scripts/. A caller
outside the checked files (a benchmark calling a function whose signature had changed) once reached CI."""

from __future__ import annotations

import io
from pathlib import Path

from helpers.training import ROOT


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
    left_out = sorted(path.relative_to(ROOT).as_posix() for path in every - checked)
    assert not left_out, f"not type-checked: {left_out}"
    for named in ("scripts/gpu_proof.py", "scripts/benchmarks/runtimes.py", "scripts/sm.py", "scripts/run_local.py"):
        assert ROOT / named in checked
