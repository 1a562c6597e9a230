"""Every data layout the README names, packed as the public data sets ship them, through every entry point.

(a) the trainer itself (container/toolkit_entry_point.py), (b) scripts/run_local.py --data ARCHIVE end to end,
(c) the training image's `train` with the archive in its channel folder; and the archives refused.
"""

from __future__ import annotations

import io
import json
import random
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import make_sample_data  # noqa: E402  (scripts/, on the path through conftest)
from contract.spec import images
from helpers.training import FAST_HPS, ROOT, build_image, failure_reason, run_trainer, write_sagemaker_config

ONE_STEP = dict(FAST_HPS, epochs=1, **{"max-steps-per-epoch": 1})
BREEDS = ["001.Affenpinscher", "002.Afghan_hound", "003.Airedale_terrier"]


def jpeg(index: int, kind: int, rng: random.Random) -> bytes:
    """A small learnable JPEG: class `kind`'s colour and shape on noise."""
    _, colour, shape = make_sample_data.CLASSES[kind]
    buf = io.BytesIO()
    make_sample_data.draw(shape, colour, (rng.randint(48, 96), rng.randint(48, 96)), rng).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def zip_of(path: Path, members: dict[str, bytes]) -> Path:
    """A zip as zip(1) makes them: folder entries first, then the files."""
    folders = sorted({str(Path(name).parents[i]) + "/" for name in members for i in range(len(Path(name).parts) - 1)})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for folder in folders:
            zf.writestr(folder, b"")
        for name, blob in members.items():
            zf.writestr(name, blob)
    return path


