"""Manifest v2: root and shards round-trip; tampered roots and shards are refused with one
line and nothing written outside DEST; readers load only the shards they need; v1 still
pulls."""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dspkg import api
from dspkg.cache import Cache
from dspkg.catalog import Catalog
from dspkg.concurrency import run_sync
from dspkg.errors import UnsafePackage
from dspkg.layout import manifest_key, shard_key
from dspkg.loader import load_files, load_manifest, load_root
from dspkg.manifest import FileEntry, Manifest, PackageInfo, ShardInfo
from dspkg.names import VersionUri
from dspkg.paths import tree_problem
from dspkg.shards import (
    ShardColumns,
    ShardLimits,
    decode_shard,
    encode_manifest,
    encode_root,
    encode_shard,
    join_shards,
    parse_stored,
    shard_bounds,
)
from dspkg.store import Store, open_store
from tests.helpers import assert_one_line_error, read_tree, run_cli, write_outputs

URI = "dataset://sharded/v1"
VERSION = VersionUri("sharded", "v1")
FILES = {f"d{i % 3}/f{i:03d}.bin": bytes([97 + i % 26]) * (50 + i) for i in range(30)}
TEN = ShardLimits(min_files=10, max_files=10, cut_mask=0)  # shards of exactly ten files


# --- the format, pure -----------------------------------------------------------------

_NAMES = st.text(alphabet="abcAB_-.é0", min_size=1, max_size=4).filter(
    lambda s: not s.endswith(".")
)


@st.composite
def manifests(draw: st.DrawFn) -> Manifest:
    paths = draw(
        st.lists(
            st.lists(_NAMES, min_size=1, max_size=3).map("/".join),
            min_size=0,
            max_size=40,
            unique=True,
        )
    )
    paths = sorted(paths)
    if tree_problem(paths) is not None:
        paths = []
    files = []
    offset = 0
    packaged = draw(st.booleans())
    for path in paths:
        size = draw(st.integers(0, 5000))
        sha = hashlib.sha256(path.encode()).hexdigest()
        if packaged:
            offset += 30 + len(path.encode())
            files.append(FileEntry(path, size, sha, 0, offset))
            offset += size
        else:
            files.append(FileEntry(path, size, sha))
    packages = (
        (PackageInfo("h.v.vhpkgzip", "packages/h/v/a/h.v.vhpkgzip", offset + 22, "0" * 64, 40),)
        if packaged
        else ()
    )
    return Manifest("h", "v", tuple(files), packages, created_at="t", blobs=True)


_RECORDS = st.lists(
    st.tuples(
        st.text(min_size=1, max_size=12),
        st.integers(0, 2**63 - 1),
        st.binary(min_size=32, max_size=32).map(bytes.hex),
        st.none() | st.integers(0, 2**40),
        st.none() | st.integers(0, 2**63 - 1),
    ).map(lambda r: FileEntry(*r)),
    min_size=1,
    max_size=30,
)


@given(_RECORDS)
def test_shard_columns_encode_what_the_records_encode(entries: list[FileEntry]) -> None:
    """A writer gathers a shard's records as columns: the bytes are those of the records
    encoded as one JSON document (names with quotes, escapes and any Unicode; numbers
    of any size; no package or offset)."""
    columns = ShardColumns()
    for entry in entries:
        columns.add(entry)
    assert columns.encode() == encode_shard(entries)
    doc = json.loads(gzip.decompress(columns.encode()))
    assert doc["path"] == [e.path for e in entries]
    assert doc["offset"] == [e.offset for e in entries]
    with pytest.raises(ValueError, match="lowercase hex"):
        columns.add(FileEntry("x", 1, "AB" * 32))


def test_a_big_shard_is_encoded_a_piece_at_a_time_into_the_same_bytes() -> None:
    """Past a few thousand records the columns are written in pieces: still one gzip
    member, byte for byte what the whole document gives."""
    entries = [
        FileEntry(
            f'd{i // 1000}/é{i:06d}"x',
            i * 7,
            hashlib.sha256(str(i).encode()).hexdigest(),
            None if i % 3 else i % 5,
            None if i % 3 else i * 1000,
        )
        for i in range(20_000)
    ]
    columns = ShardColumns()
    for entry in entries:
        columns.add(entry)
    assert columns.encode() == encode_shard(entries)


