"""An asynchronous request's parsers (server/async_input.py): what comes out of well-formed zips,
tars and JSON lines, and what hostile ones achieve (nothing: a 4xx for the whole request before any
image is read, or an error entry for the one member). Hypothesis for arbitrary bytes and names."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import tarfile
import zipfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server import async_input
from server.async_input import JSON_LINES, MAX_NAME_CHARS, TAR, ZIP, Entry, Limits
from server.errors import RequestError, TooLarge

pytestmark = pytest.mark.filterwarnings("ignore:Duplicate name")  # Hypothesis repeats names: archives may too
EXAMPLES = settings(max_examples=100, deadline=None)
LIMITS = Limits(max_entries=50, max_image_bytes=1000, max_total_bytes=20_000)
NAMES = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1, max_size=40)
FILES = st.lists(st.tuples(NAMES, st.binary(max_size=300)), max_size=8)


def read(kind: str, body: bytes, limits: Limits = LIMITS) -> list[Entry]:
    return list(async_input.entries(kind, io.BytesIO(body), limits))


def make_zip(files, compression=zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in files:
            archive.writestr(name, data)
    return buffer.getvalue()


def make_tar(files, tar_format=tarfile.PAX_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tar_format) as archive:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def refused_or(kind: str, body: bytes, limits: Limits = LIMITS) -> list[Entry] | None:
    """The entries, or None when the request was refused with a RequestError; anything else fails."""
    try:
        return read(kind, body, limits)
    except RequestError:
        return None


# -- well-formed requests: every image, in order, under its name --


@EXAMPLES
@given(files=FILES)
def test_a_zip_gives_its_files_in_order(files):
    files = [(name.replace("\\", "_").rstrip("/") or "x", data) for name, data in files]
    entries = read(ZIP, make_zip(files))
    assert [(e.name, e.data) for e in entries] == [(async_input.entry_name(n), d) for n, d in files]


@EXAMPLES
@given(files=FILES, tar_format=st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT]))
def test_a_tar_gives_its_files_in_order_long_names_too(files, tar_format):
    files = [(name.rstrip("/") or "x", data) for name, data in files]
    try:
        body = make_tar(files, tar_format)
    except ValueError:  # ustar cannot hold this name: not an archive anyone sends
        return
    entries = read(TAR, body)
    assert [(e.name, e.data) for e in entries] == [(async_input.entry_name(n), d) for n, d in files]


def test_a_long_tar_name_comes_from_its_pax_or_gnu_header():
    name = "photos/" + "a" * 300 + ".jpg"
    for tar_format in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        assert read(TAR, make_tar([(name, b"img")], tar_format))[0].name == name


@EXAMPLES
@given(files=FILES)
def test_json_lines_give_their_images_in_order(files):
    body = b"".join(
        json.dumps({"name": name, "b64": base64.b64encode(data).decode()}).encode() + b"\n" for name, data in files
    )
    entries = read(JSON_LINES, body)
    ok = [(e.name, e.data) for e in entries]
    expected = [(async_input.entry_name(n), d) if d else (async_input.entry_name(n), None) for n, d in files]
    assert [(name, data or None) for name, data in ok] == expected


def test_a_line_without_a_name_is_named_by_its_number_and_blank_lines_are_skipped():
    image = base64.b64encode(b"\x89PNG").decode()
    body = f'{{"image": "{image}"}}\n\n  \n{{"b64": "{image}", "name": "b.png"}}'.encode()
    assert [(e.name, e.data) for e in read("application/x-ndjson", body)] == [
        ("line 1", b"\x89PNG"),
        ("b.png", b"\x89PNG"),
    ]


# -- what is no image: skipped or an error entry, never a failed request --


def test_folders_links_and_devices_in_a_zip_are_skipped():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a/", b"")
        link = zipfile.ZipInfo("link.jpg")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
        fifo = zipfile.ZipInfo("fifo")
        fifo.external_attr = (stat.S_IFIFO | 0o644) << 16
        archive.writestr(fifo, b"")
        archive.writestr("a/ok.jpg", b"data")
    assert [e.name for e in read(ZIP, buffer.getvalue())] == ["a/ok.jpg"]


def test_folders_links_and_devices_in_a_tar_are_skipped():
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, kind in (("d", tarfile.DIRTYPE), ("s", tarfile.SYMTYPE), ("h", tarfile.LNKTYPE)):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, "/etc/passwd"
            archive.addfile(info)
        for name, kind in (("c", tarfile.CHRTYPE), ("f", tarfile.FIFOTYPE)):
            info = tarfile.TarInfo(name)
            info.type = kind
            archive.addfile(info)
        info = tarfile.TarInfo("../../etc/ok.jpg")  # a name, never a path: echoed as it is
        info.size = 4
        archive.addfile(info, io.BytesIO(b"data"))
    assert [(e.name, e.data) for e in read(TAR, buffer.getvalue())] == [("../../etc/ok.jpg", b"data")]


def test_a_member_larger_than_an_image_may_be_is_an_error_entry_and_the_next_one_is_read():
    files = [("big.jpg", b"x" * 1001), ("ok.jpg", b"y" * 1000)]
    for kind, body in ((ZIP, make_zip(files)), (TAR, make_tar(files))):
        big, ok = read(kind, body)
        assert big.data is None and "larger than 1000 bytes" in big.error
        assert ok.data == b"y" * 1000


def test_an_overlong_json_line_is_an_error_entry_read_without_holding_it():
    image = base64.b64encode(b"z" * 1000).decode()
    body = b'{"b64": "' + b"A" * 200_000 + b'"}\n' + json.dumps({"b64": image}).encode()
    too_long, ok = read(JSON_LINES, body)
    assert too_long.name == "line 1" and "longer than" in too_long.error
    assert (ok.name, ok.data) == ("line 2", b"z" * 1000)


@pytest.mark.parametrize(
    "text",
    ["not json", "[1, 2]", '{"b64": 5}', '{"b64": "***"}', '{"name": 3, "b64": "AAAA"}', '{"b64": "A", "image": "A"}'],
)
def test_a_bad_json_line_is_an_error_entry(text):
    (entry,) = read(JSON_LINES, text.encode() + b"\n")
    assert entry.name == "line 1" and entry.data is None and entry.error


def test_a_corrupt_or_encrypted_zip_member_is_an_error_entry():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a.jpg", b"a" * 500)
        archive.writestr("c.jpg", b"c" * 500)
        archive.writestr("b.jpg", b"b" * 500)
    body = bytearray(buffer.getvalue())
    record = body.rindex(b"PK\x01\x02", 0, body.rindex(b"c.jpg"))
    body[record + 8] |= 0x1  # "encrypted" in the central directory: zipfile wants a password
    body[body.index(b"a" * 500) + 10] ^= 1  # its CRC no longer matches
    bad, locked, good = read(ZIP, bytes(body))
    assert bad.data is None and "unreadable" in bad.error
    assert locked.data is None and "encrypted" in locked.error
    assert good.data == b"b" * 500


def test_names_are_cut_short_and_lose_control_characters():
    name = "evil\r\nX-Forged: 1\x1b[31m" + "n" * 5000
    (entry,) = read(ZIP, make_zip([(name, b"d")]))
    assert len(entry.name) == MAX_NAME_CHARS and "\n" not in entry.name and "\x1b" not in entry.name


# -- refused as a whole, before any image is read --


def test_too_many_members_or_lines_is_413_before_reading():
    files = [(f"{i}.jpg", b"") for i in range(51)]
    for kind, body in ((ZIP, make_zip(files)), (TAR, make_tar(files))):
        with pytest.raises(TooLarge, match="SAGEMAKER_ASYNC_MAX_IMAGES_PER_REQUEST"):
            read(kind, body)
    with pytest.raises(TooLarge, match="51|lines"):
        read(JSON_LINES, b"{}\n" * 51)
    assert len(read(ZIP, make_zip(files[:50]))) == 50


def test_folders_count_as_members():
    with pytest.raises(TooLarge):
        read(ZIP, make_zip([(f"{i}/", b"") for i in range(51)]))


def test_a_zip_bomb_is_refused_from_its_declared_sizes_before_unpacking():
    # 30 members of 1000 zeros each: 30 KB unpacked from a few hundred bytes, over the 20 KB total
    body = make_zip([(f"{i}.jpg", bytes(1000)) for i in range(30)])
    assert len(body) < 5000
    with pytest.raises(TooLarge, match="unpack to more than 20000 bytes"):
        read(ZIP, body)


def test_a_zip_member_that_lies_about_its_size_is_never_unpacked_past_it():
    body = bytearray(make_zip([("bomb.jpg", bytes(10_000))]))
    # the central directory (and the local header) claim 100 bytes for 10,000
    for signature, offset in ((b"PK\x01\x02", 24), (b"PK\x03\x04", 22)):
        at = body.index(signature) + offset
        body[at : at + 4] = (100).to_bytes(4, "little")
    (entry,) = read(ZIP, bytes(body))
    assert entry.data is None and "unreadable" in entry.error


def test_an_end_record_that_understates_its_members_is_counted_before_zipfile_parses_them(monkeypatch):
    """Counted from the records' headers: zipfile would first make an object of every one (a 22 MB
    directory claiming 1 member: 440,000 of them, 190 MB)."""
    body = bytearray(make_zip([(f"{i}.jpg", b"") for i in range(60)]))
    end = body.rindex(b"PK\x05\x06")
    body[end + 8 : end + 12] = (1).to_bytes(2, "little") * 2  # "1 member"

    def parsed(*args, **kwargs):
        raise AssertionError("zipfile parsed the central directory")

    monkeypatch.setattr(async_input.zipfile, "ZipFile", parsed)
    with pytest.raises(TooLarge):
        read(ZIP, bytes(body))


def test_members_zipfile_cannot_unpack_in_bounded_memory_are_error_entries():
    """bzip2 and xz members are unpacked a whole chunk at a time with no bound on the output (a few KB
    of bzip2: gigabytes) before zipfile cuts them to their declared size: not read at all."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a.jpg", b"a" * 100, compress_type=zipfile.ZIP_BZIP2)
        archive.writestr("b.jpg", b"b" * 100, compress_type=zipfile.ZIP_LZMA)
        archive.writestr("c.jpg", b"c" * 100, compress_type=zipfile.ZIP_DEFLATED)
        archive.writestr("d.jpg", b"d" * 100, compress_type=zipfile.ZIP_STORED)
    a, b, c, d = read(ZIP, buffer.getvalue())
    assert a.data is None and b.data is None and "compression" in a.error and "compression" in b.error
    assert (c.data, d.data) == (b"c" * 100, b"d" * 100)


