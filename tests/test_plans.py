"""Plans as data: package splits, manifests from plans, and which byte ranges a pull fetches."""

from __future__ import annotations

import hashlib
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dspkg import zipformat as zf
from dspkg.errors import UnsafePackage
from dspkg.manifest import FileEntry, Manifest, ManifestRoot, PackageInfo, ShardInfo
from dspkg.metadata import VersionRequest
from dspkg.names import VersionUri
from dspkg.publish_plan import (
    VersionPlan,
    data_offsets,
    package_bytes,
    plan_tasks,
    plan_version,
    shape_digest,
    split_packages,
    split_runs,
)
from dspkg.publish_records import VersionRecords
from dspkg.pull_plan import Tuning, estimate, header_start, plan_fetch
from dspkg.shards import WRITER_LIMITS, ShardLimits, encode_manifest
from dspkg.sources import LocalFile, LocalFiles
from dspkg.zipwriter import PackageWriter
from tests.helpers import build_package

_sizes = st.lists(st.integers(0, 50_000), min_size=1, max_size=60)


def local_files(sizes: list[int]) -> list[LocalFile]:
    return [LocalFile(f"d/{i:04d}", f"/x/{i}", s) for i, s in enumerate(sizes)]


def greedy_split(files: list[LocalFile], package_size: int) -> list[list[LocalFile]]:
    """The rule of a split, file by file: a package takes files while the bound of its
    size stays within the limit (at least one file)."""
    groups: list[list[LocalFile]] = []
    used = zf.END_RECORDS_MAX
    for f in files:
        cost = zf.entry_cost_max(len(f.rel.encode()), f.size)
        if not groups or (groups[-1] and used + cost > package_size):
            groups.append([])
            used = zf.END_RECORDS_MAX
        groups[-1].append(f)
        used += cost
    return groups


@given(sizes=_sizes, limit=st.integers(1_000, 200_000))
def test_split_keeps_order_and_limit(sizes: list[int], limit: int) -> None:
    files = local_files(sizes)
    groups = split_packages(files, limit)
    assert [f for g in groups for f in g] == files
    for group in groups:
        assert package_bytes(group) <= limit or len(group) == 1
    assert [list(g) for g in groups] == greedy_split(files, limit)
    # The same cuts over columns, each group a view of them.
    columns = split_packages(LocalFiles.of(files), limit)
    assert [list(g) for g in columns] == greedy_split(files, limit)
    assert all(isinstance(g, LocalFiles) for g in columns)


@given(sizes=_sizes)
def test_shape_digest_is_the_digest_of_the_whole_layout(sizes: list[int]) -> None:
    files = local_files(sizes)
    text = "".join(f"{f.rel}\0{f.size}\n" for f in files)
    expected = hashlib.sha256(text.encode()).hexdigest()
    assert shape_digest(files) == shape_digest(LocalFiles.of(files)) == expected


@given(sizes=_sizes)
def test_split_estimate_is_the_real_package_size(sizes: list[int]) -> None:
    files = local_files(sizes)
    package, _ = build_package((f.rel, b"\0" * f.size) for f in files)
    assert package_bytes(files) == len(package)


@given(
    sizes=st.lists(
        st.one_of(st.integers(0, 5_000), st.integers(2**31, 2**33)), min_size=0, max_size=8
    ),
    names=st.lists(st.text(min_size=1, max_size=6), min_size=8, max_size=8, unique=True),
)
def test_package_size_counts_zip64_records_exactly(sizes: list[int], names: list[str]) -> None:
    """Sizes past 4 GiB (and entries that start past it): the records the writer lays out,
    without writing the data."""
    writer = PackageWriter()
    entries = []
    for name, size in zip(sorted(names), sizes, strict=False):
        writer.add(name, size, 0)
        entries.append((len(name.encode()), size))
    writer.finish()
    assert zf.package_size(entries) == writer.position
    assert zf.package_size(iter(entries)) == writer.position


