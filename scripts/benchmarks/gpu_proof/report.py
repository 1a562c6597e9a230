"""The proof's one table: figures (a value) and checks (a value and PASS, FAIL or n/a), printed as
markdown and written as JSON; the run fails when any check fails."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

PASS, FAIL = "PASS", "FAIL"
NO_GPU = "n/a (no GPU)"


@dataclass
class Row:
    part: str  # training, profiler, serving
    what: str
    value: str
    check: str = ""  # "" for a figure


@dataclass
class Report:
    gpu: bool
    about: dict = field(default_factory=dict)  # the machine, versions, the settings
    rows: list[Row] = field(default_factory=list)
    # written again after every row: a run killed at its time limit still leaves what it found
    folder: Path | None = None

    def add(self, row: Row) -> None:
        self.rows.append(row)
        if self.folder is not None:
            self.write(self.folder)

    def figure(self, part: str, what: str, value) -> None:
        self.add(Row(part, what, _text(value)))

    def check(self, part: str, what: str, ok: bool, value="", gpu_only: bool = False) -> bool:
        """A check; one that only means something on a GPU reads n/a without one (its code still ran)."""
        status = NO_GPU if gpu_only and not self.gpu else (PASS if ok else FAIL)
        self.add(Row(part, what, _text(value), status))
        return ok

    def failed(self, part: str, what: str, reason: str) -> None:
        """A step that could not run at all: a failed check, with why."""
        self.add(Row(part, what, " ".join(reason.split())[:300], FAIL))

    @property
    def passed(self) -> bool:
        return all(row.check != FAIL for row in self.rows)

    def markdown(self) -> str:
        lines = [
            "| part | what | value | check |",
            "|---|---|---|---|",
            *(f"| {r.part} | {r.what} | {r.value.replace('|', '/')} | {r.check} |" for r in self.rows),
        ]
        failed = sum(r.check == FAIL for r in self.rows)
        checks = sum(bool(r.check) for r in self.rows)
        lines.append("")
        lines.append(f"{checks} checks, {failed} failed: {'PASS' if self.passed else 'FAIL'}")
        return "\n".join(lines)

    def write(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "gpu_proof.json"
        document = {"passed": self.passed, "gpu": self.gpu, "about": self.about, "rows": [asdict(r) for r in self.rows]}
        path.write_text(json.dumps(document, indent=2) + "\n")
        (folder / "gpu_proof.md").write_text(self.markdown() + "\n")
        return path


def _text(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)
