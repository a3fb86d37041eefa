"""The mount's compiled READ (``_readtable.c``), called as libfuse calls it (through a
function pointer, from plain threads), against a real cache directory: it serves exactly
the bytes of an untouched cached object, and hands every other case to the Python read
it replaced, which is what decides fetches, re-hashes and refusals."""

from __future__ import annotations

import ctypes
import hashlib
import os
import select
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dspkg.cache import CTIME_SLACK_NS, Cache
from dspkg.fastread import FastRead, compiled
from dspkg.manifest import FileEntry, Manifest

MODULE = compiled()
pytestmark = pytest.mark.skipif(
    MODULE is None, reason="the compiled READ is not built (no C compiler at install)"
)

# libfuse 3's read operation: int read(path, buf, size, offset, struct fuse_file_info *).
READ = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int64, ctypes.c_void_p
)
PASSED = -1234  # what the stand-in for the Python read answers


class Bed:
    """A cache with some objects, a table of files over it, the compiled READ, and a
    stand-in for the Python read that records what it was handed."""

    def __init__(self, root: Path, files: dict[str, bytes], cached: set[str]) -> None:
        self.cache = Cache(root)
        self.cache.open()
        self.files = files
        entries = []
        for path, data in sorted(files.items()):
            sha = hashlib.sha256(data).hexdigest()
            entries.append(FileEntry(path, len(data), sha, 0, 0))
            if path in cached:
                self.cache.write_object(sha, [data])
                os.utime(self.cache.object_path(sha))  # as the extractor leaves it
        self.manifest = Manifest("d", "v", tuple(entries))
        fast = FastRead.build(self.manifest, self.cache)
        assert fast is not None
        self.fast = fast
        self.passed: list[tuple[str, int, int]] = []

        def python_read(path: bytes, buf: int, size: int, offset: int, fi: int) -> int:
            self.passed.append((path.decode(), size, offset))
            return PASSED

        self._python = READ(python_read)  # kept alive while the compiled READ may call it
        assert MODULE is not None
        MODULE.set_fallback(ctypes.cast(self._python, ctypes.c_void_p).value)
        self.read_op = READ(MODULE.read_address())

    def read(self, path: str, size: int, offset: int = 0) -> bytes | int:
        """One READ as libfuse makes it: the bytes it put in the buffer, or its answer
        when that is not a count of bytes (the Python read's, or an error)."""
        buf = ctypes.create_string_buffer(max(size, 1))
        answer = self.read_op(path.encode(), ctypes.addressof(buf), size, offset, None)
        return buf.raw[:answer] if answer >= 0 else answer

    def object(self, path: str) -> Path:
        return Path(self.cache.object_path(hashlib.sha256(self.files[path]).hexdigest()))

    def close(self) -> None:
        self.fast.table.deactivate()
        self.cache.close()


@pytest.fixture
def bed(tmp_path: Path) -> Iterator[Bed]:
    files = {
        "a/one.bin": os.urandom(10_000),
        "a/two.bin": os.urandom(300_000),
        "b/empty.bin": b"",
        "b/missing.bin": b"not cached",
    }
    made = Bed(tmp_path / "cache", files, cached=set(files) - {"b/missing.bin"})
    made.fast.table.activate()
    yield made
    made.close()


def test_an_untouched_cached_object_is_served_at_any_offset_in_any_pieces(bed: Bed) -> None:
    data = bed.files["a/two.bin"]
    assert bed.read("/a/two.bin", 131_072) == data[:131_072]
    assert bed.read("/a/two.bin", 131_072, 131_072) == data[131_072:262_144]
    assert bed.read("/a/two.bin", 131_072, 262_144) == data[262_144:]  # short: the end
    assert bed.read("/a/two.bin", 4096, 299_999) == data[-1:]
    assert bed.read("/a/two.bin", 4096, 400_000) == b""
    assert bed.read("/a/one.bin", 65_536) == bed.files["a/one.bin"]
    assert bed.read("/b/empty.bin", 4096) == b""
    assert bed.passed == []
    assert bed.fast.figures["served"] == 7


def test_what_it_cannot_serve_goes_to_the_python_read(bed: Bed) -> None:
    assert bed.read("/b/missing.bin", 4096) == PASSED  # not in the cache (yet)
    assert bed.read("/not/listed.bin", 4096) == PASSED
    assert bed.read("/a", 4096) == PASSED  # a directory is no file of the table
    assert bed.passed == [
        ("/b/missing.bin", 4096, 0),
        ("/not/listed.bin", 4096, 0),
        ("/a", 4096, 0),
    ]
    assert bed.fast.figures["passed"] == 3


def test_an_object_touched_behind_dspkg_goes_to_the_python_read(bed: Bed) -> None:
    obj = bed.object("a/one.bin")
    before = obj.stat()
    # Same size, other bytes, the old mtime: only its ctime tells (see dspkg.cache).
    obj.chmod(0o644)
    obj.write_bytes(b"X" * before.st_size)
    obj.chmod(0o444)
    os.utime(obj, ns=(before.st_atime_ns, before.st_mtime_ns - 2 * CTIME_SLACK_NS))
    assert bed.read("/a/one.bin", 65_536) == PASSED
    # Writable, or another size: not what dspkg left either.
    two = bed.object("a/two.bin")
    two.chmod(0o644)
    assert bed.read("/a/two.bin", 4096) == PASSED
    two.chmod(0o444)
    os.utime(two)
    assert bed.read("/a/two.bin", 4096) == bed.files["a/two.bin"][:4096]
    assert [p for p, _, _ in bed.passed] == ["/a/one.bin", "/a/two.bin"]