@given(sizes=_sizes, limit=st.integers(1_000, 10_000_000))
def test_split_puts_everything_in_one_package_when_it_fits(sizes: list[int], limit: int) -> None:
    files = local_files(sizes)
    groups = split_packages(files, limit)
    bound = zf.END_RECORDS_MAX + sum(zf.entry_cost_max(len(f.rel), f.size) for f in files)
    assert (len(groups) == 1) == (bound <= limit) or len(files) == 1


@given(
    sizes=_sizes,
    max_files=st.integers(1, 10),
    max_bytes=st.integers(1, 100_000),
)
def test_runs_keep_order_and_bounds(sizes: list[int], max_files: int, max_bytes: int) -> None:
    files = local_files(sizes)
    runs = split_runs(files, max_files, max_bytes)
    assert [f for run in runs for f in run] == files
    for run in runs:
        assert 1 <= len(run) <= max_files
        assert sum(f.size for f in run) <= max_bytes or len(run) == 1


@given(
    sizes=st.lists(st.integers(0, 50_000), min_size=1, max_size=60),
    package_size=st.integers(1_000, 200_000),
    max_file=st.integers(1, 60_000),
    packaging=st.booleans(),
)
def test_distributed_tasks_make_the_single_publish_packages(
    sizes: list[int], package_size: int, max_file: int, packaging: bool
) -> None:
    """The tasks of a Dask publish build exactly the packages a single publish plans (same
    names, same files) and upload every file it keeps out of them, each file once."""
    files = local_files(sizes)
    uri = VersionUri("d", "v")
    request = VersionRequest(uri=uri, files=tuple(f.rel for f in files), packaging=packaging)
    single = plan_version(
        request,
        None,
        LocalFiles.of(files),
        packaging=packaging,
        package_size=package_size,
        attempt="a",
        max_file=max_file,
    )
    tasks = plan_tasks(
        uri,
        files,
        packaging=packaging,
        package_size=package_size,
        max_file=max_file,
        task_files=3,
        task_bytes=package_size,
    )
    packaged = [(t.package, t.files) for t in tasks if t.package is not None]
    assert packaged == [(p.name, tuple(p.files)) for p in single.packages]
    loose = [f for t in tasks if t.package is None for f in t.files]
    in_packages = {f.rel for p in single.packages for f in p.files}
    assert loose == [f for f in files if f.rel not in in_packages]
    if packaging:
        assert loose == list(single.too_big)
    for task in tasks:
        if task.package is None:
            assert 1 <= len(task.files) <= 3
            assert sum(f.size for f in task.files) <= package_size or len(task.files) == 1


def packaged_manifest(sizes: list[int]) -> tuple[Manifest, bytes]:
    contents = {f"d/{i:04d}": bytes([i % 251]) * s for i, s in enumerate(sizes)}
    package, entries = build_package(contents.items())
    info = PackageInfo(
        "p.vhpkgzip", "packages/d/v/p.vhpkgzip", len(package), "0" * 64, len(entries)
    )
    files = tuple(
        FileEntry(e.name, e.size, hashlib.sha256(contents[e.name]).hexdigest(), 0, e.data_offset)
        for e in entries
    )
    return Manifest("d", "v", files, (info,)), package


@settings(max_examples=80, deadline=None)
@given(
    sizes=_sizes,
    cached=st.sets(st.integers(0, 59)),
    gap=st.sampled_from([0.0, 0.001, 0.03]),
    max_range=st.integers(1_000, 1 << 20),
)
def test_ranges_cover_exactly_the_missing_files(
    sizes: list[int], cached: set[int], gap: float, max_range: int
) -> None:
    manifest, package = packaged_manifest(sizes)
    tuning = Tuning(rtt=gap, min_range=max_range, max_range=max_range)
    have = {manifest.files[i].sha256 for i in cached if i < len(manifest.files)}
    plan = plan_fetch(manifest, lambda f: f.sha256 in have, tuning)
    wanted = {f.sha256 for f in manifest.files} - have
    planned = [f for r in plan.ranges for f in r.files]
    assert {f.sha256 for f in planned} == wanted
    assert len(planned) == len({f.sha256 for f in planned})  # each content once
    for r in plan.ranges:
        # A range starts at a local header and ends at the end of its last file's data.
        assert package[r.start : r.start + 4] == b"PK\x03\x04"
        assert r.start == header_start(r.files[0])
        last = r.files[-1]
        assert last.offset is not None and r.end == last.offset + last.size
        assert r.size <= max(max_range, *(f.size + 100 for f in r.files))
    spans = sorted((r.start, r.end) for r in plan.ranges)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))


