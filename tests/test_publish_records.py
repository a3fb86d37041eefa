"""A publish writes its manifest as it reads: the version it stores is the one the whole
manifest makes, for a version crossing many packages and shards with small limits, built
on a parent, with files too big to package, in C and in Python, with and without blobs."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest

from dspkg.catalog import Catalog
from dspkg.concurrency import run_sync
from dspkg.layout import manifest_key
from dspkg.manifest import FileEntry, Manifest, PackageInfo, ShardInfo
from dspkg.names import VersionUri
from dspkg.publisher import PublishOptions, publish_directory
from dspkg.shards import ShardLimits, encode_manifest, encode_root
from dspkg.store import Store, open_store
from dspkg.zipformat import LOCAL
from tests.helpers import write_outputs

PARENT = VersionUri("big", "v1")
CHILD = VersionUri("big", "v2")
LIMITS = ShardLimits(min_files=5, max_files=40, cut_mask=0b11)
MAX_FILE = 3_000


def contents(i: int, size: int) -> bytes:
    return hashlib.sha256(str(i).encode()).digest() * (size // 32) + bytes(size % 32)


# The parent: 60 files in three folders. The child: 320 files of this run (some replacing
# the parent's, two too big to package, names beyond ASCII), a few of the parent's left out.
PARENT_FILES = {f"f{i % 3}/p{i:03d}.bin": contents(i, 100 + 7 * i) for i in range(60)}
CHILD_FILES = {
    **{f"f{i % 4}/é{i:04d}.bin": contents(1000 + i, 80 + (i * 37) % 700) for i in range(316)},
    "f0/p000.bin": b"replaced",
    "f1/p001.bin": contents(7, 50),
    "f2/zbig.bin": contents(8, MAX_FILE),
    "f9/big.bin": contents(9, MAX_FILE + 500),
}
EXCLUDED = ["f2/p002.bin", "f0/p003.bin"]


def package_records(store: Store, info: PackageInfo) -> dict[str, tuple[int, bytes]]:
    """Each entry of a stored package: where its data starts, and its data, read with
    Python's zipfile (not dspkg's reader)."""
    data = run_sync(store.get(info.key))
    assert len(data) == info.size and hashlib.sha256(data).hexdigest() == info.sha256
    found = {}
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None
        for item in archive.infolist():
            assert item.compress_type == zipfile.ZIP_STORED
            header = LOCAL.unpack_from(data, item.header_offset)
            start = item.header_offset + LOCAL.size + header[9] + header[10]
            found[item.filename] = (start, archive.read(item))
    return found


def stored_version(
    store: Store, uri: VersionUri
) -> tuple[dict[str, Any], list[tuple[ShardInfo, bytes]]]:
    """The root as stored, and each shard it names with its bytes."""
    catalog = Catalog(store)
    root = run_sync(catalog.read_root(uri))
    shards = [(s, run_sync(store.get(s.key))) for s in root.shards]
    doc = json.loads(run_sync(store.get(manifest_key(uri.dataset, uri.version))))
    return doc, shards


def expected_manifest(store: Store, parent: Manifest, created_at: str, blobs: bool) -> Manifest:
    """The child version made at once from what is in the store: the parent's files it
    keeps (their packages renumbered in order of first use), and this run's files where
    the stored packages hold them, checked byte for byte."""
    root = run_sync(Catalog(store).read_root(CHILD))
    kept = [f for f in parent.files if f.path not in CHILD_FILES and f.path not in set(EXCLUDED)]
    packages: list[PackageInfo] = []
    files = []
    for f in kept:
        assert f.package is not None
        info = parent.packages[f.package]
        if info not in packages:
            packages.append(info)
        files.append(f._replace(package=packages.index(info)))
    where: dict[str, tuple[int, int]] = {}
    for info in root.packages[len(packages) :]:
        packages.append(info)
        for name, (offset, data) in package_records(store, info).items():
            assert data == CHILD_FILES[name]
            where[name] = (len(packages) - 1, offset)
    for path, data in CHILD_FILES.items():
        sha = hashlib.sha256(data).hexdigest()
        files.append(FileEntry(path, len(data), sha, *where.get(path, ())))
    assert {p for p, d in CHILD_FILES.items() if len(d) >= MAX_FILE} == set(CHILD_FILES) - set(
        where
    )
    return Manifest(
        "big",
        "v2",
        tuple(sorted(files)),
        tuple(packages),
        parent=str(PARENT),
        created_at=created_at,
        blobs=blobs,
        package_max_file=MAX_FILE,
    )


def _options(*, packages_only: bool, speedups: bool) -> PublishOptions:
    """Small packages and shards, so that a few dozen files make many of each."""
    return PublishOptions(
        packaging=True,
        packages_only=packages_only,
        package_size=20_000,
        package_max_file=MAX_FILE,
        speedups=speedups,
        shard_limits=LIMITS,
    )


@pytest.mark.parametrize("packages_only", [True, False])
@pytest.mark.parametrize("speedups", [True, False])
def test_a_version_of_many_packages_and_shards_is_the_whole_manifest(
    tmp_path: Path, packages_only: bool, speedups: bool
) -> None:
    store = open_store(f"file://{tmp_path / 'store'}")
    options = _options(packages_only=packages_only, speedups=speedups)
    write_outputs(tmp_path / "a", PARENT_FILES, [str(PARENT)])
    run_sync(publish_directory(tmp_path / "a", store, options))
    child = {"uri": str(CHILD), "from": str(PARENT), "exclude": EXCLUDED}
    write_outputs(tmp_path / "b", CHILD_FILES, [child])
    result = run_sync(publish_directory(tmp_path / "b", store, options))
    assert result.versions[0].files == 60 - 2 - 2 + len(CHILD_FILES)
    assert sum(p.uploaded for p in result.versions[0].packages) >= 10

    doc, shards = stored_version(store, CHILD)
    assert len(shards) >= 8
    parent = run_sync(Catalog(store).read_manifest(PARENT))
    manifest = expected_manifest(store, parent, doc["created_at"], not packages_only)
    root, expected = encode_manifest(manifest, LIMITS)
    assert shards == expected
    assert json.loads(encode_root(root)) == doc
    # No shard but the versions' own is left in the store.
    listed = run_sync(store.list("datasets/big/shards/"))
    parent_shards = run_sync(Catalog(store).read_root(PARENT)).shards
    assert {i.key for i in listed} == {s.key for s, _ in shards} | {s.key for s in parent_shards}


def test_packed_and_python_readers_and_blobs_store_the_same_records(tmp_path: Path) -> None:
    """Whichever way the files are read, and with or without blobs, the shards are the
    same bytes (the root differs only in saying whether blobs are there)."""
    shards = []
    for speedups, packages_only in ((True, True), (False, False)):
        store = open_store(f"file://{tmp_path / f'{speedups}{packages_only}'}")
        options = _options(packages_only=packages_only, speedups=speedups)
        write_outputs(tmp_path / "b", CHILD_FILES, [str(CHILD)])
        run_sync(publish_directory(tmp_path / "b", store, options))
        shards.append(stored_version(store, CHILD)[1])
    assert shards[0] == shards[1]
