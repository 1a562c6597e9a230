"""Unpacking untrusted archives (.zip, .tar, .tar.gz/.tgz/.bz2/.xz): the only way data archives are opened.

Refused, with a one-line DataError: a member path outside the target folder
(absolute, `..`); any link (tar symlinks and hard links, zip members whose mode
says symlink); devices, fifos and sparse tar members; more members, more
uncompressed bytes or deeper nesting than the limits below. Sizes are checked
twice: as the headers declare them, summed header by header while a tar is
listed (listing a compressed tar decompresses each member to reach the next
header, so a bomb must stop at its first oversized header, before its data),
and as the bytes arrive (headers can lie), so a lying or bomb-like member stops
at the limit. A time limit covers listing and writing both: every read of the
archive file checks it, so a slow bomb stops too.
Archives found inside an archive (Kaggle's dogs-vs-cats.zip holds train.zip)
are unpacked where they lie, as `unzip` would, and then deleted; one budget of
bytes and members covers a channel's archives and everything nested in them.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import os
import shutil
import stat
import tarfile
import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
# AppleDouble folders of zips made on a Mac: counted, never written
SKIPPED_TOP_FOLDERS = {"__MACOSX"}
CHUNK = 1 << 20
# The most a tar may ask for in one read: tarfile reads a GNU long name or a PAX record whole, as big as
# its header declares (a 300 KB .tar.gz declaring 300 MiB peaked at 615 MiB before any limit); a name or
# a record of this size is no real archive's.
MAX_TAR_READ = 16 << 20


class DataError(ValueError):
    """The input data cannot be used; the message is one line."""


@dataclass(frozen=True)
class Limits:
    """Per channel. The defaults fit dogImages (1.1 GB, ~8,800 members) and Kaggle's
    dogs-vs-cats (~37,500 members, ~1.6 GB counting train.zip and test1.zip both
    as stored and unpacked) many times over, and still stop a bomb."""

    max_bytes: int = 16 * 1024**3
    max_members: int = 200_000
    max_depth: int = 3  # a channel's archive is depth 1; Kaggle's train.zip inside it is 2
    # dogImages unpacks in about 20 s; 16 GiB of bzip2 at its ~50 MB/s about 6 minutes
    max_seconds: int = 1800

    ENV = {
        "max_bytes": "TRAINER_ARCHIVE_MAX_BYTES",
        "max_members": "TRAINER_ARCHIVE_MAX_MEMBERS",
        "max_depth": "TRAINER_ARCHIVE_MAX_DEPTH",
        "max_seconds": "TRAINER_ARCHIVE_MAX_SECONDS",
    }

    @classmethod
    def from_env(cls) -> Limits:
        values = {}
        for field_name, var in cls.ENV.items():
            text = os.environ.get(var, "").strip()
            if text:
                values[field_name] = parse_count(text, var)
        return cls(**values)


def parse_count(text: str, what: str) -> int:
    """`12345`, or with a binary unit: `800M`, `20G`."""
    units = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
    scale = units.get(text[-1].upper(), 1)
    try:
        value = int(text[:-1] if scale > 1 else text) * scale
    except ValueError:
        raise DataError(f"{what}={text!r} is not a whole number (units K, M, G, T allowed)") from None
    if value < 1:
        raise DataError(f"{what}={text!r} must be at least 1")
    return value


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _size(n: int) -> str:
    return f"{n / 1024**3:.1f} GiB" if n >= 1024**3 else f"{n / 1024**2:.1f} MiB"


class Budget:
    """What a channel may still unpack: bytes, members and time, over all its archives and their nesting."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.bytes_left, self.members_left = limits.max_bytes, limits.max_members
        self.deadline = time.monotonic() + limits.max_seconds

    def check_time(self, archive: str) -> None:
        if time.monotonic() > self.deadline:
            raise DataError(
                f"archive {archive} takes longer to unpack than the {self.limits.max_seconds:,} s allowed "
                f"per channel ({Limits.ENV['max_seconds']}); refusing it"
            )

    def check_bytes(self, archive: str, size: int) -> None:
        if size > self.bytes_left:
            raise DataError(
                f"archive {archive} declares {_size(size)} uncompressed, more than the "
                f"{_size(self.limits.max_bytes)} allowed per channel ({Limits.ENV['max_bytes']}); refusing it"
            )

    def check_members(self, archive: str, members: int) -> None:
        if members > self.members_left:
            raise DataError(
                f"archive {archive} has more members than the {self.limits.max_members:,} allowed "
                f"per channel ({Limits.ENV['max_members']}); refusing it"
            )

    def declare(self, archive: str, members: int, size: int, dest: Path) -> None:
        self.check_members(archive, members)
        self.check_bytes(archive, size)
        free = shutil.disk_usage(dest).free
        if size > free:
            raise DataError(f"archive {archive} needs {_size(size)} to unpack, {_size(free)} free in {dest}")
        self.members_left -= members

    def spend(self, archive: str, n: int) -> None:
        self.bytes_left -= n
        if self.bytes_left < 0:
            raise DataError(
                f"archive {archive} unpacks to more than the {_size(self.limits.max_bytes)} allowed "
                f"per channel ({Limits.ENV['max_bytes']}): its headers understate it; refusing it"
            )


