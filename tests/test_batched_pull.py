"""A version of many files is pulled a batch at a time (``DSPKG_PULL_BATCH_FILES``): cold,
warm and partly cached pulls make the published tree; a file shared by several batches is
fetched once; a refreshed root (packages added after the cache read it) is used; the
cross-shard checks hold in bounded memory. Real ``file://`` stores and caches throughout;
tampered shards under batching: tests/test_shards.py runs its hostile cases both ways."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dspkg import api
from dspkg.cache import Cache
from dspkg.errors import UnsafePackage
from dspkg.manifest import FileEntry, Manifest, ShardInfo
from dspkg.names import VersionUri
from dspkg.shards import JoinStream, ShardLimits, decode_shard, encode_manifest, shard_batches
from dspkg.store import open_store
from tests.helpers import assert_one_line_error, read_tree, run_cli, write_outputs
from tests.test_shards import manifests, reshard

URI = "dataset://sharded/v1"
VERSION = VersionUri("sharded", "v1")
# Sixty files in six shards of ten (once resharded): "shared" content appears in the
# first shard and in the last, and the empty file twice, so batches share objects.
SHARED = b"the same bytes under two paths, in shards far apart" * 20
FILES = {f"d{i // 10}/f{i:03d}.bin": bytes([97 + i % 26]) * (40 + i) for i in range(60)}
FILES["d0/f001.bin"] = FILES["d5/f058.bin"] = SHARED
FILES["d1/f012.bin"] = FILES["d4/f047.bin"] = b""
OBJECTS = {hashlib.sha256(data).hexdigest() for data in FILES.values()}


@pytest.fixture
def published(tmp_path: Path, env: dict[str, str]) -> dict[str, str]:
    """FILES packaged (blobs too) in a ``file://`` store, as a root over six shards."""
    url = f"file://{tmp_path / 'store'}"
    api.publish(write_outputs(tmp_path / "out", FILES, [URI]), store=url, packaging=True, env=env)
    reshard(open_store(url))
    return {**env, "DSPKG_STORE": url}


def batched(env: dict[str, str], files: int) -> dict[str, str]:
    return {**env, "DSPKG_PULL_BATCH_FILES": str(files)}


# 25: batches of whole shards (two of ten); 10: one shard each; 4: slices of a shard.
@pytest.mark.parametrize("batch", [25, 10, 4])
def test_cold_then_warm_pull_in_batches_make_the_tree(
    published: dict[str, str], tmp_path: Path, batch: int
) -> None:
    env = batched(published, batch)
    cold = api.pull(URI, tmp_path / "cold", env=env)
    assert read_tree(tmp_path / "cold") == FILES
    # Each object once, although the shared ones are in batches far apart.
    assert (cold.files, cold.files_fetched) == (len(FILES), len(OBJECTS))
    assert cold.files_from_cache == len(FILES) - len(OBJECTS)
    assert (cold.selected_files, cold.bytes) == (len(FILES), sum(map(len, FILES.values())))
    assert cold.packaged and cold.manifest is None  # never held whole
    # The cache's record of the version lists every object (streamed, not held).
    with Cache(Path(env["DSPKG_CACHE"])) as cache:
        ((_, record),) = cache.version_records()
    assert set(record.objects) == OBJECTS and not record.partial
    assert record.files == len(FILES)

    warm = api.pull(URI, tmp_path / "warm", env=env)
    assert (warm.files_fetched, warm.requests) == (0, 0)
    assert read_tree(tmp_path / "warm") == FILES


def test_a_partly_cached_version_fetches_only_the_rest(
    published: dict[str, str], tmp_path: Path
) -> None:
    env = batched(published, 10)
    api.pull(URI, tmp_path / "some", include=["d2/**", "d5/**"], env=env)
    have = {hashlib.sha256(d).hexdigest() for p, d in FILES.items() if p[:2] in ("d2", "d5")}
    rest = api.pull(URI, tmp_path / "all", env=env)
    assert read_tree(tmp_path / "all") == FILES
    assert rest.files_fetched == len(OBJECTS - have)


def test_refetch_fetches_each_object_once_across_batches(
    published: dict[str, str], tmp_path: Path
) -> None:
    env = batched(published, 10)
    # Ignoring the cache: the shared objects fetched for the first batches are this
    # pull's own, linked for the last ones rather than fetched again.
    once = api.pull(URI, tmp_path / "once", refetch=True, env=env)
    assert once.files_fetched == len(OBJECTS)
    assert read_tree(tmp_path / "once") == FILES


