"""Reading the files being published: the compiled reader (``_speedups.read_files``) and
the Python one return the same bytes, SHA-256 and CRC-32, and the same errors."""

from __future__ import annotations

import asyncio
import hashlib
import zlib
from array import array
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dspkg.errors import SourceChanged
from dspkg.sources import FileReader, LocalFile, LocalFiles, ReadFile, sorted_files
from dspkg.speedups import compiled_reader
from dspkg.zipwriter import LOCAL_PREFIX, PackageWriter

COMPILED = compiled_reader()
needs_compiled = pytest.mark.skipif(
    COMPILED is None, reason="the compiled reader is not built (no C compiler at install)"
)


def read_everything(files: list[LocalFile], *, speedups: bool) -> list[ReadFile]:
    async def run() -> list[ReadFile]:
        with ThreadPoolExecutor(2) as executor:
            reader = FileReader(executor, batch_files=7, speedups=speedups)
            return [r async for r in reader.read_all(files)]

    return asyncio.run(run())


def write(tmp: Path, contents: list[bytes]) -> list[LocalFile]:
    files = []
    for i, data in enumerate(contents):
        path = tmp / f"f{i:03d}.bin"
        path.write_bytes(data)
        files.append(LocalFile(path.name, str(path), len(data)))
    return files


@needs_compiled
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(contents=st.lists(st.binary(max_size=70_000), min_size=1, max_size=20))
def test_compiled_and_python_readers_agree(
    tmp_path_factory: pytest.TempPathFactory, contents: list[bytes]
) -> None:
    files = write(tmp_path_factory.mktemp("src"), contents)
    compiled = read_everything(files, speedups=True)
    python = read_everything(files, speedups=False)
    assert compiled == python
    for read, data in zip(compiled, contents, strict=True):
        assert read.data == data
        assert read.sha256 == hashlib.sha256(data).hexdigest()
        assert read.crc32 == zlib.crc32(data)


@pytest.mark.parametrize("speedups", [True, False])
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("grow", r"changed size while being published \(5 -> 6 bytes\)"),
        ("shrink", r"changed size while being published \(5 -> 4 bytes\)"),
        ("remove", "disappeared while publishing"),
        ("unreadable", "cannot be read"),
    ],
)
def test_a_file_that_changed_since_it_was_listed_stops_the_read(
    tmp_path: Path, speedups: bool, change: str, message: str
) -> None:
    if speedups and COMPILED is None:
        pytest.skip("the compiled reader is not built (no C compiler at install)")
    files = write(tmp_path, [b"first", b"12345", b"third"])
    changed = Path(files[1].path)
    if change == "grow":
        changed.write_bytes(b"123456")
    elif change == "shrink":
        changed.write_bytes(b"1234")
    elif change == "remove":
        changed.unlink()
    else:
        changed.unlink()
        changed.mkdir()  # read() fails with EISDIR, as unreadable as it gets for root
    with pytest.raises(SourceChanged, match=message) as info:
        read_everything(files, speedups=speedups)
    assert str(changed) in str(info.value)


@needs_compiled
def test_a_file_replaced_by_one_of_the_same_size_reads_as_it_is_now(tmp_path: Path) -> None:
    files = write(tmp_path, [b"aaaa", b"bbbb"])
    Path(files[0].path).write_bytes(b"cccc")
    assert [r.data for r in read_everything(files, speedups=True)] == [b"cccc", b"bbbb"]


def python_package_bytes(files: list[LocalFile], contents: list[bytes]) -> bytes:
    writer = PackageWriter()
    out = bytearray()
    for f, data in zip(files, contents, strict=True):
        out += writer.add(f.rel, len(data), zlib.crc32(data))
        out += data
    return bytes(out)