def test_coalescing_downloads_small_gaps_and_skips_big_ones() -> None:
    manifest, _ = packaged_manifest([100_000] * 20)
    missing = {manifest.files[i].sha256 for i in (2, 4, 15)}
    near = plan_fetch(manifest, lambda f: f.sha256 not in missing, Tuning(rtt=0.05))
    assert len(near.ranges) == 1  # gaps of 100 KB at 1 Gbit/s are cheaper than a request
    far = plan_fetch(manifest, lambda f: f.sha256 not in missing, Tuning(rtt=0.0, bandwidth=1))
    assert len(far.ranges) == 3
    est = estimate(near, manifest)
    assert est["ranged"]["requests"] == 1 and est["per_file"]["requests"] == 3


def test_a_whole_package_is_cut_into_about_concurrency_ranges() -> None:
    manifest, _ = packaged_manifest([50_000] * 400)  # 20 MB
    plan = plan_fetch(manifest, lambda f: False, Tuning(range_requests=4, min_range=1 << 20))
    assert 4 <= len(plan.ranges) <= 5
    small = plan_fetch(manifest, lambda f: False, Tuning(range_requests=4, min_range=64 << 20))
    assert len(small.ranges) == 1  # never shorter than min_range


def test_unpackaged_files_are_fetched_as_blobs() -> None:
    files = (FileEntry("a", 1, "a" * 64), FileEntry("b", 1, "b" * 64), FileEntry("c", 1, "a" * 64))
    plan = plan_fetch(Manifest("d", "v", files), lambda f: False)
    assert [f.path for f in plan.blobs] == ["a", "b"]


def request(files: tuple[str, ...], **kw: object) -> VersionRequest:
    return VersionRequest(uri=VersionUri("d", "v2"), files=files, **kw)  # type: ignore[arg-type]


def record(
    plan: VersionPlan,
    hashes: dict[str, tuple[int, str]],
    infos: list[PackageInfo],
    *,
    blobs: bool,
    limits: ShardLimits = WRITER_LIMITS,
) -> tuple[ManifestRoot, list[tuple[ShardInfo, bytes]]]:
    """What a publish records of ``plan``: files in no package first (when it builds
    packages), then each package's files as they are packaged, at their offsets."""
    records = VersionRecords(plan, blobs=blobs, limits=limits)
    shards: list[tuple[ShardInfo, bytes]] = []

    def entry(f: LocalFile, *where: int) -> FileEntry:
        return FileEntry(f.rel, hashes[f.rel][0], hashes[f.rel][1], *where)

    for f in plan.loose:
        if plan.packages:
            records.add_early(entry(f))
        else:
            shards += records.add(entry(f))
    for package, info in zip(plan.packages, infos, strict=True):
        number = records.package(info.key)
        offsets = data_offsets((f.rel, f.size) for f in package.files)
        for f, offset in zip(package.files, offsets, strict=True):
            shards += records.add(entry(f, number, offset))
        records.package_done(number, info)
    shards += records.finish()
    return records.root(created_at="t"), shards


