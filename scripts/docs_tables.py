#!/usr/bin/env python3
"""The manual's reference tables, generated from the code that defines them.

    .venv/bin/python scripts/docs_tables.py            print every table
    .venv/bin/python scripts/docs_tables.py --write    rewrite them in docs/*.md
    .venv/bin/python scripts/docs_tables.py --check    exit 1 naming the first table that differs

The tables sit between `<!-- generated: NAME -->` and `<!-- end generated -->` in their
pages (manual/pages.py); edit the code they come from (manual/tables.py says which), not the
page. The server's tables import prometheus_client: run it with the test environment's python.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

import container_path  # noqa: F401  (first: container/ on the import path)
from manual import pages, tables  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", action="store_true", help="rewrite the tables in the pages")
    action.add_argument("--check", action="store_true", help="exit 1 if a page's table differs from the code's")
    args = parser.parse_args()
    if args.write:
        for page in pages.write(ROOT):
            print(f"rewrote {page}")
        return 0
    if args.check:
        differing = pages.stale(ROOT)
        if not differing:
            return 0
        name, page, have, want = differing[0]
        print(f"{page}: the table {name!r} differs from the code (scripts/docs_tables.py --write):", file=sys.stderr)
        sys.stderr.writelines(difflib.unified_diff(have.splitlines(True), want.splitlines(True), page, "code"))
        return 1
    for name, render in tables.TABLES.items():
        print(f"<!-- generated: {name} ({pages.PAGES[name]}) -->\n{render()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
