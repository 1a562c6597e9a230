"""The README documents what the code defines."""

from __future__ import annotations

import re

from contract.spec.hyperparameters import HYPERPARAMETERS
from helpers.training import ROOT


def test_every_hyperparameter_is_in_the_readme_table():
    readme = (ROOT / "README.md").read_text()
    table = set(re.findall(r"^\| `([a-z-]+)` \|", readme, re.MULTILINE))
    assert {hp.name for hp in HYPERPARAMETERS} <= table


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "bash scripts/test.sh" in readme
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
