"""An asynchronous request's images, one at a time, from its body spooled to a file:

    application/zip       every regular member (zip needs its central directory: random access)
    application/x-tar     every regular member of an uncompressed tar (images are compressed already)
    application/jsonlines one {"name": ..., "b64": ...} (or "image") object per line

`entries(kind, file, limits)` checks what can be checked before any image is read (the
archive's structure, its member or line count, the size its members declare) and raises a
RequestError (400, 413) for the whole request; then it yields one Entry per image, in order.
A member or line that cannot be used is an Entry with an `error`, never a failed request.

Everything here is the client's: a member's name is only ever text to echo (cut short, control
characters replaced), never a path; folders, links, devices and tar's extended headers are no
images (skipped); each image is read into memory alone, at most `max_image_bytes` of it, so a
request of any size holds one image at a time. Zip bombs: the sizes the central directory
declares must add up to at most `max_total_bytes` before anything is unpacked, and a member is
never unpacked past what it declared (zipfile stops there and checks its CRC) nor past
`max_image_bytes`. Nothing here knows HTTP or the model.
"""

from __future__ import annotations

import lzma
import math
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from server.errors import RequestError, TooLarge, UnsupportedContentType
from server.handlers import base64_image
from server.parsing import json_document

ZIP = "application/zip"
TAR = "application/x-tar"
JSON_LINES = "application/jsonlines"
JSON_LINES_ALIASES = frozenset({JSON_LINES, "application/x-jsonlines", "application/jsonl", "application/x-ndjson"})
KINDS = frozenset({ZIP, TAR, *JSON_LINES_ALIASES})

MAX_NAME_CHARS = 1024
# A zip's central directory holds 46 bytes and the name (and extras) per member: more than this on
# average is no archive of images, and zipfile would parse all of it into memory at once.
MAX_CENTRAL_RECORD_BYTES = 1024
CENTRAL_HEADER_BYTES = 46  # a central directory record's fixed part; its name, extra and comment follow
# A tar's long-name and pax headers: a name and a few fields, never megabytes.
MAX_EXTENDED_HEADER_BYTES = 64 << 10
MAX_EXTENDED_HEADERS_IN_A_ROW = 4
# A JSON line holds its base64 image (4/3 of its bytes) and a name besides.
LINE_OVERHEAD_BYTES = 4 * MAX_NAME_CHARS + 1024
BLOCK = tarfile.BLOCKSIZE
REGULAR_TAR_TYPES = frozenset({tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE})
EXTENDED_TAR_TYPES = frozenset({tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK})
# What a corrupt zip member (bad CRC, unsupported or broken compression, encrypted) raises
ZIP_MEMBER_ERRORS = (
    zipfile.BadZipFile,
    RuntimeError,
    NotImplementedError,
    OSError,
    EOFError,
    ValueError,
    zlib.error,
    lzma.LZMAError,
    struct.error,
)
_CONTROL = dict.fromkeys([*range(32), 127], "?")
# zipfile unpacks a deflated member at most as far as asked; a bzip2 or xz member a whole chunk of its
# compressed bytes at once, with no bound on the output (a few KB of bzip2: gigabytes), before it cuts
# the result to the declared size. Images are compressed already: stored and deflate are what tools write.
BOUNDED_COMPRESSIONS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED})
UNBOUNDED_COMPRESSION = "unsupported archive member compression (only stored and deflate)"
# pax records in one extended header: a path and a few fields, never thousands
MAX_PAX_RECORDS = 64


@dataclass(frozen=True)
class Limits:
    max_entries: int  # archive members (folders and links included) or lines
    max_image_bytes: int  # one image, as sent (after base64 for a line)
    max_total_bytes: int  # what an archive's members unpack to, together


@dataclass(frozen=True)
class Entry:
    """One image of the request: its bytes, or why it has none."""

    name: str
    data: bytes | None = None
    error: str | None = None


def entry_name(text: str) -> str:
    """A client's name as it is echoed: at most MAX_NAME_CHARS, no control characters."""
    return text[:MAX_NAME_CHARS].translate(_CONTROL)


def media_kind(kind: str) -> str:
    return JSON_LINES if kind in JSON_LINES_ALIASES else kind


def entries(kind: str, file: BinaryIO, limits: Limits) -> Iterator[Entry]:
    """The request's images in order; RequestError before the first one for a request that is
    malformed or too large as a whole. `file` is seekable and read from its start."""
    kind = media_kind(kind)
    if kind == ZIP:
        return zip_entries(file, limits)
    if kind == TAR:
        return tar_entries(file, limits)
    if kind == JSON_LINES:
        return jsonl_entries(file, limits)
    raise UnsupportedContentType(f"not an asynchronous request type: {kind!r}")


def _too_many(limits: Limits, what: str) -> TooLarge:
    return TooLarge(f"more than {limits.max_entries} {what} in one request (SAGEMAKER_ASYNC_MAX_IMAGES_PER_REQUEST)")