def test_the_cli_pulls_in_batches_with_its_json_and_a_one_line_error_after(
    published: dict[str, str], tmp_path: Path
) -> None:
    env = batched(published, 10)
    done = run_cli(["pull", URI, str(tmp_path / "dest"), "--json"], env)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert (doc["files"], doc["files_fetched"], doc["selected_files"]) == (60, len(OBJECTS), 60)
    assert read_tree(tmp_path / "dest") == FILES
    # DEST is not empty now: refused before anything is read.
    again = run_cli(["pull", URI, str(tmp_path / "dest")], env)
    assert again.returncode == 1 and "is not empty" in again.stderr


def test_a_refreshed_root_is_used_by_a_batched_pull(tmp_path: Path, env: dict[str, str]) -> None:
    """Published without packages, pulled (the cache keeps that root), packaged: a pull
    that lacks files reads the root again and takes them from the new package."""
    url = f"file://{tmp_path / 'store'}"
    files = {f"x/{i:03d}.bin": f"file {i}".encode() * 30 for i in range(50)}
    api.publish(write_outputs(tmp_path / "src", files, None), store=url, to=URI, env=env)
    env = batched({**env, "DSPKG_STORE": url}, 8)
    api.pull(URI, tmp_path / "one", env=env)
    api.package(URI, env=env)
    for path in (Path(env["DSPKG_CACHE"]) / "objects").rglob("*"):
        if path.is_file():
            path.unlink()
    blobs = sorted((tmp_path / "store" / "blobs").rglob("*"))
    for path in blobs:  # the package alone can serve the pull now
        if path.is_file():
            path.unlink()
    pulled = api.pull(URI, tmp_path / "two", env=env)
    published_tree = read_tree(tmp_path / "src")  # the files and the metadata file
    assert pulled.packaged and pulled.files_fetched == len(published_tree)
    assert read_tree(tmp_path / "two") == published_tree


def test_a_failed_batched_pull_leaves_no_dest(published: dict[str, str], tmp_path: Path) -> None:
    """The package is cut short (refused: its files come from their blobs) and the blob of
    a file of the last shard is gone: the pull fails there, after earlier batches were
    placed, warns once about the package, and leaves neither DEST nor staging behind."""
    env = batched(published, 10)
    store = tmp_path / "store"
    (package,) = list((store / "packages").rglob("*.vhpkgzip"))
    package.write_bytes(package.read_bytes()[:2000])
    last = hashlib.sha256(FILES["d5/f059.bin"]).hexdigest()
    (store / "blobs" / "sha256" / last[:2] / last[2:]).unlink()
    result = run_cli(["pull", URI, str(tmp_path / "dest")], env)
    assert_one_line_error(result, last[2:], "not found")
    assert result.stderr.count("warning: package") == 1
    assert not (tmp_path / "dest").exists()


# --- the pure parts ----------------------------------------------------------------------


@given(st.lists(st.integers(1, 30), max_size=12), st.integers(1, 40))
def test_shard_batches_keep_order_and_bound(counts: list[int], files: int) -> None:
    shards = [
        ShardInfo(f"k{i}", "0" * 64, 1, c, 0, f"{i:03d}", f"{i:03d}") for i, c in enumerate(counts)
    ]
    batches = shard_batches(shards, files)
    assert [s for b in batches for s in b] == shards
    for b in batches:
        assert len(b) == 1 or sum(s.count for s in b) <= files


@given(manifests(), st.integers(1, 7), st.integers(1, 9))
def test_a_stream_of_batches_accepts_what_a_whole_load_accepts(
    manifest: Manifest, per_shard: int, batch: int
) -> None:
    root, shards = encode_manifest(manifest, ShardLimits(1, per_shard, 0b11))
    records = {info: decode_shard(data, info, obj=info.key) for info, data in shards}
    join = JoinStream(root, obj="root")
    for group in shard_batches(root.shards, batch):
        join.add(group, [records[s] for s in group])
    assert not join.suspects()


def test_a_collision_across_batches_is_named() -> None:
    """Two paths that fold alike, in shards read in different batches."""
    manifest = unpackaged({"A/x": b"1", "b/y": b"2", "c/z": b"3", "a/x": b"4"})
    root, shards = encode_manifest(manifest, ShardLimits(1, 1, 0))
    records = {info: decode_shard(data, info, obj=info.key) for info, data in shards}
    join = JoinStream(root, obj="root")
    for group in shard_batches(root.shards, 1):
        join.add(group, [records[s] for s in group])
    suspects = join.suspects()
    assert suspects
    with pytest.raises(UnsafePackage, match=r"'[aA]/x' collides"):
        join.name_collision([p for s in root.shards for p in records[s].paths], suspects)


def unpackaged(files: dict[str, bytes]) -> Manifest:
    entries = tuple(
        FileEntry(p, len(d), hashlib.sha256(d).hexdigest()) for p, d in sorted(files.items())
    )
    return Manifest("h", "v", entries, created_at="t", blobs=True)
