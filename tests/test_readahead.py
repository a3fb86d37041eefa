"""Pure parts of the mount and the reader: read-ahead planning and the directory index."""

from __future__ import annotations

import hashlib
import itertools
import posixpath
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dspkg.dirindex import DIRECTORY, DirectoryIndex
from dspkg.errors import UnsafePackage
from dspkg.manifest import FileEntry, Manifest, PackageInfo
from dspkg.readahead import Lanes, ReadAhead

sizes = st.lists(st.integers(min_value=0, max_value=5000), min_size=1, max_size=300)


def manifest_of(file_sizes: list[int], packages: int = 1) -> Manifest:
    """Files split over ``packages`` packages in order (the last few as blobs only when
    ``packages`` is 0)."""
    files = []
    per = -(-len(file_sizes) // max(packages, 1))
    offset = 0
    for i, size in enumerate(file_sizes):
        package = None if packages == 0 else i // per
        if package is not None and i % per == 0:
            offset = 0
        sha = hashlib.sha256(str(i).encode()).hexdigest()
        files.append(FileEntry(f"f/{i:05d}", size, sha, package, offset + 40))
        offset += 40 + size
    return Manifest("d", "v", tuple(files))


def planner(m: Manifest, first: int = 10_000, most: int = 80_000) -> ReadAhead:
    return ReadAhead(Lanes.of(m), first=first, most=most)


@given(sizes, st.integers(min_value=1, max_value=3))
def test_a_sequential_pass_plans_every_later_file_once_in_order(
    file_sizes: list[int], packages: int
) -> None:
    m = manifest_of(file_sizes, packages)
    ra = planner(m)
    planned: list[int] = []
    for i in range(len(m.files)):
        ahead = ra.on_read(i)
        assert i not in ahead
        assert all(j > i for j in ahead)
        planned.extend(ahead)
    assert planned == sorted(set(planned))
    # Within each lane, all but the first two files (read before the stream is known)
    # come from read-ahead.
    for members in Lanes.of(m).files:
        assert set(members[2:]) <= set(planned)
        assert not set(members[:2]) & set(planned)


@given(sizes, st.integers(min_value=1, max_value=3), st.lists(st.integers(1, 40), min_size=1))
def test_reads_heard_of_in_batches_keep_read_ahead_ahead_of_the_reader(
    file_sizes: list[int], packages: int, batches: list[int]
) -> None:
    # The mount's compiled READ tells read-ahead of the files it served, in batches: each
    # file is planned at most once, in order, and after every batch something beyond its
    # last read is planned (unless that lane is done or its stream not yet seen).
    m = manifest_of(file_sizes, packages)
    lanes = Lanes.of(m)
    ra = planner(m)
    planned: list[int] = []
    start = 0
    for size in batches * len(m.files):
        if start >= len(m.files):
            break
        batch = list(range(start, min(start + size, len(m.files))))
        ahead = ra.on_reads(batch)
        assert batch[0] not in ahead
        planned.extend(ahead)
        start += size
        last = batch[-1]
        lane, pos = lanes.lane[last], lanes.position[last]
        if 1 <= pos < len(lanes.files[lane]) - 1:
            assert any(lanes.lane[j] == lane and lanes.position[j] > pos for j in planned)
    assert planned == sorted(set(planned))


@given(
    st.lists(st.integers(min_value=0, max_value=9), min_size=1, max_size=40, unique=True),
    st.integers(1, 10),
)
def test_scattered_reads_heard_of_in_batches_plan_nothing(blocks: list[int], size: int) -> None:
    m = manifest_of([100] * 1000)
    ra = planner(m)
    reads = [b * 100 for b in blocks]
    for start in range(0, len(reads), size):
        assert ra.on_reads(reads[start : start + size]) == []


@given(sizes)
def test_a_chunk_never_exceeds_the_largest_window_by_more_than_a_file(
    file_sizes: list[int],
) -> None:
    m = manifest_of(file_sizes)
    ra = planner(m)
    for i in range(len(m.files)):
        chunk = ra.on_read(i)
        if len(chunk) > 1:
            assert sum(m.files[j].size for j in chunk[:-1]) <= ra.most


@given(st.lists(st.integers(min_value=0, max_value=9), min_size=1, max_size=40, unique=True))
def test_scattered_reads_plan_nothing(blocks: list[int]) -> None:
    # Reads far apart (more than the trigger distance) never look sequential.
    m = manifest_of([100] * 1000)
    ra = planner(m)
    for b in blocks:
        assert ra.on_read(b * 100) == []


def test_interleaved_workers_share_one_stream() -> None:
    # Four DataLoader workers taking turns over consecutive files.
    m = manifest_of([1000] * 400)
    ra = planner(m, first=4000, most=40_000)
    planned: list[int] = []
    for start in range(0, 400, 4):
        for worker in (2, 0, 3, 1):
            planned.extend(ra.on_read(start + worker))
    assert len(planned) == len(set(planned))
    assert set(range(8, 400)) <= set(planned)


def test_blob_only_files_form_their_own_lane() -> None:
    m = manifest_of([10] * 50, packages=0)
    lanes = Lanes.of(m)
    assert lanes.files == (tuple(range(50)),)
    ra = ReadAhead(lanes, first=100, most=1000)
    assert ra.on_read(0) == []
    assert ra.on_read(1) == list(range(2, 12))


paths = st.lists(
    st.lists(st.sampled_from(["a", "b", "c.txt", "d.bin"]), min_size=1, max_size=4).map("/".join),
    min_size=1,
    max_size=30,
    unique=True,
)


@given(paths)
def test_the_directory_index_lists_exactly_the_files(raw: list[str]) -> None:
    # Drop paths that are also directories of others (the manifest refuses those).
    chosen = sorted(p for p in raw if not any(q.startswith(p + "/") for q in raw))
    files = tuple(FileEntry(p, len(p), hashlib.sha256(p.encode()).hexdigest()) for p in chosen)
    index = DirectoryIndex.of(Manifest("d", "v", files))
    found = []
    todo = ["/"]
    while todo:
        directory = todo.pop()
        names = [name for name, _ in index.listing(directory)]
        assert names == sorted(names)
        for name, entry in index.listing(directory):
            path = posixpath.join(directory, name)
            if entry == DIRECTORY:
                assert index.is_dir(path) and index.file(path) is None
                todo.append(path)
            else:
                assert files[entry].path == path[1:] and index.file(path) == entry
                found.append(path[1:])
    assert sorted(found) == chosen


@given(paths, st.lists(st.integers(0, 30)), st.randoms())
def test_the_index_of_shards_added_in_any_order_lists_what_the_whole_lists(
    raw: list[str], cuts: list[int], rng: random.Random
) -> None:
    # A mount adds each shard's paths as it loads: the same answers as the whole manifest.
    chosen = sorted(p for p in raw if not any(q.startswith(p + "/") for q in raw))
    files = tuple(FileEntry(p, len(p), hashlib.sha256(p.encode()).hexdigest()) for p in chosen)
    whole = DirectoryIndex.of(Manifest("d", "v", files))
    bounds = sorted({0, len(chosen), *(c % (len(chosen) + 1) for c in cuts)})
    segments = [(a, chosen[a:b]) for a, b in itertools.pairwise(bounds)]
    rng.shuffle(segments)
    pieces = DirectoryIndex()
    for base, part in segments:
        pieces.add(base, part)
    directories = ["/", *sorted({"/" + d for p in chosen for d in dirs_of(p)})]
    for d in directories:
        assert pieces.is_dir(d)
        assert pieces.listing(d) == whole.listing(d)
        assert pieces.subdirectories(d) == whole.subdirectories(d)
    for i, p in enumerate(chosen):
        assert pieces.file("/" + p) == i
        assert not pieces.is_dir("/" + p)
    assert pieces.file("/" + "".join(chosen) + "x") is None


@given(st.sampled_from(["a", "a.b/c", "a/b", "a/b/c", "b"]), st.integers(0, 3))
def test_a_name_that_is_a_file_and_a_folder_is_refused_however_it_is_cut(
    extra: str, cut: int
) -> None:
    names = sorted({"a", "a/x", extra})
    index = DirectoryIndex(obj="manifest of d/v")
    index.add(0, names[:cut])
    index.add(cut, names[cut:])
    with pytest.raises(UnsafePackage, match="path 'a' is both a file and a directory"):
        index.listing("/")


def dirs_of(path: str) -> list[str]:
    parts = path.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def plain_lanes(m: Manifest) -> Lanes:
    """Lanes.of the plain way, a step per file: what its runs-at-a-time version must equal."""
    by_lane: dict[int, list[int]] = {}
    blob_lane = len(m.packages)
    for i, f in enumerate(m.files):
        by_lane.setdefault(blob_lane if f.package is None else f.package, []).append(i)
    lane, position = [0] * len(m.files), [0] * len(m.files)
    files, ends = [], []
    for number, key in enumerate(sorted(by_lane)):
        members = by_lane[key]
        if key != blob_lane:
            members.sort(key=lambda i: m.files[i].offset or 0)
        sums = [0]
        for p, i in enumerate(members):
            lane[i], position[i] = number, p
            sums.append(sums[-1] + m.files[i].size)
        files.append(tuple(members))
        ends.append(tuple(sums))
    return Lanes(tuple(lane), tuple(position), tuple(files), tuple(ends))


@given(
    st.lists(
        st.tuples(
            st.integers(0, 100), st.one_of(st.none(), st.integers(0, 2)), st.integers(0, 999)
        ),
        max_size=60,
    )
)
def test_lanes_equal_the_plain_computation(raw: list[tuple[int, int | None, int]]) -> None:
    # Packages interleaved with blobs, and offsets out of order (a manifest that was
    # not checked): the fast path must still give what a step per file gives.
    files = tuple(
        FileEntry(f"f{i:03d}", size, "0" * 64, package, None if package is None else offset)
        for i, (size, package, offset) in enumerate(raw)
    )
    info = PackageInfo("p", "k", 1, "0" * 64, 1)
    m = Manifest("d", "v", files, packages=(info, info, info))
    assert Lanes.of(m) == plain_lanes(m)
