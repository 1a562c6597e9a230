"""The trainer run as SageMaker's toolkit runs it, on a temporary /opt/ml tree."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
import torch

from contract import artifact
from contract.spec import metrics
from helpers.training import CONTAINER, FAST_HPS, TRAINER_SCRIPT, failure_reason, hp_args, run_trainer, trainer_env


@pytest.fixture(scope="module")
def trained(sample_data, tmp_path_factory):
    opt_ml = tmp_path_factory.mktemp("opt_ml")
    result = run_trainer(opt_ml, {"training": sample_data}, FAST_HPS)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return opt_ml, result


def test_artifacts_load_with_weights_only(trained):
    opt_ml, _ = trained
    model, config = artifact.load(opt_ml / "model")
    assert config["class_names"] == ["001.red_disc", "002.green_bars", "003.blue_square", "004.yellow_cross"]
    assert config["architecture"]["backbone"] == "resnet18"
    assert config["preprocessing"]["image_size"] == 64
    state = torch.load(opt_ml / "model" / artifact.WEIGHTS_FILE, weights_only=True)
    assert state["fc.0.weight"].shape == (4, 512)
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 4)
    assert len(artifact.calibration_files(opt_ml / "model")) == artifact.CALIBRATION_IMAGES  # int8 serving's sample


def test_metric_lines_match_the_project_regexes(trained):
    _, result = trained
    found = metrics.parse_log(result.stdout)
    for name in ("train:loss", "train:accuracy", "validation:loss", "validation:accuracy", "train:images_per_sec"):
        assert len(found[name]) == 5, name
    assert len(found["test:loss"]) == len(found["test:accuracy"]) == 1
    assert metrics.OBJECTIVE_METRIC == "validation:loss"


def test_learns_well_above_chance_and_reports(trained):
    opt_ml, result = trained
    test_accuracy = metrics.parse_log(result.stdout)["test:accuracy"][0]
    assert test_accuracy >= 0.75, result.stdout  # chance is 0.25
    report = json.loads((opt_ml / "output" / "data" / "evaluation.json").read_text())
    assert report["split"] == "test" and report["accuracy"] == pytest.approx(test_accuracy, abs=1e-4)
    assert len(report["confusion_matrix"]) == 4 and set(report["per_class"]) == set(report["class_names"])
    assert (opt_ml / "output" / "data" / "confusion_matrix.png").stat().st_size > 1000
    assert (opt_ml / "checkpoints" / "checkpoint.pt").is_file()


def test_tensorboard_scalars_one_per_epoch(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    opt_ml, result = trained
    events = EventAccumulator(str(opt_ml / "output" / "tensorboard"))
    events.Reload()
    tags = {"train/loss", "train/accuracy", "validation/loss", "validation/accuracy"}
    assert set(events.Tags()["scalars"]) == tags | {"train/learning_rate", "train/step_loss"}
    # the learning rate at every optimizer step (1, 2, ...), the peak first, cosine-decayed after it
    rates = events.Scalars("train/learning_rate")
    assert [s.step for s in rates] == list(range(1, len(rates) + 1)) and len(rates) >= 10
    assert rates[0].value == pytest.approx(float(FAST_HPS["lr"]), rel=1e-6)
    assert (
        all(b.value <= a.value for a, b in zip(rates, rates[1:], strict=False))
        and rates[-1].value < rates[0].value / 10
    )
    # the training loss at every optimizer step too, at the same steps; its epoch means are the epochs' losses
    step_losses = events.Scalars("train/step_loss")
    assert [s.step for s in step_losses] == [s.step for s in rates]
    assert all(math.isfinite(s.value) and s.value > 0 for s in step_losses)
    found = metrics.parse_log(result.stdout)
    for tag in tags:
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [1, 2, 3, 4, 5], tag  # epochs
        split, name = tag.split("/")
        # the values the metric lines print (rounded there to 4 or 6 places)
        assert [s.value for s in scalars] == pytest.approx(found[f"{split}:{name}"], abs=1e-4), tag


def test_corrupt_file_is_skipped_and_counted(trained):
    opt_ml, result = trained
    report = json.loads((opt_ml / "output" / "data" / "evaluation.json").read_text())
    assert report["skipped_images"]["count"] == 1
    assert report["skipped_images"]["by_split"]["train"][0].endswith("corrupt_0000.jpg")
    assert "skipped 1 unreadable image(s)" in result.stdout


def test_resnet50_step_from_a_weights_file(sample_data, tmp_path):
    """One ResNet50 step, its frozen backbone loaded from a torchvision weights file."""
    import torchvision

    reference = torchvision.models.resnet50()
    weights_dir = tmp_path / "pretrained"
    weights_dir.mkdir()
    torch.save(reference.state_dict(), weights_dir / "resnet50-imagenet.pth")
    hps = dict(
        FAST_HPS,
        backbone="resnet50",
        pretrained="imagenet",
        epochs=1,
        **{"trainable-layers": 0, "max-steps-per-epoch": 1, "head": "256", "batch-size": 8},
    )
    opt_ml = tmp_path / "opt_ml"
    result = run_trainer(opt_ml, {"training": sample_data, "pretrained": weights_dir}, hps)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "initialised from resnet50-imagenet.pth" in result.stdout
    model, _ = artifact.load(opt_ml / "model")
    assert torch.equal(model.state_dict()["layer4.2.conv3.weight"], reference.state_dict()["layer4.2.conv3.weight"])
    assert torch.equal(model.state_dict()["bn1.running_var"], reference.state_dict()["bn1.running_var"])
    assert model.fc[0].weight.shape == (256, 2048) and model.fc[-1].weight.shape == (4, 256)


# -- failures: one line in /opt/ml/output/failure and a non-zero exit --------


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing channel", "'training' channel is missing"),
        ("empty class folder", "class folder '005.empty' in training data has no images"),
        ("no images", "no images found in training data"),
        ("nan loss", "loss became"),
        ("unknown hyperparameter", "unknown hyperparameter '--learning-rate'"),
        ("malformed hyperparameter", "hyperparameter batch-size: invalid literal"),
        ("bad choice", "hyperparameter optimizer: choose one of adamw, sgd"),
        ("no network for weights", "download of http://127.0.0.1:9/"),
        ("corrupt weights file", "cannot be loaded safely"),
        ("no readable image", "epoch 1 trained on no image: every training image was unreadable"),
        ("no readable validation image", "epoch 1 scored no validation image: all 4 were unreadable"),
    ],
)
def test_failures_write_a_one_line_reason(case, expected, sample_data, tmp_path):
    opt_ml, channels, hps, env = tmp_path / "opt_ml", {"training": sample_data}, dict(FAST_HPS), {}
    if case == "missing channel":
        channels = {}
    elif case == "empty class folder":
        root = tmp_path / "data"
        shutil.copytree(sample_data / "train", root)
        (root / "005.empty").mkdir()
        channels = {"training": root}
    elif case == "no images":
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "notes.txt").write_text("no pictures here")
        channels = {"training": tmp_path / "empty"}
    elif case == "nan loss":
        hps.update({"optimizer": "sgd", "lr": "1e12", "epochs": "2"})
    elif case == "unknown hyperparameter":
        hps["learning-rate"] = "0.1"
    elif case == "malformed hyperparameter":
        hps["batch-size"] = "sixteen"
    elif case == "bad choice":
        hps["optimizer"] = "adam9"
    elif case == "no network for weights":
        hps["pretrained"] = "imagenet"  # nothing cached, no channel: must download, and cannot
        env = {"WEIGHTS_MIRROR_URL": "http://127.0.0.1:9/"}
    elif case == "corrupt weights file":
        (tmp_path / "weights.pth").write_bytes(b"not a torch file")
        hps["pretrained"] = str(tmp_path / "weights.pth")
    elif case in ("no readable image", "no readable validation image"):  # git-LFS pointers, say
        pointers = tmp_path / "pointers"
        for name in ("001.red_disc", "003.blue_square"):
            (pointers / name).mkdir(parents=True)
            for i in range(2):
                (pointers / name / f"{i}.jpg").write_text("version https://git-lfs.github.com/spec/v1\n")
        channels = {"training": pointers} if case == "no readable image" else {**channels, "validation": pointers}
    started = time.monotonic()
    result = run_trainer(opt_ml, channels, hps, env, timeout=180)
    assert result.returncode != 0
    reason = failure_reason(opt_ml)
    assert expected in reason, reason
    assert reason.count("\n") == 1 and len(reason) <= 1001
    assert time.monotonic() - started < 120  # a clear message, never a hang


# -- SIGTERM and resuming ------------------------------------------------------


def test_sigterm_mid_epoch_checkpoints_and_a_restart_finishes(sample_data, tmp_path):
    opt_ml = tmp_path / "opt_ml"
    hps = dict(FAST_HPS, epochs=3, **{"batch-size": 4, "num-workers": 0})
    proc = subprocess.Popen(
        [sys.executable, str(TRAINER_SCRIPT), *hp_args(hps)],
        env=trainer_env(opt_ml, {"training": sample_data}),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines, deadline = [], time.monotonic() + 180
        for line in proc.stdout:  # wait until epoch 1 is checkpointed and epoch 2 has begun
            lines.append(line)
            if line.startswith("#metric epoch=1 split=validation") or time.monotonic() > deadline:
                break
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    first_log = "".join(lines) + rest
    assert proc.returncode == 0, first_log
    assert "SIGTERM received" in first_log and "checkpoint" in first_log
    assert not (opt_ml / "model" / artifact.WEIGHTS_FILE).exists()
    saved = torch.load(opt_ml / "checkpoints" / "checkpoint.pt", weights_only=True)
    assert saved["epoch"] in (1, 2)

    result = run_trainer(opt_ml, {"training": sample_data}, hps)
    assert result.returncode == 0, result.stderr[-3000:]
    # mid-epoch (the usual case) it goes on with the rest of that epoch; test_resume.py checks it is exact
    where = (
        f"in epoch {saved['epoch'] + 1} after step {saved['step']}"
        if saved["step"]
        else f"after epoch {saved['epoch']}"
    )
    assert f"resuming from checkpoint {where}" in result.stdout
    epochs = [
        int(line.split()[1].split("=")[1])
        for line in result.stdout.splitlines()
        if line.startswith("#metric epoch=") and "split=train" in line
    ]
    assert epochs == list(range(saved["epoch"] + 1, 4))
    assert (opt_ml / "model" / artifact.WEIGHTS_FILE).is_file()


# -- archives and layouts --------------------------------------------------------


def _zip_tree(src: Path, dest: Path, prefix: str) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for path in sorted(src.rglob("*")):
            if path.is_file():
                zf.write(path, f"{prefix}/{path.relative_to(src)}")
    return dest


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_archive_channel_in_the_dogimages_layout(kind, sample_data, tmp_path):
    channel = tmp_path / "channel"
    channel.mkdir()
    if kind == "zip":
        _zip_tree(sample_data, channel / "dogImages.zip", "dogImages")
    else:
        with tarfile.open(channel / "dogImages.tar.gz", "w:gz") as tf:
            tf.add(sample_data, arcname="dogImages")
    hps = dict(FAST_HPS, epochs=1, **{"max-steps-per-epoch": 1})
    result = run_trainer(tmp_path / "opt_ml", {"training": channel}, hps)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "4 classes, 97 training, 24 validation, 24 test images" in result.stdout


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_malicious_archive_is_refused(kind, sample_data, tmp_path):
    channel = tmp_path / "channel"
    channel.mkdir()
    if kind == "zip":
        with zipfile.ZipFile(channel / "evil.zip", "w") as zf:
            zf.writestr("train/a/x.jpg", b"x")
            zf.writestr("../../escaped.txt", b"pwned")
    else:
        with tarfile.open(channel / "evil.tar", "w") as tf:
            info = tarfile.TarInfo("../escaped.txt")
            info.size = 5
            tf.addfile(info, io.BytesIO(b"pwned"))
    opt_ml = tmp_path / "opt_ml"
    result = run_trainer(opt_ml, {"training": channel}, FAST_HPS)
    assert result.returncode != 0
    assert "outside its folder" in failure_reason(opt_ml)
    assert not list(tmp_path.rglob("escaped.txt"))


def test_kaggle_flat_dogs_vs_cats_and_carved_validation(sample_data, tmp_path, monkeypatch):
    from trainer import data

    flat = tmp_path / "train"
    flat.mkdir()
    for label, folder in (("cat", "001.red_disc"), ("dog", "003.blue_square")):
        for i, path in enumerate(sorted((sample_data / "train" / folder).glob("*.jpg"))):
            shutil.copy(path, flat / f"{label}.{i}.jpg")
    monkeypatch.setenv("SM_CHANNEL_TRAINING", str(tmp_path))
    for name in ("VALIDATION", "TEST"):
        monkeypatch.delenv(f"SM_CHANNEL_{name}", raising=False)
    monkeypatch.setenv("SM_INPUT_DIR", str(tmp_path / "nowhere"))
    splits = data.discover(tmp_path / "scratch", val_fraction=0.2, seed=0)
    assert splits.class_names == ["cat", "dog"]
    held = {label for _, label in splits.validation}
    assert held == {0, 1}  # stratified: every class is represented
    assert not {p for p, _ in splits.train} & {p for p, _ in splits.validation}


# -- data parallel ---------------------------------------------------------------

# A torchrun worker skips interpreter teardown: gloo's threads outlive the
# process group, and one that lets go of a tensor during teardown aborted the
# worker (about 1 run in 6 under load). A single process still tears down.
EXIT_SCRIPT = """
import atexit
from trainer import runtime
atexit.register(print, "teardown ran")
print("buffered, not yet flushed", end="")
runtime.exit_process(3)
"""


@pytest.mark.parametrize("torchrun_worker", [True, False])
def test_exit_skips_interpreter_teardown_only_in_torchrun_workers(tmp_path, torchrun_worker):
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "PYTHONUNBUFFERED")}
    env["PYTHONPATH"] = str(CONTAINER)
    if torchrun_worker:
        env["LOCAL_RANK"] = "0"
    result = subprocess.run([sys.executable, "-c", EXIT_SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stderr[-2000:]
    assert result.stdout.startswith("buffered, not yet flushed")  # what was printed still arrives
    assert ("teardown ran" in result.stdout) is not torchrun_worker


def test_two_process_ddp_run(sample_data, tmp_path):
    hps = dict(FAST_HPS, epochs=2, **{"processes-per-host": 2, "num-workers": 0})
    opt_ml = tmp_path / "opt_ml"
    result = run_trainer(opt_ml, {"training": sample_data}, hps)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "launching 2 process(es) per host" in result.stdout
    found = metrics.parse_log(result.stdout)
    assert len(found["validation:loss"]) == 2  # printed by rank 0 only
    assert found["train:images_per_sec"]
    model, _ = artifact.load(opt_ml / "model")
    assert model.fc[0].weight.shape == (4, 512)
