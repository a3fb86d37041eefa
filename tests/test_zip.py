"""The package format: round trips, interoperability with stock tools, and hostile packages."""

from __future__ import annotations

import io
import itertools
import re
import shutil
import struct
import subprocess
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dspkg import zipformat as zf
from dspkg.errors import UnsafePackage
from dspkg.paths import path_problem, tree_problem
from dspkg.zipreader import (
    LocalEntryParser,
    parse_local_header,
    read_central_directory,
)
from dspkg.zipwriter import PackageWriter, WrittenEntry
from tests.helpers import build_package, read_entry

# Names as a dataset would have them: safe relative paths, some non-ASCII.
_component = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")),
    min_size=1,
    max_size=12,
)
_path = (
    st.lists(_component, min_size=1, max_size=3)
    .map("/".join)
    .filter(lambda p: path_problem(p) is None)
)
# The files of one tree: no two collide once case-folded and normalized, none is also a
# folder of another (the same rule every reader applies: paths.tree_problem).
_files = st.dictionaries(_path, st.binary(max_size=300), max_size=12).filter(
    lambda d: tree_problem(d) is None
)


def reader(data: bytes) -> Callable[[int, int], bytes]:
    return lambda start, end: data[start:end]


def parse_stream(data: bytes, cuts: list[int], offset: int = 0) -> dict[str, bytes]:
    parser = LocalEntryParser(offset)
    found: dict[str, bytes] = {}
    pieces: list[bytes] = []
    bounds = sorted({0, len(data), *(c for c in cuts if 0 < c < len(data))})
    for start, end in itertools.pairwise(bounds):
        for header, piece, last in parser.feed(data[start:end]):
            pieces.append(bytes(piece))
            if last:
                found[header.name] = b"".join(pieces)
                pieces = []
    parser.close()
    return found


@settings(max_examples=150, deadline=None)
@given(files=_files, cuts=st.lists(st.integers(0, 5000), max_size=20))
def test_round_trip_through_every_reader(files: dict[str, bytes], cuts: list[int]) -> None:
    package, entries = build_package(files.items())
    # Python's zipfile agrees on names, contents and that every entry is STORED.
    with zipfile.ZipFile(io.BytesIO(package)) as archive:
        assert archive.testzip() is None
        assert {i.filename: archive.read(i) for i in archive.infolist()} == files
        assert all(i.compress_type == zipfile.ZIP_STORED for i in archive.infolist())
        assert [i.filename for i in archive.infolist()] == sorted(files)
    # The forward-pass reader, fed in arbitrary chunks.
    assert parse_stream(package, cuts) == files
    # The central directory reader and reading each entry from its offset.
    central = read_central_directory(reader(package), len(package))
    assert [e.name for e in central] == sorted(files)
    for entry, written in zip(central, entries, strict=True):
        header, data = read_entry(reader(package), entry.header_offset)
        assert data == files[entry.name]
        assert header.data_offset == written.data_offset
        assert package[written.data_offset : written.data_offset + written.size] == data


@settings(max_examples=50, deadline=None)
@given(files=_files)
def test_packages_are_deterministic(files: dict[str, bytes]) -> None:
    first, _ = build_package(files.items())
    second, _ = build_package(reversed(list(files.items())))
    assert first == second


def test_parser_can_start_at_any_entry() -> None:
    files = {f"d/{i:03d}": bytes([i]) * i for i in range(50)}
    package, entries = build_package(files.items())
    for entry in entries[10:15]:
        end = entries[-1].data_offset + entries[-1].size
        got = parse_stream(package[entry.header_offset : end], [7, 100], entry.header_offset)
        assert list(got) == [e.name for e in entries if e.header_offset >= entry.header_offset]


def test_entries_carry_real_sizes_and_crc_in_local_headers() -> None:
    package, entries = build_package([("a.txt", b"hello"), ("b/c.bin", b"\x00" * 70000)])
    for entry in entries:
        header = zf.LOCAL.unpack_from(package, entry.header_offset)
        _sig, _v, flags, method, _t, _d, crc, csize, usize, _n, _x = header
        assert flags & zf.FLAG_DATA_DESCRIPTOR == 0
        assert method == 0
        assert (crc, csize, usize) == (entry.crc32, entry.size, entry.size)


