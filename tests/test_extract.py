"""The range extractors: the compiled one (``_speedups.c``) and the Python one do the same
thing, byte for byte and error for error, however the stream is cut into chunks."""

from __future__ import annotations

import hashlib
import itertools
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dspkg.cache import Cache
from dspkg.errors import Integrity, UnsafePackage
from dspkg.fetcher import CacheSink, _CompiledExtractor, _RangeExtractor
from dspkg.manifest import FileEntry
from dspkg.materialize import LinkMode, TreeBuilder, plan_tree
from dspkg.paths import path_problem
from dspkg.pull_plan import RangeFetch
from dspkg.speedups import extractor_type
from tests.helpers import build_package

COMPILED = extractor_type()
needs_compiled = pytest.mark.skipif(
    COMPILED is None, reason="the compiled extractor is not built (no C compiler at install)"
)

# Names a publish accepts (a Windows device name such as "nul" is refused before any
# package is made; the Python extractor also refuses it in entries it skips, the compiled
# one never reads the names it skips: both write nothing of them).
names = st.lists(
    st.from_regex(r"[a-z]{1,3}(/[a-z0-9]{1,4}){0,2}\.bin", fullmatch=True).filter(
        lambda p: path_problem(p) is None
    ),
    min_size=1,
    max_size=12,
    unique=True,
)


def entries_of(files: dict[str, bytes]) -> tuple[bytes, list[FileEntry]]:
    package, written = build_package(files.items())
    entries = [
        FileEntry(w.name, w.size, hashlib.sha256(files[w.name]).hexdigest(), 0, w.data_offset)
        for w in written
    ]
    return package, entries


def chunks(data: bytes, cuts: list[int]) -> Iterator[memoryview]:
    view = memoryview(data)
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for a, b in itertools.pairwise(points):
        yield view[a:b]


Extract = Callable[[RangeFetch, str, CacheSink], "_RangeExtractor | _CompiledExtractor"]


def python_extractor(r: RangeFetch, obj: str, sink: CacheSink) -> _RangeExtractor:
    return _RangeExtractor(r, obj, sink)


def compiled_extractor(r: RangeFetch, obj: str, sink: CacheSink) -> _CompiledExtractor:
    return _CompiledExtractor(r, obj, sink, COMPILED)


def run(extract: Extract, package: bytes, wanted: list[FileEntry], cuts: list[int]) -> object:
    """What extracting ``wanted`` from ``package`` gives: the cached objects, or the error."""
    root = Path(tempfile.mkdtemp(prefix="dspkg-extract-"))
    try:
        with Cache(root / "cache") as cache:
            r = RangeFetch(0, "k", 0, len(package), tuple(wanted))
            extractor = extract(r, "pkg", CacheSink(cache))
            try:
                count = 0
                for chunk in chunks(package, cuts):
                    count += extractor.feed(chunk)[0]
                extractor.close()
            except (Integrity, UnsafePackage) as exc:
                extractor.abort()
                return type(exc)
            objects = {
                p.parent.name + p.name: p.read_bytes()
                for p in (root / "cache" / "objects").rglob("*")
                if p.is_file()
            }
            leftovers = [p for p in (root / "cache" / "tmp").rglob("*") if p.is_file()]
            assert [p.name for p in leftovers] == [".lock"]
            return count, objects
    finally:
        shutil.rmtree(root, ignore_errors=True)


@needs_compiled
@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(
    paths=names,
    sizes=st.lists(st.integers(0, 3000), min_size=12, max_size=12),
    cuts=st.lists(st.integers(0, 40000), max_size=8),
    pick=st.lists(st.booleans(), min_size=12, max_size=12),
)
def test_both_extractors_write_the_same_objects(
    paths: list[str], sizes: list[int], cuts: list[int], pick: list[bool]
) -> None:
    files = {p: bytes([i % 251]) * sizes[i] for i, p in enumerate(paths)}
    package, entries = entries_of(files)
    # Objects are content addressed: keep one entry per content.
    seen: set[str] = set()
    wanted = []
    for i, e in enumerate(entries):
        if pick[i] and e.sha256 not in seen:
            seen.add(e.sha256)
            wanted.append(e)
    python = run(python_extractor, package, wanted, cuts)
    compiled = run(compiled_extractor, package, wanted, cuts)
    assert python == compiled
    assert isinstance(python, tuple) and python[0] == len(wanted)
    assert python[1] == {e.sha256: files[e.path] for e in wanted}