def test_child_plan_inherits_excludes_and_overrides() -> None:
    parent, _ = packaged_manifest([10, 20, 30])
    local = LocalFiles.of([LocalFile("d/0001", "/x", 5), LocalFile("new", "/y", 7)])
    plan = plan_version(
        request(("d/0001", "new"), exclude=("d/0000",), parent=parent.uri),
        parent,
        local,
        packaging=True,
        package_size=1 << 30,
        attempt="a1",
    )
    assert [f.path for f in plan.inherited] == ["d/0002"]
    assert [p.key for p in plan.packages] == ["packages/d/v2/a1/d.v2.vhpkgzip"]
    assert [f.rel for f in plan.local] == ["d/0001", "new"]
    assert [p.name for p in plan.packages] == ["d.v2.vhpkgzip"]
    info = PackageInfo("d.v2.vhpkgzip", "packages/d/v2/a1/d.v2.vhpkgzip", 500, "1" * 64, 2)
    hashes = {"d/0001": (5, "c" * 64), "new": (7, "e" * 64)}
    root, shards = record(plan, hashes, [info], blobs=True)
    assert len(shards) == 1
    manifest = Manifest(
        "d",
        "v2",
        (
            FileEntry("d/0001", 5, "c" * 64, 1, 36),
            FileEntry("d/0002", 30, parent.files[2].sha256, 0, parent.files[2].offset),
            FileEntry("new", 7, "e" * 64, 1, 36 + 5 + 33),
        ),
        (parent.packages[0], info),
        parent="dataset://d/v",
        created_at="t",
        package_max_file=plan.package_max_file,
    )
    assert (root, shards) == encode_manifest(manifest)
    by_path = {f.path: f for f in manifest.files}
    assert by_path["d/0002"].package == 0 and by_path["new"].package == 1
    assert root.parent == "dataset://d/v"
    assert Manifest.from_json(manifest.to_json(), obj="m") == manifest


def test_start_fresh_inherits_nothing() -> None:
    parent, _ = packaged_manifest([10, 20])
    plan = plan_version(
        request((), start_fresh=True, parent=parent.uri),
        parent,
        LocalFiles.of([]),
        packaging=False,
        package_size=1,
        attempt="a1",
    )
    assert plan.inherited == () and plan.files == 0


def whole_manifest(
    plan: VersionPlan, hashes: dict[str, tuple[int, str]], infos: list[PackageInfo], blobs: bool
) -> Manifest:
    """The manifest of ``plan`` made at once, the way publish made it before it streamed."""
    parent = plan.parent
    packages: list[PackageInfo] = []

    def number(info: PackageInfo) -> int:
        if info not in packages:
            packages.append(info)
        return packages.index(info)

    files = [
        f._replace(package=number(parent.packages[f.package]))
        if parent is not None and f.package is not None
        else f
        for f in plan.inherited
    ]
    packaged = {}
    for package, info in zip(plan.packages, infos, strict=True):
        index = number(info)
        offsets = data_offsets((f.rel, f.size) for f in package.files)
        for f, offset in zip(package.files, offsets, strict=True):
            packaged[f.rel] = (index, offset)
    files += [FileEntry(f.rel, *hashes[f.rel], *packaged.get(f.rel, ())) for f in plan.local]
    return Manifest(
        "d",
        plan.request.uri.version,
        tuple(sorted(files)),
        tuple(packages),
        parent=str(parent.uri) if parent else None,
        created_at="t",
        blobs=blobs and (parent is None or parent.blobs or not plan.inherited),
        package_max_file=plan.package_max_file,
    )


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 3_000), min_size=0, max_size=60),
    parent_sizes=st.lists(st.integers(0, 3_000), min_size=0, max_size=30),
    mine=st.sets(st.integers(0, 90)),
    max_file=st.integers(1, 3_000),
    package_size=st.integers(2_000, 40_000),
    packaging=st.booleans(),
    blobs=st.booleans(),
    limits=st.tuples(st.integers(1, 6), st.integers(6, 12), st.sampled_from([0, 1, 3])),
)
def test_records_as_they_come_are_the_whole_manifest(
    sizes: list[int],
    parent_sizes: list[int],
    mine: set[int],
    max_file: int,
    package_size: int,
    packaging: bool,
    blobs: bool,
    limits: tuple[int, int, int],
) -> None:
    """A publish records files as it reads them, merged with its parent's, and stores
    shards as they fill: the same shards and root as the whole manifest encoded at once,
    for any mix of inherited, packaged and too-big files and any cuts."""
    parent, _ = packaged_manifest(parent_sizes) if parent_sizes else (None, b"")
    # This run's files: new ones between and after the parent's, some replacing its own.
    names = sorted({f"d/{i:04d}" for i in mine} | {f"d/{i:04d}x" for i in range(len(sizes))})
    files = [LocalFile(rel, "/x", size) for rel, size in zip(names, sizes, strict=False)]
    plan = plan_version(
        request(tuple(f.rel for f in files), parent=parent.uri if parent else None),
        parent,
        LocalFiles.of(files),
        packaging=packaging,
        package_size=package_size,
        attempt="a1",
        max_file=max_file,
    )
    hashes = {f.rel: (f.size, hashlib.sha256(f.rel.encode()).hexdigest()) for f in files}
    infos = [
        PackageInfo(p.name, p.key, package_bytes(p.files), f"{i:064x}", len(p.files))
        for i, p in enumerate(plan.packages)
    ]
    shard_limits = ShardLimits(*limits)
    root, shards = record(plan, hashes, infos, blobs=blobs, limits=shard_limits)
    manifest = whole_manifest(plan, hashes, infos, blobs)
    assert (root, shards) == encode_manifest(manifest, shard_limits)
    assert root.digest == manifest.digest


