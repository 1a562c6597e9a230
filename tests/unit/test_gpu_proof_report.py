"""The GPU proof's verdict (scripts/benchmarks/gpu_proof/report.py): one failed check fails the run, a
GPU-only check reads n/a without a GPU whatever its outcome, and the JSON says the same as the table."""

from __future__ import annotations

import json

from benchmarks.gpu_proof.report import FAIL, NO_GPU, PASS, Report


def test_a_failed_check_fails_the_run_and_the_table_says_so(tmp_path):
    report = Report(gpu=True)
    report.figure("training", "images/s", 1234.5678)
    assert report.check("training", "device", True, "cuda")
    assert not report.check("serving", "agreement", False, "90%")
    assert not report.passed
    table = report.markdown()
    assert "| training | images/s | 1,234.6 |  |" in table
    assert f"| serving | agreement | 90% | {FAIL} |" in table
    assert table.endswith("2 checks, 1 failed: FAIL")
    document = json.loads(report.write(tmp_path).read_text())
    assert document["passed"] is False and [row["check"] for row in document["rows"]] == ["", PASS, FAIL]
    assert (tmp_path / "gpu_proof.md").read_text() == table + "\n"


def test_without_a_gpu_gpu_only_checks_are_not_applicable_but_others_count():
    report = Report(gpu=False)
    report.check("profiler", "CUDA kernels", False, "0", gpu_only=True)
    assert report.passed and report.rows[-1].check == NO_GPU
    report.check("profiler", "trace written", False, "0 events")
    assert not report.passed


def test_a_step_that_could_not_run_is_a_failure_on_one_line():
    report = Report(gpu=True)
    report.failed("serving", "fp16: server", "RuntimeError: serve exited with 1:\nTraceback ...\n  | more")
    assert not report.passed
    assert "\n" not in report.rows[-1].value
    assert "| RuntimeError: serve exited with 1: Traceback ... / more | FAIL |" in report.markdown()


def test_each_row_is_written_at_once_so_a_killed_run_leaves_its_findings(tmp_path):
    report = Report(gpu=True, folder=tmp_path)
    report.check("training", "device", True, "cuda")
    assert json.loads((tmp_path / "gpu_proof.json").read_text())["rows"][0]["value"] == "cuda"
    report.failed("serving", "fp16: server", "timed out")
    document = json.loads((tmp_path / "gpu_proof.json").read_text())
    assert document["passed"] is False and len(document["rows"]) == 2