def test_a_pax_header_is_read_for_a_bounded_number_of_records():
    """A 64 KB header of 2-byte records took quadratic time to walk (each record copied the rest off):
    walked in place, and no more than MAX_PAX_RECORDS of them."""
    filler = b"2 " * (async_input.MAX_PAX_RECORDS + 1)
    assert async_input._long_name(tarfile.XHDTYPE, filler + b"13 path=a.jpg\n") is None
    assert async_input._long_name(tarfile.XHDTYPE, b"2 " * 10 + b"13 path=a.jpg\n") == "a.jpg"


def test_a_huge_central_directory_is_refused_before_zipfile_parses_it():
    # 40 members (within the 50 allowed) with 2 KB names: 80 KB of directory, over 50 x 1 KB
    body = make_zip([(f"{i}" + "n" * 2000, b"") for i in range(40)])
    with pytest.raises(TooLarge, match="central directory"):
        read(ZIP, body)


def test_an_oversized_pax_header_is_refused_without_reading_it():
    body = make_tar([("a" * 200, b"x")])
    header = tarfile.TarInfo("pax")
    header.type, header.size = tarfile.XHDTYPE, 10 << 20
    huge = header.tobuf(tarfile.USTAR_FORMAT) + bytes(10 << 20) + body
    with pytest.raises(RequestError, match="extended header"):
        read(TAR, huge)


