"""Data-parallel training whose counts and metrics cover every rank, not rank 0's share.

Two torchrun processes on this machine (gloo), then two training containers
started as SageMaker starts a two-host job, training one model together.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from conftest import FAST_HPS, run_trainer
from contract import artifact

CORRUPT = b"\xff\xd8\xff\xe0 this is not really a jpeg"
# what every rank prints of its own share (trainer/train.py)
RANK_EPOCH = re.compile(r"\[rank (\d+)/(\d+) on (\S+)\] epoch (\d+): trained on (\d+) images, skipped (\d+) unreadable")
RANK_SKIPS = re.compile(r"\[rank (\d+)/(\d+) on (\S+)\] skipped (\d+) unreadable image\(s\) in its shards")


def data_with_corrupt_files(sample_data: Path, dest: Path) -> dict[str, set[str]]:
    """A copy of the sample data with unreadable files that the ranks share out unevenly.

    The evaluation shards are every 2nd image in sorted order, so three corrupt
    test files sorted first give rank 0 two and rank 1 one; the validation one
    goes to rank 0; the training one (from make_sample_data) to whichever rank
    the shuffled sampler gives it each epoch.
    """
    shutil.copytree(sample_data, dest)
    red = "001.red_disc"
    for name in ("corrupt_a.jpg", "corrupt_b.jpg", "corrupt_c.jpg"):
        (dest / "test" / red / name).write_bytes(CORRUPT)
    (dest / "valid" / red / "corrupt_v.jpg").write_bytes(CORRUPT)
    found = {"train": "train", "validation": "valid", "test": "test"}
    return {split: {p.name for p in (dest / folder).rglob("corrupt_*")} for split, folder in found.items()}


def readable_images(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file() and not p.name.startswith("corrupt_"))


def check_global_counts(log: str, opt_ml: Path, corrupt: dict[str, set[str]], test_dir: Path, world: int) -> None:
    """What the master reports is the sum (or union) of what every rank saw."""
    report = json.loads((opt_ml / "output" / "data" / "evaluation.json").read_text())
    total = sum(len(names) for names in corrupt.values())
    by_split = {split: {Path(p).name for p in paths} for split, paths in report["skipped_images"]["by_split"].items()}
    assert by_split == corrupt, report["skipped_images"]
    assert report["skipped_images"]["count"] == total
    assert f"skipped {total} unreadable image(s)" in log
    # every rank skipped part of them, and not the same number: rank 0's share alone would be wrong
    per_rank = {int(m.group(1)): int(m.group(4)) for m in RANK_SKIPS.finditer(log)}
    assert sorted(per_rank) == list(range(world)), log[-3000:]
    assert len(set(per_rank.values())) > 1 and max(per_rank.values()) < total, per_rank

    # the test set scored over all ranks: every readable image once
    assert report["images"] == readable_images(test_dir) == sum(map(sum, report["confusion_matrix"]))
    _, config = artifact.load(opt_ml / "model")
    assert config["training"]["skipped_images"] == total
    # each epoch's image count is the ranks' shares added up, and every rank had one
    shares: dict[int, dict[int, int]] = {}
    for m in RANK_EPOCH.finditer(log):
        shares.setdefault(int(m.group(4)), {})[int(m.group(1))] = int(m.group(5))
    history = config["training"]["history"]
    assert len(history) == len(shares) >= 1
    for entry in history:
        ranks = shares[entry["epoch"]]
        assert sorted(ranks) == list(range(world)) and min(ranks.values()) > 0, ranks
        assert entry["train_images"] == sum(ranks.values())


def test_two_processes_report_global_skips_and_metrics(sample_data, tmp_path):
    data = tmp_path / "dogImages"
    corrupt = data_with_corrupt_files(sample_data, data)
    hps = dict(FAST_HPS, epochs=2, amp="false", **{"processes-per-host": 2, "num-workers": 0})
    opt_ml = tmp_path / "opt_ml"
    result = run_trainer(opt_ml, {"training": data}, hps)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert "launching 2 process(es) per host on 1 host(s)" in result.stdout
    check_global_counts(result.stdout, opt_ml, corrupt, data / "test", world=2)