@given(manifests(), st.integers(1, 7))
def test_v2_round_trip(manifest: Manifest, per_shard: int) -> None:
    limits = ShardLimits(min_files=1, max_files=per_shard, cut_mask=0b11)
    root, shards = encode_manifest(manifest, limits)
    assert all(info.count <= per_shard for info, _ in shards)
    parsed = parse_stored(encode_root(root), obj="root")
    assert parsed == root and parsed.digest == manifest.digest
    records = [decode_shard(data, info, obj=info.key) for info, data in shards]
    files = join_shards(parsed, parsed.shards, records, obj="root")
    assert files == manifest.files
    assert parsed.package_files == manifest.package_files()
    # The same records give the same bytes: shards are named by their content.
    assert encode_manifest(manifest, limits)[1] == shards


def test_shard_cuts_follow_the_content() -> None:
    """A file added early moves one boundary, not every boundary after it."""
    paths = [f"img/{i:05d}.jpg" for i in range(4000)]
    limits = ShardLimits(min_files=50, max_files=400, cut_mask=0x7F)
    before = shard_bounds(paths, limits)
    after = shard_bounds(sorted([*paths, "img/00000a.jpg"]), limits)
    assert len(before) > 5
    cut_paths = {paths[b - 1] for b in before}
    moved = cut_paths ^ {sorted([*paths, "img/00000a.jpg"])[b - 1] for b in after}
    assert len(moved) <= 2


def packaged_manifest(count: int = 30) -> Manifest:
    files = []
    offset = 0
    for i in range(count):
        path = f"p/{i:03d}"
        offset += 30 + len(path)
        files.append(FileEntry(path, 10, hashlib.sha256(path.encode()).hexdigest(), 0, offset))
        offset += 10
    package = PackageInfo("s.v.vhpkgzip", "packages/s/v/a/s.v.vhpkgzip", offset + 22, "1" * 64, 99)
    return Manifest("s", "v", tuple(files), (package,), created_at="t")


def root_doc(manifest: Manifest) -> tuple[dict[str, Any], dict[str, bytes]]:
    root, shards = encode_manifest(manifest, TEN)
    return json.loads(encode_root(root)), {info.key: data for info, data in shards}


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda d: d["shards"].reverse(), "must be sorted and must not overlap"),
        (lambda d: d["shards"][1].update(first="p/005"), "must be sorted and must not overlap"),
        (lambda d: d["shards"][0].update(key="datasets/s/shards/x.json.gz"), "is not"),
        (lambda d: d["shards"][0].update(count=0), "must hold 1 to"),
        (lambda d: d["shards"].pop(), "do not add up"),
        (lambda d: d["packages"][0].update(files=100), "malformed number of files"),
        (lambda d: d["shards"][2].update(last="../x"), "bad path range"),
        (lambda d: d.update(digest="z"), "malformed digest"),
        (lambda d: d.update(schema_version=3), "schema_version 3 is not supported"),
    ],
)
def test_hostile_roots_are_refused(change: Callable[[dict[str, Any]], None], needle: str) -> None:
    doc, _ = root_doc(packaged_manifest())
    change(doc)
    with pytest.raises(UnsafePackage, match=needle):
        parse_stored(json.dumps(doc).encode(), obj="root")


def _with(info: ShardInfo, data: bytes, **changes: Any) -> ShardInfo:
    """``info`` describing ``data`` instead (hash, size, key), with ``changes``."""
    sha = hashlib.sha256(data).hexdigest()
    return replace(info, sha256=sha, size=len(data), key=shard_key("s", sha), **changes)


def test_shard_must_be_what_its_root_lists() -> None:
    _, shards = encode_manifest(packaged_manifest(), TEN)
    info, data = shards[1]
    with pytest.raises(UnsafePackage, match="is not the shard its root lists"):
        decode_shard(data[:-1] + bytes([data[-1] ^ 1]), info, obj="s")
    # A shard that inflates beyond what its records could take is not inflated.
    bomb = gzip.compress(b" " * (info.count * 30_000), mtime=0)
    with pytest.raises(UnsafePackage, match="inflates beyond"):
        decode_shard(bomb, _with(info, bomb), obj="s")
    # Another shard's bytes under this shard's range: the range is checked.
    other_info, other = shards[2]
    with pytest.raises(UnsafePackage, match="outside the range"):
        decode_shard(other, _with(other_info, other, first=info.first, last=info.last), obj="s")