def _too_large_for_one(limits: Limits) -> str:
    return f"image larger than {limits.max_image_bytes} bytes (SAGEMAKER_MAX_PAYLOAD_IN_MB)"


# -- zip --


def zip_entries(file: BinaryIO, limits: Limits) -> Iterator[Entry]:
    members_claimed, directory_bytes = _end_record(file)
    if members_claimed > limits.max_entries:
        raise _too_many(limits, "archive members")
    if directory_bytes > limits.max_entries * MAX_CENTRAL_RECORD_BYTES:
        raise TooLarge(f"zip central directory larger than {MAX_CENTRAL_RECORD_BYTES} bytes per member")
    if _central_records(file, limits.max_entries + 1) > limits.max_entries:  # the end record understated them
        raise _too_many(limits, "archive members")
    try:
        archive = zipfile.ZipFile(file)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, struct.error, NotImplementedError):
        raise RequestError("malformed zip archive") from None
    members = archive.infolist()
    if len(members) > limits.max_entries:  # the end record understated them
        archive.close()
        raise _too_many(limits, "archive members")
    images = [info for info in members if _is_regular_file(info)]
    if sum(info.file_size for info in images) > limits.max_total_bytes:
        archive.close()
        raise TooLarge(
            f"the archive's members unpack to more than {limits.max_total_bytes} bytes "
            "(SAGEMAKER_ASYNC_MAX_PAYLOAD_IN_MB)"
        )
    return _zip_images(archive, images, limits)


def _central_records(file: BinaryIO, at_most: int) -> int:
    """The central directory's records, counted up to `at_most` with their headers alone: zipfile would
    make an object of every one, however many the end record left unsaid."""
    file.seek(0)
    end = zipfile._EndRecData(file)  # type: ignore[attr-defined]
    start = end[zipfile._ECD_LOCATION] - end[zipfile._ECD_SIZE]  # type: ignore[attr-defined]
    if end[zipfile._ECD_SIGNATURE] == zipfile.stringEndArchive64:  # type: ignore[attr-defined]
        start -= zipfile.sizeEndCentDir64 + zipfile.sizeEndCentDir64Locator  # type: ignore[attr-defined]
    count, offset = 0, max(0, start)
    while count < at_most:
        file.seek(offset)
        header = file.read(CENTRAL_HEADER_BYTES)
        if len(header) < CENTRAL_HEADER_BYTES or not header.startswith(zipfile.stringCentralDir):  # type: ignore[attr-defined]
            break
        name, extra, comment = struct.unpack_from("<3H", header, 28)
        count, offset = count + 1, offset + CENTRAL_HEADER_BYTES + name + extra + comment
    return count


def _end_record(file: BinaryIO) -> tuple[int, int]:
    """(members, central directory bytes) as the end record claims them, read before zipfile
    parses the whole central directory into memory (zipfile's own reader of that record)."""
    file.seek(0)
    try:
        end = zipfile._EndRecData(file)  # type: ignore[attr-defined]
    except (zipfile.BadZipFile, OSError, struct.error, ValueError):  # BadZipFile: a zip64 locator of many disks
        end = None
    if not end:
        raise RequestError("malformed zip archive: no end of central directory")
    return end[zipfile._ECD_ENTRIES_TOTAL], end[zipfile._ECD_SIZE]  # type: ignore[attr-defined]


def _is_regular_file(info: zipfile.ZipInfo) -> bool:
    # The Unix file type where the writer recorded one; none from Windows tools and zipfile.writestr
    return not info.is_dir() and stat.S_IFMT(info.external_attr >> 16) in (0, stat.S_IFREG)


def _zip_images(archive: zipfile.ZipFile, images: list[zipfile.ZipInfo], limits: Limits) -> Iterator[Entry]:
    with archive:
        for info in images:
            name = entry_name(info.filename)
            if info.file_size > limits.max_image_bytes:
                yield Entry(name, error=_too_large_for_one(limits))
                continue
            if info.compress_type not in BOUNDED_COMPRESSIONS:
                yield Entry(name, error=UNBOUNDED_COMPRESSION)
                continue
            try:
                with archive.open(info) as member:
                    data = member.read(limits.max_image_bytes + 1)
            except ZIP_MEMBER_ERRORS:
                yield Entry(name, error="unreadable archive member (corrupt, encrypted or an unsupported compression)")
                continue
            if len(data) > limits.max_image_bytes:  # never: zipfile stops at the declared size
                yield Entry(name, error=_too_large_for_one(limits))
                continue
            yield Entry(name, data)


# -- tar --


@dataclass(frozen=True)
class TarMember:
    name: str
    offset: int  # of its data
    size: int
    regular: bool


