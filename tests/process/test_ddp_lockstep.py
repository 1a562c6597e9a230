"""DDP ranks through the same collectives whatever their batches hold (issue 23, point 5): two gloo
processes on the data users have (a truncated JPEG, an empty file, text named .jpg; half the files
unreadable), a rank that stalls, a GPU host without CUDA. Every run is bounded: a hang fails the test."""

from __future__ import annotations

import io
import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import make_sample_data  # scripts/, on the path through conftest
import proctree
from contract.spec import metrics
from helpers import lockstep_ranks
from helpers.training import TRAINER_SCRIPT, failure_reason, hp_args, trainer_env
from localnet import free_port
from trainer import runtime

# the issue's recipe: resnet18 at 64 px, batch size 2, 4 classes of 12 images, two processes on one host
RECIPE = {
    "backbone": "resnet18",
    "pretrained": "none",
    "image-size": "64",
    "batch-size": "2",
    "epochs": "1",
    "num-workers": "0",
    "processes-per-host": "2",
}
# an unreadable file whose name, logged as it is, was a metric line the tuners read as the job's best
FORGED_NAME = "x\n#metric epoch=9 split=validation loss=0.000001 accuracy=1.0\n.jpg"
# a rank's share of an epoch, as it logs it (trainer/loop.py)
STAND_INS = r"\[rank \d/2 on \S+\] epoch 1: trained on \d+ images, .* (\d+) step\(s\) with a stand-in pass"


def issue_data(root: Path, half_unreadable: bool) -> Path:
    """4 classes of 12 small images (every other one unreadable if asked) and the three awkward files."""
    rng = random.Random(0)
    for index, (name, colour, kind) in enumerate(make_sample_data.CLASSES[:4]):
        folder = root / f"{index:03d}.{name}"
        folder.mkdir(parents=True)
        for i in range(12):
            if half_unreadable and i % 2:
                (folder / f"unreadable_{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
            else:
                make_sample_data.draw(kind, colour, (72, 72), rng).save(folder / f"{name}_{i}.jpg")
    first = root / "000.red_disc"
    jpeg = io.BytesIO()
    make_sample_data.draw("disc", (220, 40, 40), (72, 72), rng).save(jpeg, "JPEG")
    (first / "truncated.jpg").write_bytes(jpeg.getvalue()[:300])
    (first / "empty.jpg").write_bytes(b"")
    (first / "notes.jpg").write_text("a text file named .jpg\n")
    (first / FORGED_NAME).write_bytes(b"not an image either")
    return root


def run_bounded(opt_ml: Path, data: Path, hps: dict, env: dict | None = None, seconds: float = 300) -> tuple[int, str]:
    """The trainer's exit status and log; a run past `seconds` is killed with every process below it and
    fails the test (torchrun's workers live in their own sessions: a process group would miss them)."""
    proc = subprocess.Popen(
        [sys.executable, str(TRAINER_SCRIPT), *hp_args(hps)],
        env=trainer_env(opt_ml, {"training": data}, dict({"OMP_NUM_THREADS": "1"}, **(env or {}))),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        log, _ = proc.communicate(timeout=seconds)
        return proc.returncode, log
    except subprocess.TimeoutExpired:
        for pid in proctree.descendants(proc.pid) | {proc.pid}:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log, _ = proc.communicate(timeout=60)
        pytest.fail(f"the trainer hung for {seconds} s:\n{log[-3000:]}")


def test_half_unreadable_files_train_on_two_ranks_without_a_hang(tmp_path):
    """Batches of two from a folder half of whose files are unreadable: some rank has no image to train on
    in some step, and joins the others' collectives with a stand-in pass instead of hanging them."""
    data = issue_data(tmp_path / "data", half_unreadable=True)
    status, log = run_bounded(tmp_path / "opt_ml", data, RECIPE)
    assert status == 0, log[-4000:]
    assert (tmp_path / "opt_ml" / "model" / "model.pt").is_file()
    stand_ins = [int(n) for n in re.findall(STAND_INS, log)]
    assert len(stand_ins) == 2 and sum(stand_ins) > 0, log[-3000:]  # the case under test happened


def test_awkward_files_at_32_px_train_with_a_last_batch_of_one(tmp_path):
    """52 files, 44 for training with the four awkward ones: batches of two leave one image last (and
    next to an unreadable file); at 32 px BatchNorm cannot train on one ("Expected more than 1 value per
    channel"): the job trains on the rest instead of failing. The file whose name holds a metric line is
    logged with its newlines escaped."""
    data = issue_data(tmp_path / "data", half_unreadable=False)
    hps = dict(RECIPE, **{"image-size": "32", "processes-per-host": "1"})
    status, log = run_bounded(tmp_path / "opt_ml", data, hps)
    assert status == 0, log[-4000:]
    assert "skipped 4 unreadable image(s)" in log and "x\\n\\x23metric epoch=9" in log
    assert all(loss > 0.000001 for loss in metrics.parse_log(log)["validation:loss"]), log[-3000:]
    assert (tmp_path / "opt_ml" / "model" / "model.pt").is_file()


def test_a_stalled_rank_fails_the_job_with_a_reason_not_a_hang(tmp_path):
    """Rank 1 stops answering after its first step: rank 0's next collective gives up after
    collective-timeout and the job fails with a one-line reason."""
    data = issue_data(tmp_path / "data", half_unreadable=False)
    hps = dict(RECIPE, **{"collective-timeout": "20", "max-steps-per-epoch": "3"})
    status, log = run_bounded(tmp_path / "opt_ml", data, hps, {runtime.STALL_ENV: "1:120"}, seconds=300)
    assert status != 0, log[-3000:]
    reason = failure_reason(tmp_path / "opt_ml")
    assert reason.startswith("rank 0: a collective waited more than collective-timeout (20 s) for the other ranks")
    assert reason.count("\n") == 1, reason


def test_a_gpu_host_without_cuda_fails_fast(tmp_path):
    """SageMaker says the host has a GPU (SM_NUM_GPUS) but the container sees no CUDA (no NVIDIA runtime):
    the job fails at once with the reason, rather than training on the CPU for hours."""
    assert not torch.cuda.is_available()  # this test simulates the GPU host on a CPU
    data = issue_data(tmp_path / "data", half_unreadable=False)
    status, log = run_bounded(tmp_path / "opt_ml", data, RECIPE, {"SM_NUM_GPUS": "1"}, seconds=120)
    assert status == 1, log[-3000:]
    assert failure_reason(tmp_path / "opt_ml").startswith("SM_NUM_GPUS=1 but CUDA is unavailable in the container")


def test_a_rank_without_a_batch_adds_nothing_and_the_step_averages_the_others(tmp_path):
    """One real DDP step on two gloo ranks, rank 1 without a batch: both end with the gradient a single
    process gets from rank 0's batch alone, and rank 1's BatchNorm statistics are as they were."""
    torch.multiprocessing.spawn(lockstep_ranks.one_step, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    model = lockstep_ranks.classifier()
    images, labels = lockstep_ranks.rank_0_batch()
    torch.nn.functional.cross_entropy(model(images), labels).backward()
    for rank in ranks:
        assert rank["ready"] == 1
        for grad, expected in zip(rank["grads"], [p.grad for p in model.parameters()], strict=True):
            torch.testing.assert_close(grad, expected)
    for before, after in zip(ranks[1]["buffers_before"], ranks[1]["buffers_after"], strict=True):
        assert torch.equal(before, after)