# magic bytes -> how to open the stream; a tar without any is read as is
DECOMPRESSORS: dict[bytes, Callable[[BinaryIO], io.BufferedIOBase]] = {
    b"\x1f\x8b": lambda raw: gzip.GzipFile(fileobj=raw, mode="rb"),
    b"BZh": bz2.BZ2File,
    b"\xfd7zXZ\x00": lzma.LZMAFile,
}


class _TimedReader:
    """An archive's bytes (a tar's decompressed), every read checking the channel's time limit.

    Listing a compressed tar decompresses the data between headers, and bzip2 turns 79 bytes
    into 64 MiB: the file's own reads are too few to check, so the decompressed stream is read
    here in chunks, a forward seek included (which the decompressors would do in one call)."""

    def __init__(self, stream, archive: str, budget: Budget, compressed: bool, max_read: int | None = None):
        self._stream, self._archive, self._budget, self._compressed = stream, archive, budget, compressed
        self._max_read = max_read

    def read(self, size: int = -1) -> bytes:
        if self._max_read is not None and (size is None or size < 0 or size > self._max_read):
            raise DataError(
                f"archive {self._archive} has a header that asks for {'all' if size is None or size < 0 else f'{size:,}'} "
                f"bytes at once (a long name or a PAX record), more than {self._max_read:,}; refusing it"
            )
        parts, left = [], size if size is not None and size >= 0 else float("inf")
        while left > 0:
            self._budget.check_time(self._archive)
            part = self._stream.read(int(min(left, CHUNK)))
            if not part:
                break
            parts.append(part)
            left -= len(part)
        return b"".join(parts)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if self._compressed and whence == os.SEEK_SET and offset > self._stream.tell():
            while (gap := offset - self._stream.tell()) > 0 and self.read(min(gap, CHUNK)):
                pass
            return self._stream.tell()
        return self._stream.seek(offset, whence)

    def __getattr__(self, name):  # tell, name, mode, close: as the stream has them
        return getattr(self._stream, name)


@contextlib.contextmanager
def _timed_open(archive: Path, budget: Budget, compressed_tar: bool = True):
    """The archive's bytes, a compressed tar's decompressed (found by magic bytes), as a _TimedReader."""
    with open(archive, "rb") as raw:
        magic = raw.read(6)
        raw.seek(0)
        opener = next((o for m, o in DECOMPRESSORS.items() if magic.startswith(m)), None) if compressed_tar else None
        max_read = MAX_TAR_READ if compressed_tar else None
        if opener is None:
            yield _TimedReader(raw, archive.name, budget, compressed=False, max_read=max_read)
            return
        with opener(raw) as stream:
            yield _TimedReader(stream, archive.name, budget, compressed=True, max_read=max_read)


def _member_path(root: Path, archive: str, name: str) -> Path | None:
    """Where member `name` goes under `root`; None for skipped ones; DataError if outside."""
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts:
        raise DataError(f"archive {archive} has a member outside its folder: {name!r}; refusing it")
    parts = [p for p in pure.parts if p not in ("", ".")]
    if not parts or parts[0] in SKIPPED_TOP_FOLDERS:
        return None
    target = root.joinpath(*parts)
    if root not in target.resolve().parents:  # belt and braces: no member lands outside
        raise DataError(f"archive {archive} has a member outside its folder: {name!r}; refusing it")
    return target


def _write(source, target: Path, archive: str, name: str, declared: int, budget: Budget) -> None:
    """Copy a member's bytes, counted as they come: never more than it declared or the budget allows."""
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as out:
        while chunk := source.read(CHUNK):
            written += len(chunk)
            if written > declared:
                raise DataError(
                    f"archive {archive}: member {name!r} holds more than the {declared:,} bytes "
                    "its header declares; refusing it"
                )
            budget.spend(archive, len(chunk))
            out.write(chunk)