def test_a_file_read_in_pieces_is_checked_again_before_every_piece(bed: Bed) -> None:
    # The descriptor is kept between the READs of one file; each READ checks it again.
    data = bed.files["a/two.bin"]
    assert bed.read("/a/two.bin", 4096) == data[:4096]
    obj = bed.object("a/two.bin")
    before = obj.stat()
    obj.chmod(0o644)
    with obj.open("r+b") as f:
        f.write(b"Y" * 4096)
    obj.chmod(0o444)
    os.utime(obj, ns=(before.st_atime_ns, before.st_mtime_ns - 2 * CTIME_SLACK_NS))
    assert bed.read("/a/two.bin", 4096, 4096) == PASSED


def test_a_refused_file_is_never_served_even_when_its_object_turns_up(bed: Bed) -> None:
    index = [f.path for f in bed.manifest.files].index("b/missing.bin")
    bed.fast.refuse(index)
    data = bed.files["b/missing.bin"]
    sha = hashlib.sha256(data).hexdigest()
    bed.cache.write_object(sha, [data])
    os.utime(bed.cache.object_path(sha))
    assert bed.read("/b/missing.bin", 4096) == PASSED


def test_without_an_active_table_every_read_goes_to_python(bed: Bed) -> None:
    bed.fast.table.deactivate()
    assert bed.read("/a/one.bin", 4096) == PASSED
    bed.fast.table.activate()
    assert bed.read("/a/one.bin", 4096) == bed.files["a/one.bin"][:4096]


def test_files_read_from_their_first_byte_are_noted_in_order_with_one_signal(bed: Bed) -> None:
    index = {f.path: i for i, f in enumerate(bed.manifest.files)}
    fd = bed.fast.table.notes_fd
    assert select.select([fd], [], [], 0)[0] == []
    bed.read("/a/two.bin", 4096)
    bed.read("/a/two.bin", 4096, 4096)  # not its first byte: not noted
    bed.read("/a/one.bin", 4096)
    bed.read("/b/missing.bin", 4096)  # passed on: the Python read notes its own
    assert select.select([fd], [], [], 0)[0] == [fd]
    assert os.read(fd, 8) == (1).to_bytes(8, "little")  # one signal for the batch
    assert bed.fast.table.drain() == [index["a/two.bin"], index["a/one.bin"]]
    assert bed.fast.table.drain() == []
    bed.read("/a/one.bin", 4096)
    assert select.select([fd], [], [], 0)[0] == [fd]  # the next batch signals again
    assert bed.fast.table.drain() == [index["a/one.bin"]]


def test_threads_reading_at_once_each_get_their_own_bytes(bed: Bed) -> None:
    wrong: list[str] = []

    def reader(path: str, piece: int) -> None:
        data = bed.files[path]
        for _ in range(200):
            for offset in range(0, len(data) + 1, piece):
                if bed.read("/" + path, piece, offset) != data[offset : offset + piece]:
                    wrong.append(path)

    threads = [
        threading.Thread(target=reader, args=(path, piece))
        for path, piece in (("a/one.bin", 3000), ("a/two.bin", 65_536), ("a/one.bin", 777))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []
    assert bed.passed == []


paths = st.lists(
    st.from_regex(r"[a-z]{1,4}(/[a-z0-9é]{1,5}){0,2}\.bin", fullmatch=True),
    min_size=1,
    max_size=20,
    unique=True,
)


@settings(max_examples=30)
@given(paths, st.data())
def test_every_file_reads_as_its_bytes_or_goes_to_python(
    tmp_path_factory: pytest.TempPathFactory, names: list[str], data: st.DataObject
) -> None:
    files = {name: os.urandom(data.draw(st.integers(0, 20_000))) for name in names}
    cached = set(data.draw(st.lists(st.sampled_from(names), unique=True)))
    bed = Bed(tmp_path_factory.mktemp("cache"), files, cached)
    bed.fast.table.activate()
    try:
        for name in names:
            size = data.draw(st.integers(1, 25_000))
            offset = data.draw(st.integers(0, 25_000))
            got = bed.read("/" + name, size, offset)
            if name in cached:
                assert got == files[name][offset : offset + size]
            else:
                assert got == PASSED
    finally:
        bed.close()
    assert [p for p, _, _ in bed.passed] == ["/" + n for n in names if n not in cached]


def test_a_table_refuses_paths_listed_twice_and_bad_hashes(tmp_path: Path) -> None:
    assert MODULE is not None
    objects = str(tmp_path)
    with pytest.raises(ValueError, match="listed twice"):
        MODULE.Table(objects, [FileEntry("a", 1, "0" * 64)] * 2, CTIME_SLACK_NS)
    with pytest.raises(ValueError, match="64 hex digits"):
        MODULE.Table(objects, [FileEntry("a", 1, "0" * 63)], CTIME_SLACK_NS)
    with pytest.raises(ValueError, match="lowercase hex"):
        MODULE.Table(objects, [FileEntry("a", 1, "G" * 64)], CTIME_SLACK_NS)
    with pytest.raises(TypeError, match="a file is a tuple"):
        MODULE.Table(objects, ["a"], CTIME_SLACK_NS)


def test_big_tables_find_every_path(tmp_path: Path) -> None:
    assert MODULE is not None
    names = [f"d{i // 1000:03d}/f{i:06d}.bin" for i in range(50_000)]
    files = [FileEntry(name, 1, "ab" * 32) for name in names]
    table = MODULE.Table(str(tmp_path), files, CTIME_SLACK_NS)
    assert [table.lookup("/" + n) for n in names] == list(range(len(names)))
    assert table.lookup("/d000/f000000.bi") == -1
    assert table.lookup("/d000/f000000.bin/") == -1
    assert table.lookup("d000/f000000.bin") == -1  # FUSE's paths start with "/"