def test_a_tar_member_running_past_the_end_is_refused():
    body = make_tar([("a.jpg", b"x" * 3000)])
    with pytest.raises(RequestError, match="past the end|cut short"):
        read(TAR, body[:2000])


@pytest.mark.parametrize("kind", [ZIP, TAR])
def test_what_is_no_archive_is_400(kind):
    with pytest.raises(RequestError, match="malformed"):
        read(kind, b"hello, this is no archive at all" * 40)


def test_a_zip64_locator_of_many_disks_is_400():
    """zipfile's end-record reader raises BadZipFile ("zipfiles that span multiple disks are not supported")
    for a zip64 locator that names more than one disk: neither an OSError nor a ValueError, so a 500."""
    body = make_zip([("a.jpg", b"x")])
    end = body.rindex(zipfile.stringEndArchive)
    locator = struct.pack(zipfile.structEndArchive64Locator, zipfile.stringEndArchive64Locator, 1, 0, 2)
    with pytest.raises(RequestError, match="malformed zip"):
        read(ZIP, body[:end] + locator + body[end:])


# -- arbitrary bytes: a value or a RequestError, never another exception --


@EXAMPLES
@given(body=st.binary(max_size=3000), kind=st.sampled_from([ZIP, TAR, JSON_LINES]))
def test_any_bytes_are_entries_or_a_4xx(body, kind):
    entries = refused_or(kind, body)
    for entry in entries or []:
        assert (entry.data is None) != (entry.error is None)
        assert entry.data is None or len(entry.data) <= LIMITS.max_image_bytes


