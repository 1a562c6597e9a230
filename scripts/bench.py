#!/usr/bin/env python3
"""Runs one benchmark (scripts/benchmarks/NAME.py) with its own options; each prints its own table.

    .venv/bin/python scripts/bench.py --list
    .venv/bin/python scripts/bench.py NAME [--help | its options]

docs/benchmarks.md has the measured tables and the command line behind each."""

from __future__ import annotations

import importlib
import sys

import container_path  # noqa: F401  (first: container/ on the import path)
from benchmarks import BENCHMARKS


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        argv = ["--list"]
    if argv[0] == "--list":
        width = max(map(len, BENCHMARKS))
        for name, (_, summary) in BENCHMARKS.items():
            print(f"{name:<{width}}  {summary}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in BENCHMARKS and name.replace("_", "-") in BENCHMARKS:
        name = name.replace("_", "-")
    if name not in BENCHMARKS:
        print(f"bench.py: no benchmark {name!r}; one of: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"benchmarks.{BENCHMARKS[name][0]}")
    sys.argv = [f"bench.py {name}", *rest]  # the benchmark's own parser reads these; its usage names it
    return module.main() or 0


if __name__ == "__main__":
    sys.exit(main())
