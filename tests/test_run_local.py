"""The README's first command, end to end: images, sample data, train, serve, classify."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_run_local_on_the_sample_data(engine, tmp_path):
    result = subprocess.run([sys.executable, "scripts/run_local.py", "--workdir", str(tmp_path)], cwd=ROOT,
                            env=engine["env"], capture_output=True, text=True, timeout=1800)
    out = result.stdout
    assert result.returncode == 0, out[-4000:] + result.stderr[-2000:]
    for stage in ("images", "data", "train", "serve", "classify"):
        assert re.search(rf"^  {stage}\s+done in \d+ s$", out, re.MULTILINE), stage
    assert float(re.search(r"test accuracy\s+([0-9.]+)", out).group(1)) > 0.5  # 4 classes: chance is 0.25
    assert float(re.search(r"endpoint accuracy\s+([0-9.]+)", out).group(1)) > 0.5
    assert float(re.search(r"p50 latency\s+([0-9.]+) ms", out).group(1)) > 0
    for label in ("evaluation report", "confusion matrix", "model"):
        path = Path(re.search(rf"^  {label}\s+(\S+)$", out, re.MULTILINE).group(1))
        assert path.exists() and (path.is_dir() or path.stat().st_size > 0), label
    leftover = subprocess.run([engine["cli"], "ps", "-a", "--format", "{{.Names}}"], env=engine["env"],
                              capture_output=True, text=True).stdout
    assert "byoc-serve-" not in leftover


def test_a_failing_stage_stops_the_run(engine, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    result = subprocess.run([sys.executable, "scripts/run_local.py", "--workdir", str(tmp_path / "w"),
                             "--data", str(empty)], cwd=ROOT, env=engine["env"], capture_output=True, text=True,
                            timeout=1800)
    assert result.returncode != 0
    assert re.search(r"^  train\s+FAILED", result.stdout, re.MULTILINE), result.stdout[-3000:]
    assert "no images found in training data" in result.stdout