@EXAMPLES
@given(files=FILES, flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=6))
def test_damaged_archives_are_entries_or_a_4xx(files, flips):
    files = [(name.rstrip("/") or "x", data) for name, data in files]
    for kind, body in ((ZIP, make_zip(files)), (TAR, make_tar(files))):
        damaged = bytearray(body)
        for at, bits in flips:
            damaged[at % len(damaged)] ^= bits
        entries = refused_or(kind, bytes(damaged))
        for entry in entries or []:
            assert (entry.data is None) != (entry.error is None)


@EXAMPLES
@given(lines=st.lists(st.binary(max_size=200) | st.text(max_size=80).map(str.encode), max_size=10))
def test_any_lines_are_entries_or_a_4xx(lines):
    entries = refused_or(JSON_LINES, b"\n".join(lines))
    for entry in entries or []:
        assert entry.name.startswith("line ") or entry.data is not None


# -- the disk the spooled bodies take, and waiting out a busy server --


def test_a_body_the_disk_cannot_hold_beside_any_workers_others_is_refused_before_spooling(tmp_path):
    """Two workers (two rooms on one run folder: they share nothing but the folder): a body that fits the
    disk alone but not beside what the other worker holds is a 503. Counted in each worker's memory, as it
    was, the second worker promised the same room again."""
    from server.errors import Overloaded
    from server.spool_room import DISK_HEADROOM_BYTES, SpoolRoom

    worker_a, worker_b = SpoolRoom(tmp_path), SpoolRoom(tmp_path)
    half = (shutil.disk_usage(tmp_path).free - DISK_HEADROOM_BYTES) // 2
    held = worker_a.take(half)
    worker_b.take(half // 2)
    with pytest.raises(Overloaded):
        worker_b.take(half)  # fits the disk alone, not beside the other two
    SpoolRoom.give_back(held)
    worker_b.take(half)  # room again once a request is done


def test_a_dead_workers_tickets_hold_no_room(tmp_path):
    """A worker killed with bodies in flight: its tickets count for nothing (its pid is gone) and the master
    removes them when it reaps it."""
    from server import spool_room

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid, live_pid = int(gone.stdout), os.getpid()
    folder = tmp_path / spool_room.FOLDER
    folder.mkdir()
    huge = shutil.disk_usage(tmp_path).free
    (folder / f"t-{dead_pid}-a-{huge}").touch()
    (folder / f"t-{live_pid}-b-1").touch()
    ticket = spool_room.SpoolRoom(tmp_path).take(1000)  # the dead one's would fill the disk
    assert sorted(path.name for path in folder.glob("t-*")) == sorted([f"t-{live_pid}-b-1", ticket.name])
    spool_room.forget_worker(tmp_path, live_pid)
    assert list(folder.glob("t-*")) == []


def test_waiting_out_a_busy_server_does_not_spin():
    """With SAGEMAKER_DECODE_WAIT_S=0 the decode budget refuses at once; the retries pause between them."""
    import time

    from server.async_inference import DeadlinePassed, until_deadline
    from server.errors import Overloaded

    calls = []

    def busy():
        calls.append(1)
        raise Overloaded("busy")

    with pytest.raises(DeadlinePassed):
        until_deadline(time.monotonic() + 0.3, busy)
    assert len(calls) < 30, len(calls)