def tar_entries(file: BinaryIO, limits: Limits) -> Iterator[Entry]:
    length = file.seek(0, 2)
    count = 0
    for _ in tar_members(file, length):  # the whole structure checked and counted first
        count += 1
        if count > limits.max_entries:
            raise _too_many(limits, "archive members")
    return _tar_images(file, length, limits)


def _tar_images(file: BinaryIO, length: int, limits: Limits) -> Iterator[Entry]:
    for member in tar_members(file, length):
        if not member.regular:
            continue
        name = entry_name(member.name)
        if member.size > limits.max_image_bytes:
            yield Entry(name, error=_too_large_for_one(limits))
            continue
        file.seek(member.offset)
        yield Entry(name, file.read(member.size))


def tar_members(file: BinaryIO, length: int) -> Iterator[TarMember]:
    """Every member of an uncompressed tar of `length` bytes, read header by header (tarfile's own
    reader would keep every member's header, and read a pax header of any size into memory)."""
    offset, long_name, extended = 0, None, 0
    while offset + BLOCK <= length:
        file.seek(offset)
        block = file.read(BLOCK)
        if block.count(0) == BLOCK:  # the end-of-archive marker
            return
        try:
            header = tarfile.TarInfo.frombuf(block, "utf-8", "replace")
        except tarfile.HeaderError:
            raise RequestError(f"malformed tar archive: bad header at byte {offset}") from None
        data = offset + BLOCK
        if header.size < 0 or data + header.size > length:
            raise RequestError(f"malformed tar archive: the member at byte {offset} runs past the end")
        offset = data + math.ceil(header.size / BLOCK) * BLOCK
        if header.type in EXTENDED_TAR_TYPES:
            extended += 1
            if header.size > MAX_EXTENDED_HEADER_BYTES or extended > MAX_EXTENDED_HEADERS_IN_A_ROW:
                raise RequestError(f"malformed tar archive: oversized extended header at byte {data - BLOCK}")
            file.seek(data)
            long_name = _long_name(header.type, file.read(header.size)) or long_name
            continue
        extended = 0
        yield TarMember(long_name or header.name, data, header.size, header.type in REGULAR_TAR_TYPES)
        long_name = None
    if offset < length:  # less than a block left: zeros (padding) or an archive cut short
        file.seek(offset)
        if file.read(length - offset).strip(b"\0"):
            raise RequestError("malformed tar archive: cut short")


def _long_name(kind: bytes, data: bytes) -> str | None:
    """The next member's name from a GNU long-name or a pax header (None from the others)."""
    if kind == tarfile.GNUTYPE_LONGNAME:
        return data.split(b"\0", 1)[0].decode("utf-8", "replace")
    if kind != tarfile.XHDTYPE:
        return None
    name, offset = None, 0
    for _ in range(MAX_PAX_RECORDS):  # records: b"<length> <key>=<value>\n", walked in place (no copies)
        if offset >= len(data):
            break
        size_text, _, _ = data[offset : offset + 20].partition(b" ")
        if not size_text.isdigit() or not 0 < int(size_text) <= len(data) - offset:
            break
        record = data[offset : offset + int(size_text)]
        offset += int(size_text)
        key, _, value = record.partition(b" ")[2].partition(b"=")
        if key == b"path":
            name = value.removesuffix(b"\n").decode("utf-8", "replace")
    return name


# -- JSON lines --


def jsonl_entries(file: BinaryIO, limits: Limits) -> Iterator[Entry]:
    file.seek(0)
    lines, last = 0, b"\n"
    while chunk := file.read(1 << 20):
        lines += chunk.count(b"\n")
        last = chunk[-1:]
    lines += last != b"\n"
    if lines > limits.max_entries:
        raise _too_many(limits, "lines")
    return _jsonl_images(file, limits)


def _jsonl_images(file: BinaryIO, limits: Limits) -> Iterator[Entry]:
    longest = 4 * math.ceil(limits.max_image_bytes / 3) + LINE_OVERHEAD_BYTES
    file.seek(0)
    number = 0
    while line := file.readline(longest + 1):
        number += 1
        if len(line) > longest and not line.endswith(b"\n"):
            while (rest := file.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass  # the rest of the line, read and dropped a bit at a time
            yield Entry(f"line {number}", error=f"line longer than {longest} bytes: its image is too large")
            continue
        if line.strip():
            yield json_line(line, number, limits)


def json_line(line: bytes, number: int, limits: Limits) -> Entry:
    """{"name": "cat.jpg", "b64": "<base64>"} ("image" for "b64"; "name" optional: "line N")."""
    where = f"line {number}"
    try:
        item = json_document(line)
        name = item.get("name", where) if isinstance(item, dict) else where
        if not isinstance(name, str):
            raise RequestError(f'{where}: "name" must be a string')
        name = entry_name(name)
        data = base64_image(item, where)
    except RequestError as exc:
        return Entry(where, error=str(exc))
    if len(data) > limits.max_image_bytes:
        return Entry(name, error=_too_large_for_one(limits))
    return Entry(name, data)
