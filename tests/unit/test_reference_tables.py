"""The manual's reference tables say what the code defines, cell for cell (scripts/docs_tables.py
generates them: hyperparameters, metric lines, the server's environment and Prometheus metrics)."""

from __future__ import annotations

import dataclasses
import difflib
import re
import shutil

import pytest

from contract.spec.hyperparameters import HYPERPARAMETERS
from helpers.training import ROOT
from manual import pages
from server import settings
from server.settings import VARIABLE, VARIABLES, Settings


def test_every_generated_table_matches_the_code():
    differing = pages.stale(ROOT)
    if differing:
        name, page, have, want = differing[0]
        diff = "".join(difflib.unified_diff(have.splitlines(True), want.splitlines(True), page, "code"))
        pytest.fail(f"{page}: the table {name!r} differs from the code; run scripts/docs_tables.py --write\n{diff}")


@pytest.fixture
def pages_copy(tmp_path):
    for page in set(pages.PAGES.values()):
        (tmp_path / page).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / page, tmp_path / page)
    pages.write(tmp_path)  # up to date, whatever the checkout's pages say
    return tmp_path


def test_the_check_sees_one_changed_cell(pages_copy):
    page = pages_copy / "docs" / "serving.md"
    text = page.read_text()
    assert text.count("| `SAGEMAKER_BATCH_SIZE` | 8 |") == 1
    page.write_text(text.replace("| `SAGEMAKER_BATCH_SIZE` | 8 |", "| `SAGEMAKER_BATCH_SIZE` | 16 |"))
    assert [name for name, *_ in pages.stale(pages_copy)] == ["server-environment"]
    assert pages.write(pages_copy) == ["docs/serving.md"]
    assert page.read_text() == text and not pages.stale(pages_copy)


def test_a_page_without_a_tables_markers_is_refused(pages_copy):
    page = pages_copy / "docs" / "training.md"
    page.write_text(page.read_text().replace("<!-- generated: metric-lines -->", ""))
    with pytest.raises(pages.PageError, match="metric-lines"):
        pages.stale(pages_copy)


def test_each_server_variable_is_named_once_and_sets_one_field():
    assert [v.field for v in VARIABLES] == list(VARIABLE)  # no field twice
    assert set(VARIABLE) == {field.name for field in dataclasses.fields(Settings)}
    source = open(settings.__file__).read()
    named = {v.name: len(re.findall(rf"\b{v.name}\b", source)) for v in VARIABLES}
    assert named == {v.name: 1 for v in VARIABLES}


def test_each_hyperparameter_has_its_type_in_words():
    # a parser without a kind would show its function's name (_fraction) in the table
    assert not [hp.name for hp in HYPERPARAMETERS if hp.kind.startswith("_") or not hp.kind]
