"""The generated tables' places in the manual: between marker comments,

    <!-- generated: NAME -->
    | ... |
    <!-- end generated -->

where NAME is one of tables.TABLES. Each table has exactly one place, in the page named here.
"""

from __future__ import annotations

import re
from pathlib import Path

from manual.tables import TABLES

PAGES = {
    "hyperparameters": "docs/training.md",
    "metric-lines": "docs/training.md",
    "server-environment": "docs/serving.md",
    "server-metrics": "docs/serving.md",
}
MARKED = re.compile(r"(<!-- generated: ([\w-]+) -->\n)(.*?)(<!-- end generated -->)", re.DOTALL)


class PageError(Exception):
    """A page lacks a table's markers, has them twice, or names an unknown table."""


def _places(text: str, page: str) -> dict[str, re.Match]:
    found: dict[str, re.Match] = {}
    for match in MARKED.finditer(text):
        name = match.group(2)
        if name not in TABLES or PAGES[name] != page:
            raise PageError(f"{page}: a generated table {name!r} that {__name__}.PAGES does not place there")
        if name in found:
            raise PageError(f"{page}: the table {name!r} is marked twice")
        found[name] = match
    for name, where in PAGES.items():
        if where == page and name not in found:
            raise PageError(f"{page}: no <!-- generated: {name} --> ... <!-- end generated --> markers")
    return found


def render(text: str, page: str) -> str:
    """The page with every generated table it holds rendered afresh."""
    places = _places(text, page)
    return MARKED.sub(lambda m: m.group(1) + TABLES[m.group(2)]() + m.group(4), text) if places else text


def stale(root: Path) -> list[tuple[str, str, str, str]]:
    """(table, page, text in the page, text the code makes) for every table that differs, in order."""
    found = []
    for page in dict.fromkeys(PAGES.values()):
        places = _places((root / page).read_text(), page)
        for name, match in places.items():
            want = TABLES[name]()
            if match.group(3) != want:
                found.append((name, page, match.group(3), want))
    return found


def write(root: Path) -> list[str]:
    """Rewrites the pages whose tables differ; -> the pages rewritten."""
    written = []
    for page in dict.fromkeys(PAGES.values()):
        path = root / page
        text = path.read_text()
        new = render(text, page)
        if new != text:
            path.write_text(new)
            written.append(page)
    return written