def test_collisions_and_overlaps_across_shard_boundaries() -> None:
    """Each shard passes on its own; together they collide or overlap."""
    base = packaged_manifest(20)
    files = list(base.files)
    before = base.files[9]
    cases: list[tuple[list[FileEntry], str]] = [
        # "p/009" ends shard 1 and is also a directory of "p/009/x", which starts shard 2.
        ([*files[:10], files[10]._replace(path="p/009/x"), *files[11:]], "also a directory"),
        # Shard 2's first entry starts inside shard 1's last entry, in the same package.
        ([*files[:10], files[10]._replace(offset=before.offset), *files[11:]], "overlaps"),
        # "P/015" sorts first, in shard 1; "p/015" lies in shard 2.
        ([FileEntry("P/015", 10, "2" * 64), *files], "collides"),
    ]
    for changed, needle in cases:
        manifest = Manifest("s", "v", tuple(changed), base.packages, created_at="t")
        root, shards = encode_manifest(manifest, TEN)
        assert len(shards) > 1
        records = [decode_shard(d, i, obj=i.key) for i, d in shards]  # each one passes
        with pytest.raises(UnsafePackage, match=needle):
            join_shards(root, root.shards, records, obj="root")


# --- in a store: what a pull refuses, what a reader loads -------------------------------


def reshard(store: Store, limits: ShardLimits = TEN, version: VersionUri = VERSION) -> Manifest:
    """Store the published version again as a root over shards cut by ``limits``."""

    async def go() -> Manifest:
        catalog = Catalog(store)
        manifest = await catalog.read_manifest(version)
        root, shards = encode_manifest(manifest, limits)
        await catalog.write_shards(shards)
        await store.put(manifest_key(version.dataset, version.version), encode_root(root))
        return manifest

    return run_sync(go())


@pytest.fixture(params=["whole", "batched"])
def published(
    tmp_path: Path, env: dict[str, str], request: pytest.FixtureRequest
) -> tuple[Store, dict[str, str]]:
    """FILES as a packaged version in a ``file://`` store, in three shards of ten files;
    pulled whole, or in batches of ten files (what a version of millions does)."""
    url = f"file://{tmp_path / 'store'}"
    api.publish(write_outputs(tmp_path / "out", FILES, [URI]), store=url, packaging=True, env=env)
    store = open_store(url)
    reshard(store)
    pulls = {"DSPKG_PULL_BATCH_FILES": "10"} if request.param == "batched" else {}
    return store, {**env, "DSPKG_STORE": url, **pulls}


def root_and_shards(store: Store) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The stored root and every shard's columns."""
    key = manifest_key(VERSION.dataset, VERSION.version)
    root = json.loads(run_sync(store.get(key)))
    shards = [json.loads(gzip.decompress(run_sync(store.get(s["key"])))) for s in root["shards"]]
    return root, shards


def store_v2(store: Store, root: dict[str, Any], shards: list[dict[str, Any]]) -> None:
    """Write ``shards`` (columns) and ``root``, the root made to describe the shards
    exactly (hash, size, count, range, bytes): what an attacker who can write would do."""
    records = []
    for info, columns in zip(root["shards"], shards, strict=True):
        data = gzip.compress(json.dumps(columns, sort_keys=True).encode(), mtime=0)
        sha = hashlib.sha256(data).hexdigest()
        info.update(key=shard_key(VERSION.dataset, sha), sha256=sha, size=len(data))
        info.update(count=len(columns["path"]), first=columns["path"][0])
        info.update(last=columns["path"][-1], bytes=sum(columns["size"]))
        run_sync(store.put(info["key"], data))
        records.append(info)
    root["files"] = sum(s["count"] for s in records)
    root["bytes"] = sum(s["bytes"] for s in records)
    key = manifest_key(VERSION.dataset, VERSION.version)
    run_sync(store.put(key, json.dumps(root).encode()))