def tampered(change: str) -> tuple[bytes, list[FileEntry]]:
    files = {f"d/{i:03d}.bin": bytes([i]) * (100 + i) for i in range(20)}
    package, entries = entries_of(files)
    data = bytearray(package)
    target = entries[7]
    if change == "flip":
        data[target.offset or 0] ^= 0xFF
    elif change == "rename":
        start = (target.offset or 0) - len(target.path)
        data[start : start + 1] = b"x"
    elif change == "compressed":
        header = (target.offset or 0) - len(target.path) - 30
        data[header + 8] = 8
    elif change == "truncate":
        data = data[: (target.offset or 0) + 10]
    elif change == "signature":
        header = (target.offset or 0) - len(target.path) - 30
        data[header] = 0
    return bytes(data), entries


@needs_compiled
@pytest.mark.parametrize(
    ("change", "error"),
    [
        ("flip", Integrity),
        ("rename", UnsafePackage),
        ("compressed", UnsafePackage),
        ("truncate", UnsafePackage),
        ("signature", UnsafePackage),
    ],
)
@pytest.mark.parametrize("cuts", [[], [50], [1, 2, 3, 700, 1500]])
def test_both_extractors_refuse_the_same_way(
    change: str, error: type[Exception], cuts: list[int]
) -> None:
    package, entries = tampered(change)
    assert run(python_extractor, package, entries, cuts) is error
    assert run(compiled_extractor, package, entries, cuts) is error


@needs_compiled
def test_compiled_extractor_writes_where_files_end_up_and_links_the_cache(
    tmp_path: Path,
) -> None:
    files = {f"a/{i}.bin": bytes([i]) * 5000 for i in range(30)} | {"dup.bin": bytes([3]) * 5000}
    package, entries = entries_of(files)
    with Cache(tmp_path / "cache") as cache:
        (tmp_path / "dest").mkdir()
        builder = TreeBuilder(cache, tmp_path / "dest", LinkMode.HARDLINK)
        builder.begin(plan_tree(entries))
        assert builder.links_targets
        unique = {e.sha256: e for e in reversed(entries)}.values()
        r = RangeFetch(0, "k", 0, len(package), tuple(sorted(unique, key=lambda e: e.offset or 0)))
        extractor = _CompiledExtractor(r, "pkg", builder, COMPILED)
        for chunk in chunks(package, [4096 * i for i in range(1, 40)]):
            extractor.feed(chunk)
        extractor.close()
        builder.commit()
        for e in entries:
            placed = tmp_path / "dest" / e.path
            assert placed.read_bytes() == files[e.path]
            obj = Path(cache.object_path(e.sha256))
            assert placed.stat().st_ino == obj.stat().st_ino  # one inode: written once
            assert cache.lookup(e.sha256, e.size)


@needs_compiled
def test_compiled_extractor_fills_the_cache_alone_without_named_temporary_files(
    tmp_path: Path,
) -> None:
    """For the cache alone (a mount, a prefetch) each object is written unnamed in its own
    folder and linked to its name once verified: nothing is created in the temp folder
    the disk threads would otherwise share (here it is gone), and a crash leaves nothing."""
    files = {f"a/{i}.bin": bytes([i]) * (1000 + i) for i in range(40)}
    package, entries = entries_of(files)
    with Cache(tmp_path / "cache") as cache:
        own = Path(cache.temp_name()).parent
        shutil.rmtree(own)
        r = RangeFetch(0, "k", 0, len(package), tuple(entries))
        extractor = _CompiledExtractor(r, "pkg", CacheSink(cache), COMPILED)
        done = sum(extractor.feed(chunk)[0] for chunk in chunks(package, [3000, 20000]))
        extractor.close()
        assert done == len(entries)
        for e in entries:
            assert Path(cache.object_path(e.sha256)).read_bytes() == files[e.path]
            assert cache.lookup(e.sha256, e.size)  # read-only, ctime next to mtime
        assert not own.exists()