@given(
    sizes=st.lists(st.integers(0, 3_000), min_size=1, max_size=40),
    max_file=st.integers(1, 3_000),
    packages_only=st.booleans(),
)
def test_files_at_or_above_the_limit_stay_out_of_packages(
    sizes: list[int], max_file: int, packages_only: bool
) -> None:
    files = local_files(sizes)
    plan = plan_version(
        request(tuple(f.rel for f in files)),
        None,
        LocalFiles.of(files),
        packaging=True,
        package_size=1 << 30,
        attempt="a1",
        max_file=max_file,
    )
    packaged = [f for p in plan.packages for f in p.files]
    assert packaged == [f for f in files if f.size < max_file]
    assert plan.too_big == tuple(f for f in files if f.size >= max_file)
    assert plan.package_max_file == max_file
    infos = [
        PackageInfo(p.name, p.key, package_bytes(p.files), "1" * 64, len(p.files))
        for p in plan.packages
    ]
    hashes = {f.rel: (f.size, hashlib.sha256(f.rel.encode()).hexdigest()) for f in files}
    root, _ = record(plan, hashes, infos, blobs=not packages_only)
    manifest = whole_manifest(plan, hashes, infos, not packages_only)
    assert root == encode_manifest(manifest)[0]
    # A file in no package is a blob: a pull fetches it so, also without blobs.
    fetch = plan_fetch(manifest, lambda f: False)
    assert {f.path for f in fetch.blobs} == {f.rel for f in files if f.size >= max_file}
    assert Manifest.from_json(manifest.to_json(), obj="m") == manifest


@given(size=st.integers(0, 1 << 36), part=st.integers(1 << 20, 1 << 26))
def test_blob_parts_cover_the_blob_in_order(size: int, part: int) -> None:
    parts = Tuning(blob_part=part).blob_parts(size)
    assert parts[0][0] == 0 and parts[-1][1] == size
    assert all(a[1] == b[0] for a, b in itertools.pairwise(parts))
    assert len(parts) == max(1, size // part)
    # Parts are about blob_part each: at least it, under twice it (one part if smaller).
    assert all(part <= end - start < 2 * part for start, end in parts) or len(parts) == 1


def test_a_malformed_package_max_file_is_refused() -> None:
    manifest = Manifest("d", "v", (FileEntry("a", 1, "a" * 64),), package_max_file=10)
    assert Manifest.from_json(manifest.to_json(), obj="m").package_max_file == 10
    for bad in (b"0", b"-1", b'"10MB"', b"1.5"):
        data = manifest.to_json().replace(b'"package_max_file":10', b'"package_max_file":' + bad)
        with pytest.raises(UnsafePackage, match="malformed package_max_file"):
            Manifest.from_json(data, obj="m")