def test_zip64_sizes_round_trip_through_the_headers() -> None:
    """A 5 GiB entry, without writing 5 GiB: headers and directory carry ZIP64 fields."""
    big = 5 << 30
    writer = PackageWriter()
    small_header = writer.add("a", 3, zlib.crc32(b"abc"))
    big_header = writer.add("b", big, 0x12345678)
    tail = writer.finish()
    layout = {0: small_header + b"abc", len(small_header) + 3: big_header}
    data_end = len(small_header) + 3 + len(big_header) + big
    layout[data_end] = tail
    size = data_end + len(tail)

    def read_range(start: int, end: int) -> bytes:
        out = bytearray()
        for base, chunk in layout.items():
            lo, hi = max(start, base), min(end, base + len(chunk))
            if lo < hi:
                out += chunk[lo - base : hi - base]
        return bytes(out) if out else b"\x00" * (end - start)

    parsed = parse_local_header(big_header, len(small_header) + 3, obj="p")
    assert parsed is not None and parsed[0].size == big
    entries = read_central_directory(read_range, size)
    assert [(e.name, e.size) for e in entries] == [("a", 3), ("b", big)]


@pytest.mark.skipif(shutil.which("unzip") is None, reason="unzip is installed by make test")
def test_unzip_accepts_a_package_of_more_than_65535_entries(tmp_path: Path) -> None:
    files = [(f"d{i // 1000:03d}/f{i:06d}", str(i).encode()) for i in range(70_000)]
    package, _ = build_package(files)
    path = tmp_path / "big.vhpkgzip"
    path.write_bytes(package)
    result = subprocess.run(
        ["unzip", "-tq", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        assert len(infos) == 70_000
        assert archive.read("d069/f069999") == b"69999"
    assert len(read_central_directory(reader(package), len(package))) == 70_000


@pytest.mark.skipif(shutil.which("unzip") is None, reason="unzip is installed by make test")
def test_unzip_extracts_utf8_names(tmp_path: Path) -> None:
    package, _ = build_package([("kuvat/kissa-ä.jpg", b"miau"), ("z/日本.txt", b"x")])
    (tmp_path / "p.vhpkgzip").write_bytes(package)
    out = tmp_path / "out"
    subprocess.run(["unzip", "-q", str(tmp_path / "p.vhpkgzip"), "-d", str(out)], check=True)
    assert (out / "kuvat" / "kissa-ä.jpg").read_bytes() == b"miau"


# --- hostile packages -------------------------------------------------------------


def _raw_entry(name: bytes, data: bytes, *, flags: int = zf.FLAG_UTF8, method: int = 0) -> bytes:
    header = zf.LOCAL.pack(
        zf.LOCAL_SIG, 20, flags, method, 0, 33, zlib.crc32(data), len(data), len(data), len(name), 0
    )
    return header + name + data


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        (b"../x", "contains '..'"),
        (b"a/../../x", "contains '..'"),
        (b"a/./b", "contains '.' as a component"),
        (b"/etc/x", "absolute path"),
        (b"//h/x", "absolute path"),
        (b"C:\\x", "contains a backslash"),
        (b"C:/x", "contains a drive letter"),
        (b"D:x", "contains a drive letter"),
        (b"\\\\h\\s\\x", "contains a backslash"),
        (b"\\x", "contains a backslash"),
        (b"a/C:\\x", "contains a backslash"),
        (b"a\\b", "contains a backslash"),
        (b"a\x00b", "contains a control character"),
        (b"", "empty or not a string"),
        (b"a//b", "empty path component"),
        (b"a/", "empty path component"),
        (b"CON", "reserved device name"),
        (b"dir/nul", "reserved device name"),
        (b"trailing.", "ends with '.' or a space"),
        (b"trailing ", "ends with '.' or a space"),
        (b"\xff\xfe", "is not valid UTF-8"),
    ],
)
def test_unsafe_names_are_refused(name: bytes, reason: str) -> None:
    entry = _raw_entry(name, b"data")
    with pytest.raises(UnsafePackage, match=re.escape(reason)):
        list(LocalEntryParser(0).feed(entry))


def test_non_ascii_name_without_utf8_flag_is_refused() -> None:
    entry = _raw_entry("ä".encode(), b"data", flags=0)
    with pytest.raises(UnsafePackage, match="UTF-8 flag"):
        list(LocalEntryParser(0).feed(entry))


