"""Archive bombs are refused at their first oversized header, slow ones at the time limit; the scratch
folder they unpack into is emptied only if the trainer made it.

The bombs are real: bzip2 packs 64 MiB of zeros into 79 bytes, and a .tar.bz2 may hold
many bzip2 streams one after another (tarfile reads them as one), so a few kilobytes
decompress to gigabytes. Listing a compressed tar decompresses every member's data to
reach the next header: a check after listing comes too late.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile
import time
import tracemalloc
import zipfile
from functools import cache
from pathlib import Path

import pytest

from trainer import archives, data

GIB = 1 << 30


COMPRESS = {"bz2": bz2.compress, "gz": gzip.compress, "xz": lzma.compress}


@cache
def zeros_64mib(kind: str) -> bytes:
    return COMPRESS[kind](bytes(64 << 20))


def header(name: str, size: int) -> bytes:
    """A tar header declaring `size` bytes (GNU base-256 sizes go past tar's 8 GiB octal field)."""
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(format=tarfile.GNU_FORMAT)


def bomb(path: Path, parts: list[tuple[str, int, int]]) -> Path:
    """A .tar.<bz2|gz|xz> of (name, declared size, GiB of zeros actually behind the header) members,
    each part its own compressed stream (gzip and xz read concatenated streams as one too)."""
    kind = path.name.rsplit(".", 1)[1]
    with open(path, "wb") as out:
        for name, declared, zeros_gib in parts:
            out.write(COMPRESS[kind](header(name, declared)))
            out.write(zeros_64mib(kind) * (zeros_gib * 16))
    return path


def unpack(archive: Path, dest: Path, **limits) -> tuple[str, float]:
    started = time.monotonic()
    with pytest.raises(archives.DataError) as refused:
        archives.unpack_all([archive], dest, archives.Limits(**limits))
    return str(refused.value), time.monotonic() - started


@pytest.mark.parametrize("kind, file_size", [("bz2", 8 << 10), ("gz", 5 << 20), ("xz", 1 << 20)])
def test_a_bomb_stops_at_its_first_header(tmp_path, kind, file_size):
    """A 1 TiB-declaring member with 4 GiB of real zeros behind it, in 5 KB (bz2): refused at once.
    Summing sizes only after listing decompresses the zeros first (here until the time limit)."""
    archive = bomb(tmp_path / f"bomb.tar.{kind}", [("train/a/1.jpg", 1 << 40, 4)])
    assert archive.stat().st_size < file_size
    reason, seconds = unpack(archive, tmp_path / "out", max_seconds=3)
    assert reason == (
        f"archive bomb.tar.{kind} declares 1024.0 GiB uncompressed, more than the 16.0 GiB allowed "
        "per channel (TRAINER_ARCHIVE_MAX_BYTES); refusing it"
    )
    assert seconds < 1
    assert not list((tmp_path / "out").rglob("*.jpg"))


@pytest.mark.parametrize("kind", [tarfile.GNUTYPE_LONGNAME, tarfile.XHDTYPE], ids=["GNU long name", "PAX record"])
def test_an_extended_header_is_not_read_whole_into_memory(tmp_path, kind):
    """tarfile reads a long name or a PAX record in one read of the size its header declares: 300 MiB of
    zeros behind one (a 300 KB .tar.gz) peaked at 615 MiB before any limit; now refused at the read."""
    info = tarfile.TarInfo("././@LongLink")
    info.type, info.size = kind, 300 << 20
    archive = tmp_path / "long.tar.gz"
    archive.write_bytes(gzip.compress(info.tobuf(format=tarfile.GNU_FORMAT) + bytes(300 << 20), compresslevel=1))
    tracemalloc.start()
    try:
        reason, _ = unpack(archive, tmp_path / "out", max_bytes=1 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert reason == (
        f"archive long.tar.gz has a header that asks for {300 << 20:,} bytes at once (a long name or a PAX "
        f"record), more than {archives.MAX_TAR_READ:,}; refusing it"
    )
    assert peak < 64 << 20, peak


def test_listing_is_bounded_in_time(tmp_path):
    """2 GiB of zeros between two headers (the second declares 1 TiB): decompressing them to reach the
    second header takes seconds; a 1 s limit stops it part-way, with the variable that sets the limit."""
    archive = bomb(tmp_path / "slow.tar.bz2", [("train/a/1.jpg", 2 * GIB, 2), ("train/a/2.jpg", 1 << 40, 0)])
    reason, seconds = unpack(archive, tmp_path / "out", max_seconds=1)
    assert reason == (
        "archive slow.tar.bz2 takes longer to unpack than the 1 s allowed per channel "
        "(TRAINER_ARCHIVE_MAX_SECONDS); refusing it"
    )
    assert seconds < 3


def test_the_time_limit_is_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("TRAINER_ARCHIVE_MAX_SECONDS", "90")
    assert archives.Limits.from_env().max_seconds == 90
    monkeypatch.setenv("TRAINER_ARCHIVE_MAX_SECONDS", "soon")
    with pytest.raises(archives.DataError, match="TRAINER_ARCHIVE_MAX_SECONDS='soon' is not a whole number"):
        archives.Limits.from_env()


def test_a_good_tar_bz2_still_unpacks(tmp_path):
    archive = tmp_path / "good.tar.bz2"
    with tarfile.open(archive, "w:bz2") as tf:
        for i in range(3):
            info = tarfile.TarInfo(f"train/a/{i}.jpg")
            info.size = 1000
            tf.addfile(info, io.BytesIO(bytes(1000)))
    archives.unpack_all([archive], tmp_path / "out", archives.Limits(max_seconds=30))
    assert sorted(p.name for p in (tmp_path / "out" / "train" / "a").iterdir()) == ["0.jpg", "1.jpg", "2.jpg"]


def test_a_zip_with_backslashes_between_folders_unpacks_into_them(tmp_path):
    """As Windows PowerShell 5.1's Compress-Archive writes dogImages.zip. Read as names, every file landed
    flat in the scratch root and the splits trained as classes of their own; `..\\` stays refused."""
    archive = tmp_path / "dogImages.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for split in ("train", "valid"):
            zf.writestr(f"dogImages\\{split}\\001.Affenpinscher\\x.jpg", b"x")
    archives.unpack_all([archive], tmp_path / "out", archives.Limits())
    found = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.jpg"))
    assert found == ["dogImages/train/001.Affenpinscher/x.jpg", "dogImages/valid/001.Affenpinscher/x.jpg"]
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("train\\..\\..\\escape.jpg", b"z")
    with pytest.raises(archives.DataError, match="outside its folder"):
        archives.unpack_all([archive], tmp_path / "again", archives.Limits())


# -- the scratch folder archives unpack into (TRAINER_SCRATCH/<channel>) -----------


def channel_with_zip(tmp_path: Path, members: dict[str, bytes]) -> Path:
    channel = tmp_path / "channel"
    channel.mkdir()
    with zipfile.ZipFile(channel / "data.zip", "w") as zf:
        for name, blob in members.items():
            zf.writestr(name, blob)
    return channel


def test_a_scratch_folder_the_trainer_did_not_make_is_never_emptied(tmp_path):
    """TRAINER_SCRATCH pointed by mistake at a folder of someone's files (/opt/ml, say)."""
    channel = channel_with_zip(tmp_path, {"train/a/1.jpg": b"x"})
    theirs = tmp_path / "opt-ml" / "training"
    theirs.mkdir(parents=True)
    (theirs / "precious.txt").write_text("keep me")
    with pytest.raises(archives.DataError) as refused:
        data.unpack_channel(channel, theirs)
    assert str(refused.value) == (
        f"scratch folder {theirs} exists and was not made by the trainer; refusing to empty it: "
        "point TRAINER_SCRATCH at a new or empty folder"
    )
    assert (theirs / "precious.txt").read_text() == "keep me"


def test_the_trainers_own_scratch_is_replaced_and_removed_after_a_refusal(tmp_path):
    channel = channel_with_zip(tmp_path, {"train/a/1.jpg": b"x"})
    scratch = tmp_path / "scratch" / "training"
    assert data.unpack_channel(channel, scratch) == scratch
    assert (scratch / "train" / "a" / "1.jpg").read_bytes() == b"x"
    # the channel changes: its old tree goes, the new one is unpacked in its place
    with zipfile.ZipFile(channel / "data.zip", "w") as zf:
        zf.writestr("train/b/2.jpg", b"y")
    data.unpack_channel(channel, scratch)
    assert sorted(p.relative_to(scratch).as_posix() for p in scratch.rglob("*.jpg")) == ["train/b/2.jpg"]
    # a refused archive: nothing half-unpacked stays
    with zipfile.ZipFile(channel / "data.zip", "w") as zf:
        zf.writestr("../escape.jpg", b"z")
    with pytest.raises(archives.DataError, match="outside its folder"):
        data.unpack_channel(channel, scratch)
    assert not scratch.exists()