def _extract_zip(archive: Path, root: Path, budget: Budget) -> list[Path]:
    with _timed_open(archive, budget, compressed_tar=False) as stream, zipfile.ZipFile(stream) as zf:
        infos = zf.infolist()
        budget.check_members(archive.name, len(infos))
        for info in infos:
            mode = info.external_attr >> 16 if info.create_system == 3 else 0  # 3: made on Unix, mode bits valid
            if stat.S_ISLNK(mode):
                raise DataError(f"archive {archive.name} has a link, {info.filename!r}; links are refused")
            if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):  # 0: no type given (zipfile's writestr)
                raise DataError(
                    f"archive {archive.name} has a member that is not a file or folder: {info.filename!r}; refusing it"
                )
        # Windows tools (PowerShell 5.1's Compress-Archive among them) write `\` between folders; read as
        # part of a name, dogImages\train\001.Affenpinscher\x.jpg landed flat and each split became classes
        members = [(_zip_name(i), i.file_size, i.is_dir(), i) for i in infos]
        return _write_members(archive.name, root, budget, members, zf.open)


def _zip_name(info: zipfile.ZipInfo) -> str:
    """A member's path with `/` between its folders, as unzip reads it."""
    return info.filename.replace("\\", "/")


def _tar_members(tf: tarfile.TarFile, archive: str, budget: Budget) -> list[tarfile.TarInfo]:
    """The members, read one header at a time: a tar of millions stops at the limit, not in memory, and
    one whose sizes add up past the budget stops at that header, before the next is reached (in a
    compressed tar, by decompressing the data between)."""
    members, declared = [], 0
    for member in tf:
        members.append(member)
        declared += member.size
        budget.check_members(archive, len(members))
        budget.check_bytes(archive, declared)
        if member.issym() or member.islnk():
            raise DataError(f"archive {archive} has a link, {member.name!r}; links are refused")
        if not (member.isreg() or member.isdir()) or member.issparse():
            raise DataError(
                f"archive {archive} has a member that is not a file or folder: {member.name!r}; refusing it"
            )
    return members


def _extract_tar(archive: Path, root: Path, budget: Budget) -> list[Path]:
    with _timed_open(archive, budget) as stream, tarfile.open(fileobj=stream, mode="r:") as tf:
        members = [(m.name, m.size, m.isdir(), m) for m in _tar_members(tf, archive.name, budget)]
        return _write_members(archive.name, root, budget, members, tf.extractfile)


def _write_members(archive: str, root: Path, budget: Budget, members, open_member) -> list[Path]:
    """Write (name, declared size, is a folder, member) entries of a zip or tar, whose types were checked:
    every path first, then the budget for them all, then the bytes. Returns the files written."""
    for name, _, _, _ in members:
        _member_path(root, archive, name)
    budget.declare(archive, len(members), sum(size for _, size, _, _ in members), root)
    written = []
    for name, size, is_dir, member in members:
        target = _member_path(root, archive, name)
        if target is None:
            continue
        if is_dir:
            target.mkdir(parents=True, exist_ok=True)
            continue
        with open_member(member) as source:
            _write(source, target, archive, name, size, budget)
        written.append(target)
    return written


def extract(archive: Path, dest: Path, budget: Budget, depth: int = 1, shown: str | None = None) -> int:
    """Unpack `archive` into `dest`, then the archives it held (each where it lies, then deleted).

    Returns the number of files written, nested ones included."""
    shown = shown or archive.name
    if depth > budget.limits.max_depth:
        raise DataError(
            f"archive {shown} is nested {depth} deep, more than the {budget.limits.max_depth} "
            f"allowed ({Limits.ENV['max_depth']}); refusing it"
        )
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    try:
        if archive.name.lower().endswith(".zip"):
            written = _extract_zip(archive, root, budget)
        else:
            written = _extract_tar(archive, root, budget)
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        tarfile.TarError,
        EOFError,
        OSError,
        NotImplementedError,
        zlib.error,
        lzma.LZMAError,
        RuntimeError,
    ) as exc:  # RuntimeError: an encrypted zip member
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(f"archive {shown} cannot be unpacked: {detail}") from None
    files = len(written)
    for inner in (p for p in written if is_archive(p)):
        files += extract(inner, inner.parent, budget, depth + 1, f"{shown}/{inner.relative_to(root)}") - 1
        inner.unlink()
    return files


def unpack_all(archives: list[Path], dest: Path, limits: Limits) -> None:
    """A channel's archives into `dest`, under one budget; one log line each."""
    budget = Budget(limits)
    for archive in archives:
        started = time.monotonic()
        files = extract(archive, dest, budget)
        print(f"unpacked {archive.name}: {files:,} files in {time.monotonic() - started:.1f} s", flush=True)