def edit_column(shard: int, column: str, at: int, value: Any) -> Callable[..., None]:
    def change(root: dict[str, Any], shards: list[dict[str, Any]]) -> None:
        shards[shard][column][at] = value

    return change


def move_record(root: dict[str, Any], shards: list[dict[str, Any]]) -> None:
    """The first record of shard 2 appended to shard 1 too: a duplicate across shards."""
    for column in shards[0]:
        if column != "schema_version":
            shards[0][column].append(shards[1][column][0])


def case_twin(root: dict[str, Any], shards: list[dict[str, Any]]) -> None:
    """Shard 1 gets "D2/..." (sorts first), the twin of a path in shard 3."""
    twin = shards[2]["path"][0].upper()
    for column, value in (("path", twin), ("size", 1), ("sha256", "3" * 64)):
        shards[0][column].insert(0, value)
    shards[0]["package"].insert(0, None)
    shards[0]["offset"].insert(0, None)


def reorder(root: dict[str, Any], shards: list[dict[str, Any]]) -> None:
    root["shards"].reverse()
    shards.reverse()


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (edit_column(1, "path", 4, "../../etc/x"), "refusing path"),
        (edit_column(1, "path", 4, "d1/f010.bin"), "out of order or duplicated"),
        (edit_column(0, "sha256", 3, "zz"), "malformed sha256"),
        (edit_column(2, "size", 3, -1), "malformed size"),
        (edit_column(2, "package", 3, 7), "does not exist"),
        (edit_column(1, "offset", 5, 40), "overlaps"),
        (reorder, "must be sorted and must not overlap"),
        (move_record, "must be sorted and must not overlap"),
        (case_twin, "collides"),
    ],
)
def test_hostile_shards_are_refused(
    published: tuple[Store, dict[str, str]],
    tmp_path: Path,
    change: Callable[[dict[str, Any], list[dict[str, Any]]], None],
    needle: str,
) -> None:
    store, env = published
    root, shards = root_and_shards(store)
    change(root, shards)
    store_v2(store, root, shards)
    before = set(tmp_path.iterdir()) | {tmp_path / "cache"}
    assert_one_line_error(run_cli(["pull", URI, str(tmp_path / "dest")], env), needle)
    assert set(tmp_path.iterdir()) <= before  # no DEST, nothing beside it but the cache


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        ("flip", "is not the shard its root lists"),
        ("delete", "is missing from the store"),
    ],
)
def test_damaged_or_missing_shard(
    published: tuple[Store, dict[str, str]], tmp_path: Path, damage: str, needle: str
) -> None:
    store, env = published
    root, _ = root_and_shards(store)
    key = root["shards"][1]["key"]
    if damage == "delete":
        run_sync(store.delete(key))
    else:
        data = run_sync(store.get(key))
        run_sync(store.put(key, data[:20] + bytes([data[20] ^ 1]) + data[21:]))
    assert_one_line_error(run_cli(["pull", URI, str(tmp_path / "dest")], env), needle, key)
    assert not (tmp_path / "dest").exists()
    # The root alone still answers show (no shard is read without --files).
    shown = run_cli(["show", URI, "--json"], env)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["files"] == len(FILES)
    assert_one_line_error(run_cli(["show", URI, "--files"], env), needle)


def test_v1_and_v2_both_pull(published: tuple[Store, dict[str, str]], tmp_path: Path) -> None:
    store, env = published
    manifest = run_sync(Catalog(store).read_manifest(VERSION))
    old = VersionUri(VERSION.dataset, "old")
    v1 = Manifest(old.dataset, old.version, manifest.files, manifest.packages, created_at="t")
    run_sync(store.put(manifest_key(old.dataset, old.version), v1.to_json()))
    for uri, dest in ((URI, "v2"), (str(old), "v1")):
        result = api.pull(uri, tmp_path / dest, store=store, env=env)
        assert read_tree(tmp_path / dest) == FILES and result.files == len(FILES)
    shown = api.show(str(old), store=store, env=env, files=False).to_json()
    assert shown["manifest"] == {"schema_version": 1, "shards": 0}
    assert shown["packaged_files"] == len(FILES)


