"""Archive bombs: a compressed tar is refused at its first oversized header, and slow ones at the time limit.

The bombs are real: bzip2 packs 64 MiB of zeros into 79 bytes, and a .tar.bz2 may hold
many bzip2 streams one after another (tarfile reads them as one), so a few kilobytes
decompress to gigabytes. Listing a compressed tar decompresses every member's data to
reach the next header: a check after listing comes too late.
"""

from __future__ import annotations

import bz2
import io
import tarfile
import time
from functools import cache
from pathlib import Path

import pytest

from trainer import archives

GIB = 1 << 30


@cache
def zeros_64mib_bz2() -> bytes:
    return bz2.compress(bytes(64 << 20))


def header(name: str, size: int) -> bytes:
    """A tar header declaring `size` bytes (GNU base-256 sizes go past tar's 8 GiB octal field)."""
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(format=tarfile.GNU_FORMAT)


def bomb(path: Path, parts: list[tuple[str, int, int]]) -> Path:
    """A .tar.bz2 of (name, declared size, GiB of zeros actually behind the header) members."""
    with open(path, "wb") as out:
        for name, declared, zeros_gib in parts:
            out.write(bz2.compress(header(name, declared)))
            out.write(zeros_64mib_bz2() * (zeros_gib * 16))
    return path


def unpack(archive: Path, dest: Path, **limits) -> tuple[str, float]:
    started = time.monotonic()
    with pytest.raises(archives.DataError) as refused:
        archives.unpack_all([archive], dest, archives.Limits(**limits))
    return str(refused.value), time.monotonic() - started


def test_a_bz2_bomb_stops_at_its_first_header(tmp_path):
    """A 1 TiB-declaring member with 4 GiB of real zeros behind it, in a 5 KB file: refused at once.
    Summing sizes only after listing decompresses the zeros first (here until the time limit)."""
    archive = bomb(tmp_path / "bomb.tar.bz2", [("train/a/1.jpg", 1 << 40, 4)])
    assert archive.stat().st_size < 8 << 10
    reason, seconds = unpack(archive, tmp_path / "out", max_seconds=3)
    assert reason == (
        "archive bomb.tar.bz2 declares 1024.0 GiB uncompressed, more than the 16.0 GiB allowed "
        "per channel (TRAINER_ARCHIVE_MAX_BYTES); refusing it"
    )
    assert seconds < 1
    assert not list((tmp_path / "out").rglob("*.jpg"))


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