@needs_compiled
@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(contents=st.lists(st.binary(max_size=50_000), min_size=1, max_size=20))
def test_packed_batches_are_the_package_bytes_python_writes(
    tmp_path_factory: pytest.TempPathFactory, contents: list[bytes]
) -> None:
    files = write(tmp_path_factory.mktemp("src"), contents)

    async def run() -> tuple[bytes, PackageWriter, list[ReadFile]]:
        writer = PackageWriter()
        out = bytearray()
        reads: list[ReadFile] = []
        with ThreadPoolExecutor(2) as executor:
            reader = FileReader(executor, batch_files=6)
            async for batch in reader.read_batches(files, package_prefix=LOCAL_PREFIX):
                assert batch.packed is not None
                for read in batch.reads:
                    name = read.file.rel
                    writer.add_written(name, len(name.encode()), read.file.size, read.crc32)
                    assert read.data is None
                reads += batch.reads
                out += batch.packed
        return bytes(out), writer, reads

    packed, writer, reads = asyncio.run(run())
    assert packed == python_package_bytes(files, contents)
    python_writer = PackageWriter()
    for f, data in zip(files, contents, strict=True):
        python_writer.add(f.rel, len(data), zlib.crc32(data))
    assert writer.entries == python_writer.entries
    assert writer.finish() == python_writer.finish()
    assert [r.sha256 for r in reads] == [hashlib.sha256(c).hexdigest() for c in contents]


@needs_compiled
def test_a_batch_with_a_changed_file_is_read_again_in_python_and_stops_there(
    tmp_path: Path,
) -> None:
    files = write(tmp_path, [b"first", b"12345", b"third"])
    Path(files[1].path).write_bytes(b"123456")

    async def run() -> None:
        with ThreadPoolExecutor(2) as executor:
            reader = FileReader(executor)
            async for _ in reader.read_batches(files, package_prefix=LOCAL_PREFIX):
                pass

    with pytest.raises(SourceChanged, match=r"changed size while being published \(5 -> 6"):
        asyncio.run(run())


@given(
    names=st.lists(
        st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=6),
        max_size=30,
        unique=True,
    ),
    moved=st.sets(st.integers(0, 29)),
    start=st.integers(-35, 35),
    stop=st.integers(-35, 35),
    picks=st.lists(st.booleans(), min_size=30, max_size=30),
)
def test_local_files_as_columns_are_the_list_of_files(
    names: list[str], moved: set[int], start: int, stop: int, picks: list[bool]
) -> None:
    """Columns (paths, sizes in an array, real paths only where not base + path) behave
    as the list of LocalFile they hold: items, slices (views), subsets and lookups."""
    rels = sorted(names)
    files = [
        LocalFile(rel, f"/elsewhere/{i}" if i in moved else f"/base/{rel}", 10 * i)
        for i, rel in enumerate(rels)
    ]
    shuffled = list(reversed(rels))
    columns = sorted_files(
        shuffled,
        array("q", (10 * rels.index(r) for r in shuffled)),
        base="/base/",
        moved={f.rel: f.path for f in files if not f.path.startswith("/base/")},
    )
    assert list(columns) == files == list(LocalFiles.of(files))
    assert [columns[i] for i in range(-len(files), len(files))] == files + files
    view = columns[start:stop]
    assert list(view) == files[start:stop] and len(view) == len(files[start:stop])
    assert list(view.rels()) == [f.rel for f in files[start:stop]]
    assert view.bytes == sum(f.size for f in files[start:stop])
    assert list(view[1:]) == files[start:stop][1:]
    chosen = [f for f, keep in zip(files, picks, strict=False) if keep]
    assert list(columns.subset([f.rel for f in chosen])) == chosen
    assert list(columns.where(picks[: len(files)])) == chosen
    for f in files:
        assert columns.find(f.rel) == f
    assert columns.find("x" * 7) is None  # longer than any name
    with pytest.raises(IndexError):
        columns[len(files)]
    if len(files) > 1:
        with pytest.raises(ValueError, match="sorted"):
            LocalFiles.of(reversed(files))