def test_readers_load_only_the_shards_they_need(
    published: tuple[Store, dict[str, str]], tmp_path: Path
) -> None:
    store, _ = published
    with Cache(tmp_path / "reader-cache") as cache:
        requests = store.stats.requests
        root = run_sync(load_root(store, cache, VERSION))
        assert store.stats.requests - requests == 1 and len(root.shards) == 3
        wanted = root.shards_for("d1/f02")
        assert 1 <= len(wanted) < len(root.shards)
        files = run_sync(load_files(store, cache, root, wanted))
        assert store.stats.requests - requests == 1 + len(wanted)
        assert {f.path for f in files if f.path.startswith("d1/f02")} == {
            p for p in FILES if p.startswith("d1/f02")
        }
        # Everything now: the shards already kept are not fetched again.
        manifest = run_sync(load_manifest(store, cache, VERSION))
        assert [f.path for f in manifest.files] == sorted(FILES)
        assert store.stats.requests - requests == 1 + len(root.shards)
        # Checked together once: the cache notes it and serves the next load alone.
        again = run_sync(load_root(store, cache, VERSION))
        assert again.validated and not root.validated
        run_sync(load_manifest(store, cache, VERSION))
        assert store.stats.requests - requests == 1 + len(root.shards)


def test_damaged_cached_shard_is_fetched_again(
    published: tuple[Store, dict[str, str]], tmp_path: Path
) -> None:
    store, _ = published
    with Cache(tmp_path / "reader-cache") as cache:
        run_sync(load_manifest(store, cache, VERSION))
        kept = sorted((tmp_path / "reader-cache" / "manifests").rglob("*.json.gz"))
        assert len(kept) == 3
        kept[0].write_bytes(b"not a shard")
        requests = store.stats.requests
        manifest = run_sync(load_manifest(store, cache, VERSION))
        assert [f.path for f in manifest.files] == sorted(FILES)
        assert store.stats.requests - requests == 1  # that shard alone
        assert kept[0].read_bytes() != b"not a shard"


def test_a_child_shares_its_parents_unchanged_shards(tmp_path: Path, env: dict[str, str]) -> None:
    """Cuts follow the content: a child that adds a file shares the shards it did not touch."""
    files = {f"f/{i:05d}": b"x" for i in range(3000)}
    out = write_outputs(tmp_path / "p", files, [URI])
    url = f"file://{tmp_path / 'store'}"
    api.publish(out, store=url, env=env)
    limits = ShardLimits(min_files=100, max_files=800, cut_mask=0x7F)
    store = open_store(url)
    parent_root, _ = encode_manifest(reshard(store, limits), limits)
    child = {"uri": "dataset://sharded/v2", "from": URI}
    write_outputs(tmp_path / "c", {"f/00001a": b"y"}, [child])
    api.publish(tmp_path / "c", store=url, env=env)
    child_root, _ = encode_manifest(reshard(store, limits, VersionUri("sharded", "v2")), limits)
    shared = set(parent_root.shards) & set(child_root.shards)
    assert len(parent_root.shards) > 3 and len(shared) >= len(parent_root.shards) - 2
    # diff reads the two roots and only the shards they do not share.
    requests = store.stats.requests
    diff = api.diff(URI, "dataset://sharded/v2", store=store, env=env)
    assert diff.added.files == 1 and diff.unchanged.files == len(files)
    assert diff.removed.files == diff.changed.files == 0
    read = store.stats.requests - requests
    assert read <= 2 + 2 * (len(child_root.shards) - len(shared)) + 4  # roots, shards, aliases


def test_a_subset_pull_reads_only_the_shards_it_may_match(
    published: tuple[Store, dict[str, str]], tmp_path: Path
) -> None:
    store, env = published
    requests = store.stats.requests
    pulled = api.pull(URI, tmp_path / "d1", store=store, env=env, include=["d1/**"])
    want = {p: d for p, d in FILES.items() if p.startswith("d1/")}
    assert read_tree(tmp_path / "d1") == want
    # The version's totals come from the root; one of three shards was read.
    assert pulled.files == len(FILES) and pulled.selected_files == len(want)
    shard_gets = [k for k in (tmp_path / "cache" / "manifests").rglob("*.json.gz") if k.is_file()]
    assert len(shard_gets) == 1
    assert store.stats.requests - requests < 1 + 3 + 3  # root, one shard, its ranges