@pytest.mark.parametrize(
    ("flags", "method", "message"),
    [
        (zf.FLAG_UTF8 | zf.FLAG_ENCRYPTED, 0, "encrypted"),
        (zf.FLAG_UTF8 | zf.FLAG_DATA_DESCRIPTOR, 0, "data descriptor"),
        (zf.FLAG_UTF8, 8, "compressed"),
    ],
)
def test_only_plain_stored_entries_are_accepted(flags: int, method: int, message: str) -> None:
    entry = _raw_entry(b"a", b"data", flags=flags, method=method)
    with pytest.raises(UnsafePackage, match=message):
        list(LocalEntryParser(0).feed(entry))


def test_truncated_stream_is_refused() -> None:
    package, entries = build_package([("a", b"x" * 100), ("b", b"y" * 100)])
    parser = LocalEntryParser(0)
    list(parser.feed(package[: entries[1].data_offset + 50]))
    with pytest.raises(UnsafePackage, match="truncated inside entry 'b'"):
        parser.close()


def test_garbage_instead_of_a_header_is_refused() -> None:
    with pytest.raises(UnsafePackage, match="no local file header"):
        list(LocalEntryParser(0).feed(b"\x00" * 64))


def _with_mode(package: bytes, name: str, mode: int) -> bytes:
    at = package.index(struct.pack("<I", zf.CENTRAL_SIG))
    while True:
        nlen = struct.unpack_from("<H", package, at + 28)[0]
        if package[at + 46 : at + 46 + nlen] == name.encode():
            patched = bytearray(package)
            struct.pack_into("<I", patched, at + 38, (mode << 16) & 0xFFFFFFFF)
            return bytes(patched)
        at += 46 + nlen + struct.unpack_from("<H", package, at + 30)[0]


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        (0o120777, r"'link' is not a regular file \(mode 0o120777\)"),
        (0o020644, r"'link' is not a regular file \(mode 0o20644\)"),
        (0o010644, r"'link' is not a regular file \(mode 0o10644\)"),
        (0o104755, "'link' has setuid, setgid or sticky bits"),
    ],
)
def test_links_devices_and_setuid_in_the_directory_are_refused(mode: int, reason: str) -> None:
    package, _ = build_package([("a", b"1"), ("link", b"target")])
    hostile = _with_mode(package, "link", mode)
    with pytest.raises(UnsafePackage, match=reason):
        read_central_directory(reader(hostile), len(hostile))


def test_trailing_and_prepended_bytes_are_refused() -> None:
    package, _ = build_package([("a", b"1")])
    for hostile, reason in (
        (package + b"junk", "no end of central directory record at the end"),
        (b"junk" + package, "central directory is not where the end record says"),
    ):
        with pytest.raises(UnsafePackage, match=reason):
            read_central_directory(reader(hostile), len(hostile))


def test_duplicate_and_case_colliding_entries_are_refused() -> None:
    for names, reason in (
        (["a", "a"], "entry 'a' is out of order or duplicated"),
        (["A", "a"], "entry 'a' collides with 'A'"),
        (["a", "a/b"], "entry 'a' is a file and also a directory of 'a/b'"),
    ):
        writer = PackageWriter()
        out = bytearray()
        for name in names:
            # Bypass the writer's ordering check to build what a hostile tool could.
            writer._last_name = None
            out += writer.add(name, 1, zlib.crc32(b"x")) + b"x"
        out += writer.finish()
        with pytest.raises(UnsafePackage, match=reason):
            read_central_directory(reader(bytes(out)), len(out))


def test_overlapping_entries_are_refused() -> None:
    package, entries = build_package([("a", b"1" * 10), ("b", b"2" * 10)])
    at = package.index(struct.pack("<I", zf.CENTRAL_SIG))
    second = at + 46 + 1
    patched = bytearray(package)
    struct.pack_into("<I", patched, second + 42, entries[0].header_offset)
    with pytest.raises(UnsafePackage, match="overlaps"):
        read_central_directory(reader(bytes(patched)), len(patched))


def expected_entries(entries: list[tuple[str, int, int]]) -> list[WrittenEntry]:
    """Where each entry lands, from the layout rule: a local header, the name, a ZIP64
    field for sizes past 4 GiB, then the data."""
    out = []
    position = 0
    for name, size, crc in entries:
        data = position + zf.local_header_size(name.encode(), size)
        out.append(WrittenEntry(name, size, crc, position, data))
        position = data + size
    return out