def tar_of(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz" if path.name.endswith(".gz") else "w") as tf:
        for name, blob in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    return path


def dogimages_members(per_split=(4, 2, 2)) -> dict[str, bytes]:
    """dogImages.zip as Udacity distributes it: dogImages/{train,valid,test}/001.Affenpinscher/Affenpinscher_00001.jpg."""
    rng, members, number = random.Random(1), {}, 0
    for split, count in zip(("train", "valid", "test"), per_split, strict=True):
        for kind, breed in enumerate(BREEDS):
            for _ in range(count):
                number += 1
                members[f"dogImages/{split}/{breed}/{breed.split('.')[1]}_{number:05d}.jpg"] = jpeg(number, kind, rng)
    return members


def kaggle_packaged_members(top: str = "") -> dict[str, bytes]:
    """salader/dogs-vs-cats: train/cats, train/dogs, test/cats, test/dogs (cat.1.jpg ...)."""
    rng, members = random.Random(2), {}
    for split, count in (("train", 5), ("test", 2)):
        for kind, animal in enumerate(("cat", "dog")):
            for i in range(count):
                members[f"{top}{split}/{animal}s/{animal}.{split}{i}.jpg"] = jpeg(i, kind, rng)
    return members


def kaggle_original(path: Path, per_class: int = 6) -> Path:
    """Kaggle's competition download: dogs-vs-cats.zip holding train.zip (train/cat.0.jpg ...),
    test1.zip (test1/1.jpg ..., unlabelled) and sampleSubmission.csv."""
    rng = random.Random(3)
    train = {
        f"train/{animal}.{i}.jpg": jpeg(i, kind, rng)
        for kind, animal in enumerate(("cat", "dog"))
        for i in range(per_class)
    }
    test1 = {f"test1/{i}.jpg": jpeg(i, i % 2, rng) for i in range(1, 5)}
    inner = {}
    for name, members in (("train.zip", train), ("test1.zip", test1)):
        zip_of(path.parent / name, members)
        inner[name] = (path.parent / name).read_bytes()
        (path.parent / name).unlink()
    inner["sampleSubmission.csv"] = b"id,label\n" + b"".join(f"{i},0\n".encode() for i in range(1, 5))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:  # Kaggle stores the inner zips
        for name, blob in inner.items():
            zf.writestr(name, blob)
    return path


def class_folders_members() -> dict[str, bytes]:
    """One folder per class, under a top folder (flower_photos.tgz style)."""
    rng = random.Random(4)
    return {
        f"flower_photos/{name}/{i}.jpg": jpeg(i, kind, rng)
        for kind, name in enumerate(("daisy", "roses", "tulips"))
        for i in range(5)
    }


def channel_with(tmp_path: Path, name: str, make) -> Path:
    channel = tmp_path / "channel"
    channel.mkdir(parents=True, exist_ok=True)
    make(channel / name)
    return channel


LAYOUTS = {
    # name: (archive name, maker, class names, training/validation/test counts as the trainer logs them)
    "dogImages zip": (
        "dogImages.zip",
        lambda p: zip_of(p, dogimages_members()),
        BREEDS,
        "12 training, 6 validation, 6 test",
    ),
    "dogImages tar.gz": (
        "dogImages.tar.gz",
        lambda p: tar_of(p, dogimages_members()),
        BREEDS,
        "12 training, 6 validation, 6 test",
    ),
    "class folders tgz": (
        "flower_photos.tgz",
        lambda p: tar_of(p, class_folders_members()),
        ["daisy", "roses", "tulips"],
        "12 training, 3 validation, 0 test",
    ),
    "kaggle packaged zip": (
        "dogs-vs-cats.zip",
        lambda p: zip_of(p, kaggle_packaged_members()),
        ["cats", "dogs"],
        "8 training, 2 validation, 4 test",
    ),
    "kaggle packaged zip, top folder": (
        "dogs-vs-cats.zip",
        lambda p: zip_of(p, kaggle_packaged_members("dogs_vs_cats/")),
        ["cats", "dogs"],
        "8 training, 2 validation, 4 test",
    ),
    "kaggle original zip": ("dogs-vs-cats.zip", kaggle_original, ["cat", "dog"], "10 training, 2 validation, 0 test"),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layout_through_the_trainer(layout, tmp_path):
    name, make, classes, counts = LAYOUTS[layout]
    channel = channel_with(tmp_path, name, make)
    opt_ml = tmp_path / "opt_ml"
    result = run_trainer(opt_ml, {"training": channel}, ONE_STEP)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert f"data: {len(classes)} classes, {counts} images" in result.stdout, result.stdout[-2000:]
    assert json.loads((opt_ml / "model" / "model_config.json").read_text())["class_names"] == classes
    assert list(channel.iterdir()) == [channel / name]  # the channel is read, never changed


def test_kaggle_original_unzipped_once_in_a_folder(tmp_path):
    """The outer zip opened by hand: train.zip and test1.zip lie in the channel folder."""
    outer = kaggle_original(tmp_path / "dogs-vs-cats.zip")
    channel = tmp_path / "channel"
    with zipfile.ZipFile(outer) as zf:
        zf.extractall(channel)
    opt_ml = tmp_path / "opt_ml"
    result = run_trainer(opt_ml, {"training": channel}, ONE_STEP)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "data: 2 classes, 10 training, 2 validation, 0 test images" in result.stdout


def test_heldout_images_come_out_of_an_archive(tmp_path, monkeypatch):
    """What run_local's classify stage sends: the test split, one folder per class, taken in turn."""
    from trainer import heldout

    channel = channel_with(tmp_path, "dogImages.zip", lambda p: zip_of(p, dogimages_members()))
    monkeypatch.setenv("SM_CHANNEL_TRAINING", str(channel))
    monkeypatch.setenv("SM_INPUT_DIR", str(tmp_path / "nowhere"))
    summary = heldout.export(tmp_path / "out", limit=4, val_fraction=0.1, seed=0, scratch=tmp_path / "scratch")
    assert summary == {"split": "test", "images": 4, "of": 6, "classes": 3}
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_dir()) == BREEDS  # every class, not the first
    # Kaggle's original: no labelled test set, so the validation share, labelled by file name
    channel = channel_with(tmp_path / "k", "dogs-vs-cats.zip", kaggle_original)
    monkeypatch.setenv("SM_CHANNEL_TRAINING", str(channel))
    summary = heldout.export(tmp_path / "out2", limit=200, val_fraction=0.2, seed=0, scratch=tmp_path / "scratch2")
    assert summary["split"] == "validation" and summary["images"] == 4
    assert sorted(p.name for p in (tmp_path / "out2").iterdir() if p.is_dir()) == ["cat", "dog"]


# -- refusals ------------------------------------------------------------------------------------


def refused(tmp_path: Path, channel: Path, env: dict | None = None) -> str:
    """The trainer's data discovery (in this process: quick) refuses the channel with a one-line
    DataError and leaves nothing unpacked behind; the reason."""
    from trainer import data

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SM_CHANNEL_TRAINING", str(channel))
        patch.setenv("SM_INPUT_DIR", str(tmp_path / "nowhere"))
        for name, value in (env or {}).items():
            patch.setenv(name, value)
        with pytest.raises(data.DataError) as caught:
            data.discover(tmp_path / "scratch", 0.1, 0)
    reason = str(caught.value)
    assert "\n" not in reason, reason
    assert not (tmp_path / "scratch" / "training").exists()
    return reason


def refused_by_the_trainer(tmp_path: Path, channel: Path) -> str:
    """The same through container/toolkit_entry_point.py: the reason in /opt/ml/output/failure, a non-zero exit."""
    opt_ml = tmp_path / "opt_ml"
    result = run_trainer(opt_ml, {"training": channel}, ONE_STEP)
    assert result.returncode != 0, result.stdout[-2000:]
    reason = failure_reason(opt_ml)
    assert reason.count("\n") == 1 and "Traceback" not in reason, reason
    assert not (opt_ml / "scratch" / "training").exists()
    return reason


def test_path_traversal_is_refused(tmp_path):
    members = {"dogImages/train/a/1.jpg": b"x", "dogImages/../../../escaped.txt": b"pwned"}
    channel = channel_with(tmp_path, "evil.zip", lambda p: zip_of(p, members))
    assert "outside its folder" in refused_by_the_trainer(tmp_path, channel)
    shutil.rmtree(channel)
    channel = channel_with(tmp_path, "evil.tar", lambda p: tar_of(p, {"/tmp/escaped-absolute.txt": b"pwned"}))
    assert "outside its folder" in refused(tmp_path, channel)
    assert not list(tmp_path.rglob("escaped*.txt")) and not Path("/tmp/escaped-absolute.txt").exists()


def _zip_symlink(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("dogImages/train/a/1.jpg", jpeg(0, 0, random.Random(0)))
        link = zipfile.ZipInfo("dogImages/train/a/2.jpg")
        link.create_system = 3  # Unix: the mode bits count
        link.external_attr = 0o120777 << 16  # S_IFLNK
        zf.writestr(link, "/etc/passwd")


def _tar_link(path: Path, kind: bytes) -> None:
    with tarfile.open(path, "w") as tf:
        blob = jpeg(0, 0, random.Random(0))
        info = tarfile.TarInfo("train/a/1.jpg")
        info.size = len(blob)
        tf.addfile(info, io.BytesIO(blob))
        link = tarfile.TarInfo("train/a/2.jpg")
        link.type, link.linkname = kind, "1.jpg"  # even one pointing inside is refused
        tf.addfile(link)


@pytest.mark.parametrize("kind", ["zip symlink", "tar symlink", "tar hard link"])
def test_links_are_refused(kind, tmp_path):
    make = {
        "zip symlink": _zip_symlink,
        "tar symlink": lambda p: _tar_link(p, tarfile.SYMTYPE),
        "tar hard link": lambda p: _tar_link(p, tarfile.LNKTYPE),
    }[kind]
    channel = channel_with(tmp_path, "links.zip" if kind.startswith("zip") else "links.tar", make)
    assert "links are refused" in refused(tmp_path, channel)


def test_too_many_members_are_refused_counting_nested_ones(tmp_path):
    flat = {f"train/{c}/{i}.jpg": b"x" for c in ("a", "b") for i in range(30)}  # 60 files
    channel = channel_with(tmp_path, "many.zip", lambda p: zip_of(p, flat))
    reason = refused(tmp_path, channel, {"TRAINER_ARCHIVE_MAX_MEMBERS": "50"})
    assert "more members than the 50 allowed per channel (TRAINER_ARCHIVE_MAX_MEMBERS)" in reason
    shutil.rmtree(channel)
    channel = channel_with(tmp_path, "many.tar", lambda p: tar_of(p, flat))  # read header by header
    assert "many.tar has more members" in refused(tmp_path, channel, {"TRAINER_ARCHIVE_MAX_MEMBERS": "50"})
    # 30 in the outer zip and 30 in the one it holds: one budget for both
    shutil.rmtree(channel)
    half = {f"train/a/{i}.jpg": b"x" for i in range(29)}
    zip_of(tmp_path / "inner.zip", half)
    channel = channel_with(
        tmp_path, "outer.zip", lambda p: zip_of(p, {**half, "inner.zip": (tmp_path / "inner.zip").read_bytes()})
    )
    assert "inner.zip has more members" in refused(tmp_path, channel, {"TRAINER_ARCHIVE_MAX_MEMBERS": "50"})


def test_too_many_bytes_are_refused_before_writing(tmp_path):
    """A bomb-like member: 64 MiB of zeros, about 64 KiB compressed."""
    channel = channel_with(tmp_path, "bomb.zip", lambda p: zip_of(p, {"train/a/1.jpg": bytes(64 << 20)}))
    assert (channel / "bomb.zip").stat().st_size < 1 << 20
    reason = refused(tmp_path, channel, {"TRAINER_ARCHIVE_MAX_BYTES": "8M"})
    assert (
        "declares 64.0 MiB uncompressed, more than the 8.0 MiB allowed per channel (TRAINER_ARCHIVE_MAX_BYTES)"
        in reason
    )


def test_a_member_bigger_than_its_header_says_is_refused(tmp_path):
    """The central directory says 1,000 bytes; the data holds 4 MiB. Nothing past the declared size is written."""
    path = tmp_path / "liar.zip"
    zip_of(path, {"train/a/1.jpg": bytes(4 << 20)})
    raw = bytearray(path.read_bytes())
    central = raw.rindex(b"PK\x01\x02")  # the member's central directory record: uncompressed size at +24
    raw[central + 24 : central + 28] = (1000).to_bytes(4, "little")
    channel = tmp_path / "channel"
    channel.mkdir()
    (channel / "liar.zip").write_bytes(bytes(raw))
    reason = refused(tmp_path, channel)
    assert reason == "archive liar.zip cannot be unpacked: Bad CRC-32 for file 'train/a/1.jpg'"


def test_bytes_are_counted_as_they_arrive(tmp_path):
    """Whatever a reader hands over is counted: past a member's declared size, or past the budget, it stops.
    (zipfile and tarfile stop at the declared size themselves; this is the bound that does not rely on them.)"""
    from trainer import archives

    budget = archives.Budget(archives.Limits(max_bytes=3 << 20))
    with pytest.raises(archives.DataError, match="holds more than the 1,000 bytes its header declares"):
        archives._write(io.BytesIO(bytes(5000)), tmp_path / "a", "x.zip", "a", 1000, budget)
    assert (tmp_path / "a").stat().st_size == 0
    with pytest.raises(archives.DataError, match="unpacks to more than the 3.0 MiB allowed"):
        archives._write(io.BytesIO(bytes(8 << 20)), tmp_path / "b", "x.zip", "b", 8 << 20, budget)
    assert (tmp_path / "b").stat().st_size <= 3 << 20


def _broken(path: Path, kind: str) -> None:
    zip_of(path, {"train/a/1.jpg": bytes(range(256)) * 64, "train/b/1.jpg": b"x"})
    raw = bytearray(path.read_bytes())
    if kind == "truncated":
        raw = raw[: len(raw) // 2]
    elif kind == "corrupt data":
        start = raw.index(b"train/a/1.jpg") + len("train/a/1.jpg")
        raw[start + 10 : start + 40] = bytes(30)
    else:  # encrypted: the flag set in the member's local and central headers (names at +30 and +46)
        local = raw.index(b"train/a/1.jpg")
        raw[local - 30 + 6] |= 1
        raw[raw.index(b"train/a/1.jpg", raw.index(b"PK\x01\x02")) - 46 + 8] |= 1
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("kind", ["truncated", "corrupt data", "encrypted"])
def test_a_broken_archive_is_a_clear_error(kind, tmp_path):
    channel = channel_with(tmp_path, "broken.zip", lambda p: _broken(p, kind))
    assert refused(tmp_path, channel).startswith("archive broken.zip cannot be unpacked: ")


def test_nesting_deeper_than_the_limit_is_refused(tmp_path):
    blob = zip_of(tmp_path / "level.zip", {"train/a/1.jpg": b"x", "train/b/1.jpg": b"x"}).read_bytes()
    for depth in range(3):  # four zips, each inside the next
        blob = zip_of(tmp_path / "level.zip", {f"level{depth}.zip": blob}).read_bytes()
    channel = tmp_path / "channel"
    channel.mkdir()
    (channel / "outer.zip").write_bytes(blob)
    reason = refused(tmp_path, channel)
    assert "is nested 4 deep, more than the 3 allowed (TRAINER_ARCHIVE_MAX_DEPTH)" in reason, reason
    assert "outer.zip/level2.zip/level1.zip/level0.zip" in reason  # which one, named by its path


def test_a_malformed_limit_is_a_clear_error(tmp_path):
    channel = channel_with(tmp_path, "dogImages.zip", lambda p: zip_of(p, dogimages_members()))
    reason = refused(tmp_path, channel, {"TRAINER_ARCHIVE_MAX_BYTES": "lots"})
    assert "TRAINER_ARCHIVE_MAX_BYTES='lots' is not a whole number" in reason


# -- scripts/run_local.py --data ARCHIVE ----------------------------------------------------------


def run_local(engine, tmp_path: Path, *args: str, timeout: float = 1500) -> str:
    result = subprocess.run(
        [
            sys.executable,
            "scripts/run_local.py",
            "--workdir",
            str(tmp_path / "w"),
            "--weights-cache",
            str(tmp_path / "weights"),
            *args,
        ],
        cwd=ROOT,
        env=engine.env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    return result.stdout


def test_readme_dogimages_command(engine, tmp_path):
    """The README's command as written, on a small dogImages.zip; ImageNet weights (random values
    here: none can be downloaded) lie in the host cache that run_local mounts as the image's hub cache."""
    import torch
    from torchvision.models import resnet50

    from trainer import weights

    cache = tmp_path / "weights"
    cache.mkdir()
    torch.save(resnet50().state_dict(), cache / weights.imagenet_url("resnet50").rsplit("/", 1)[1])
    archive = zip_of(tmp_path / "dogImages.zip", dogimages_members(per_split=(3, 1, 2)))
    out = run_local(
        engine,
        tmp_path,
        "--data",
        str(archive),
        "--hp",
        "backbone=resnet50",
        "--hp",
        "pretrained=imagenet",
        "--hp",
        "image-size=224",
        "--hp",
        "head=256",
        "--trials",
        "1",
    )
    assert re.search(r"endpoint accuracy\s+[0-9.]+ on 6 held-out images", out), out[-3000:]
    config = json.loads((tmp_path / "w" / "opt_ml" / "model" / "model_config.json").read_text())
    assert config["class_names"] == BREEDS and config["architecture"]["backbone"] == "resnet50"
    train_log = (tmp_path / "w" / "logs" / "train.log").read_text()
    assert "backbone resnet50 initialised from resnet50-" in train_log
    assert "data: 3 classes, 9 training, 3 validation, 6 test images" in train_log


def test_kaggle_original_zip_end_to_end(engine, tmp_path):
    archive = kaggle_original(tmp_path / "dogs-vs-cats.zip", per_class=8)
    # small settings; lr and batch-size left to the search (seed one's space)
    fixed = {k: v for k, v in FAST_HPS.items() if k not in ("lr", "batch-size")}
    small = [a for k, v in {**fixed, "epochs": "2", "val-fraction": "0.25"}.items() for a in ("--hp", f"{k}={v}")]
    out = run_local(engine, tmp_path, "--data", str(archive), "--trials", "1", *small)
    # no labelled test set: the classify stage sends the validation share, labelled by file name
    assert re.search(r"endpoint accuracy\s+[0-9.]+ on 4 held-out images", out), out[-3000:]
    heldout = json.loads((tmp_path / "w" / "heldout" / "heldout.json").read_text())
    assert heldout == {"split": "validation", "images": 4, "of": 4, "classes": 2}
    assert (
        "data: 2 classes, 12 training, 4 validation, 0 test images"
        in (tmp_path / "w" / "logs" / "train.log").read_text()
    )


# -- the training image --------------------------------------------------------------------------


def test_archive_in_the_channel_folder_of_the_training_image(engine, tmp_path):
    build_image(engine, "train")
    opt_ml = tmp_path / "opt_ml"
    channel = opt_ml / "input" / "data" / "training"
    channel.mkdir(parents=True)
    kaggle_original(channel / "dogs-vs-cats.zip")
    write_sagemaker_config(opt_ml, ONE_STEP, ["training"])
    result = subprocess.run(
        [engine.cli, "run", "--rm", "-v", f"{opt_ml}:/opt/ml", images.train_image(), "train"],
        env=engine.env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert "unpacked dogs-vs-cats.zip" in log and "data: 2 classes, 10 training, 2 validation, 0 test images" in log
    assert json.loads((opt_ml / "model" / "model_config.json").read_text())["class_names"] == ["cat", "dog"]


# -- SageMaker local mode (scripts/sm.py train --local, what run_local.py --sagemaker-local runs) ---


def test_sagemaker_local_mode_mounts_only_the_archive(engine, tmp_path):
    """The SDK's local mode mounts a file's whole folder; sm.py gives the archive a channel folder of its own,
    so the broken zip lying next to it in Downloads/ is not read."""
    build_image(engine, "train")
    downloads = tmp_path / "Downloads"
    downloads.mkdir()
    archive = zip_of(downloads / "dogImages.zip", dogimages_members(per_split=(3, 1, 1)))
    (downloads / "unrelated.zip").write_bytes(b"not a zip at all")
    env = {k: v for k, v in engine.env.items() if not k.startswith(("AWS_", "BYOC_", "SAGEMAKER_"))}
    env["HOME"] = str(tmp_path)  # no ~/.aws to find credentials in
    hps = [a for k, v in ONE_STEP.items() for a in ("--hp", f"{k}={v}")]
    result = subprocess.run(
        [
            sys.executable,
            "scripts/sm.py",
            "train",
            "--local",
            "--workdir",
            str(tmp_path / "sm"),
            "--data",
            str(archive),
            *hps,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "data: 3 classes, 9 training, 3 validation, 3 test images" in result.stdout
    assert [p.name for p in (tmp_path / "sm" / "channels" / "training").iterdir()] == ["dogImages.zip"]