@settings(max_examples=60, deadline=None)
@given(
    entries=st.lists(
        st.tuples(
            st.text(min_size=1, max_size=8),
            st.one_of(st.integers(0, 70_000), st.integers(2**32 - 2, 2**33)),
            st.integers(0, 2**32 - 1),
        ),
        max_size=25,
        unique_by=lambda e: e[0],
    ).map(sorted),
    part_size=st.integers(1, 5_000),
)
def test_the_packed_directory_gives_back_the_entries_added(
    entries: list[tuple[str, int, int]], part_size: int
) -> None:
    """The writer keeps each entry only as its central record, packed: read back, the
    records are the entries added (ZIP64 sizes and offsets too), and the directory comes
    out in pieces of at most ``part_size`` bytes that join into the whole."""
    whole, pieces = PackageWriter(), PackageWriter()
    for name, size, crc in entries:
        whole.add(name, size, crc)
        if size < zf.MAX32:  # the compiled reader's way: headers laid out by the caller
            pieces.add_written(name, len(name.encode()), size, crc)
        else:
            pieces.add(name, size, crc)
    assert whole.entries == pieces.entries == expected_entries(entries)
    assert whole.count == len(entries)
    parts = list(pieces.finish_parts(part_size))
    assert all(len(p) <= part_size for p in parts[:-1])
    assert b"".join(parts) == whole.finish()
    assert pieces.position == whole.position


def test_a_directory_of_many_entries_is_kept_deflated_and_comes_back_whole() -> None:
    """Past a megabyte of records the directory is kept deflated; what comes out is the
    directory Python's zipfile reads, entry for entry."""
    names = [f"d{i // 1000:03d}/file-{i:06d}.bin" for i in range(40_000)]
    writer = PackageWriter()
    out = bytearray()
    for i, name in enumerate(names):
        data = i.to_bytes(4, "little")
        out += writer.add(name, len(data), zlib.crc32(data)) + data
    pieces = list(writer.finish_parts(1 << 20))
    assert len(pieces) >= 3 and all(len(p) <= 1 << 20 for p in pieces)
    out += b"".join(pieces)
    with zipfile.ZipFile(io.BytesIO(bytes(out))) as archive:
        assert archive.namelist() == names
        assert archive.read(names[12_345]) == (12_345).to_bytes(4, "little")


def _renamed_in_directory(package: bytes, old: bytes, new: bytes) -> bytes:
    """``package`` with one central directory name replaced by another of its length."""
    assert len(old) == len(new)
    at = package.index(struct.pack("<I", zf.CENTRAL_SIG))
    where = package.index(old, at)
    return package[:where] + new + package[where + len(old) :]


@pytest.mark.parametrize(
    ("new", "reason"),
    [
        (b"../x", r"refusing entry '\.\./x': contains '\.\.'"),
        (b"b/CON", "refusing entry 'b/CON': a component is a reserved device"),
        (b"b\\xy", "refusing entry 'b\\\\\\\\xy': contains a backslash"),
        (b"b/\xff\xfe", "is not valid UTF-8"),
    ],
)
def test_unsafe_names_in_the_directory_are_refused(new: bytes, reason: str) -> None:
    """Names are checked all at once when the directory is otherwise sound; a bad one
    is still named, with the message the entry-by-entry check gives."""
    old = b"b/" + b"x" * (len(new) - 2) if new.startswith(b"b") else b"a" * len(new)
    files = [(name.decode(), b"1") for name in sorted([old, b"c"])]
    package, _ = build_package(files)
    hostile = _renamed_in_directory(package, old, new)
    with pytest.raises(UnsafePackage, match=reason):
        read_central_directory(reader(hostile), len(hostile))


def test_the_first_problem_in_the_directory_is_the_one_named() -> None:
    """An unsafe name before another fault: the name is what the error is about, as when
    every entry was checked in order."""
    package, entries = build_package([("aaaa", b"1" * 10), ("b", b"2" * 10), ("c", b"3")])
    hostile = bytearray(_renamed_in_directory(package, b"aaaa", b"../a"))
    at = hostile.index(struct.pack("<I", zf.CENTRAL_SIG))
    third = at + (46 + 4) + (46 + 1)
    struct.pack_into("<I", hostile, third + 42, entries[1].header_offset)  # 'c' overlaps 'b'
    with pytest.raises(UnsafePackage, match=r"refusing entry '\.\./a'"):
        read_central_directory(reader(bytes(hostile)), len(hostile))
    fixed = bytearray(package)
    struct.pack_into("<I", fixed, third + 42, entries[1].header_offset)
    with pytest.raises(UnsafePackage, match="'c' overlaps"):
        read_central_directory(reader(bytes(fixed)), len(fixed))
