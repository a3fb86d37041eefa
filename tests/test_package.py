"""``dspkg package``: packages for an existing version, recorded by a conditional replace of
its manifest; its files, identity and URI unchanged; races with pulls and other runs."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from dspkg import api
from dspkg.cache import Cache
from dspkg.catalog import Catalog
from dspkg.errors import Integrity
from dspkg.layout import blob_key, manifest_key
from dspkg.manifest import Manifest
from dspkg.names import VersionUri
from dspkg.packing import PackOptions, PackResult, package_version
from dspkg.store import Store, open_store
from tests.helpers import (
    S3Server,
    StoreCase,
    assert_one_line_error,
    assert_usage_error,
    read_tree,
    run_cli,
    write_outputs,
)

URI = "dataset://pk/v1"


def make_tree(root: Path, count: int, *, seed: int = 1) -> dict[str, bytes]:
    rng = random.Random(seed)
    files = {
        f"d{i % 20:02d}/f{i:05d}.bin": rng.randbytes(rng.randint(0, 3_000)) for i in range(count)
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def record(store: Store, uri: str = URI) -> bytes:
    v = VersionUri.parse(uri)
    return asyncio.run(store.get(manifest_key(v.dataset, v.version)))


def version_of(store: Store, uri: str = URI) -> Manifest:
    """The stored version, every file (its root and shards, checked)."""
    return asyncio.run(Catalog(store).read_manifest(VersionUri.parse(uri)))


def file_digest(manifest: Manifest) -> str:
    """The digest of a version's file list: paths, sizes and hashes, in order."""
    h = hashlib.sha256()
    for f in manifest.files:
        h.update(f"{f.path}\0{f.size}\0{f.sha256}\n".encode())
    return h.hexdigest()


def package_dirs(store: Store, uri: str = URI) -> list[str]:
    v = VersionUri.parse(uri)
    keys = asyncio.run(store.list(f"packages/{v.dataset}/{v.version}/"))
    return sorted({k.key.rsplit("/", 2)[-2] for k in keys})


def test_package_a_10000_file_version_on_s3(
    seaweedfs_server: S3Server, tmp_path: Path, env: dict[str, str]
) -> None:
    case = StoreCase("s3", seaweedfs_server.url(os.urandom(8).hex()), seaweedfs_server.env())
    full_env = {**env, **case.env, "DSPKG_STORE": case.url}
    files = make_tree(tmp_path / "src", 10_000)
    api.publish(tmp_path / "src", store=case.url, to=URI, env=full_env)
    store = case.open()
    before = version_of(store)
    assert not before.packages

    made = run_cli(["package", URI, "--json"], full_env, timeout=600)
    assert made.returncode == 0, made.stderr
    result = json.loads(made.stdout)
    assert (result["state"], result["files"], result["lost_race"]) == ("packaged", 10_000, False)
    after = version_of(store)
    assert file_digest(after) == file_digest(before)
    assert (after.uri, after.parent, after.created_at, after.blobs) == (
        before.uri,
        before.parent,
        before.created_at,
        before.blobs,
    )
    assert [p.entries for p in after.packages] == [10_000]
    assert all(f.package == 0 for f in after.files)

    # A pull afterwards, with a fresh cache, reads the packages.
    fresh = case.open()
    pulled = api.pull(URI, tmp_path / "after", store=fresh, cache_dir=tmp_path / "c2", env=full_env)
    assert read_tree(tmp_path / "after") == files
    assert pulled.requests <= 20, pulled.requests
    # A cache that pulled the version before it was packaged holds the old manifest (and
    # here none of its files): its next pull reads the record again and uses the packages.
    with Cache(Path(full_env["DSPKG_CACHE"])) as old_copy:
        old_copy.save_manifest(case.url, VersionUri.parse(URI), before.to_json())
    again = case.open()
    pulled = api.pull(URI, tmp_path / "again", store=again, env=full_env)
    assert read_tree(tmp_path / "again") == files
    assert pulled.requests <= 20, pulled.requests
    # Idempotent: nothing left to do, nothing written.
    revision = record(store)
    redo = run_cli(["package", URI], full_env)
    assert redo.returncode == 0, redo.stderr
    assert "every file is in a package or stays a blob for its size; nothing to do" in redo.stdout
    assert record(store) == revision
    assert len(package_dirs(store)) == 1


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_a_missing_or_corrupt_blob_fails_and_leaves_the_version(
    durable_store: StoreCase, damage: str, tmp_path: Path, env: dict[str, str]
) -> None:
    full_env = {**env, **durable_store.env, "DSPKG_STORE": durable_store.url}
    files = make_tree(tmp_path / "src", 300)
    api.publish(tmp_path / "src", store=durable_store.url, to=URI, env=full_env)
    store = durable_store.open()
    revision = record(store)
    victim = "d07/f00247.bin"
    key = blob_key(hashlib.sha256(files[victim]).hexdigest())
    if damage == "missing":
        asyncio.run(store.delete(key))
    else:
        asyncio.run(store.put(key, files[victim][:-1] + b"!"))
    # A small package size: two packages are uploaded before the bad file's is refused.
    failed = run_cli(["package", URI, "--package-size", "200KB"], full_env)
    line = assert_one_line_error(failed, f"file {victim!r}", "nothing was changed")
    assert ("has no blob" in line) == (damage == "missing")
    assert record(store) == revision
    assert package_dirs(store) == []  # what it uploaded is gone again
    # Repaired, it goes through.
    asyncio.run(store.put(key, files[victim]))
    done = run_cli(["package", URI, "--package-size", "200KB", "--json"], full_env)
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["packages"]) > 2


def test_only_files_in_no_package_are_packaged(tmp_path: Path, env: dict[str, str]) -> None:
    store_url = f"file://{tmp_path / 'store'}"
    parent = make_tree(tmp_path / "p", 50)
    api.publish(tmp_path / "p", store=store_url, to="dataset://pk/v0", packaging=True, env=env)
    extra = {"new/a.bin": b"a" * 100, "new/b.bin": b"b" * 200, "new/big.bin": os.urandom(30_000)}
    for rel, data in extra.items():
        (tmp_path / "c" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "c" / rel).write_bytes(data)
    api.publish(tmp_path / "c", store=store_url, to=URI, from_="dataset://pk/v0", env=env)
    store = open_store(store_url)
    before = version_of(store)
    stored = record(store)
    planned = api.package(URI, store=store_url, dry_run=True, package_max_file="20KB", env=env)
    assert planned.state == "planned" and planned.plan is not None
    assert (planned.plan["files_to_package"], planned.plan["files_too_big"]) == (2, 1)
    assert record(store) == stored  # a dry run writes nothing
    made = api.package(URI, store=store_url, package_max_file="20KB", env=env)
    assert (made.state, made.files, made.too_big) == ("packaged", 2, 1)
    after = version_of(store)
    # The parent's package keeps its index; the new one comes after it.
    assert after.packages[0] == before.packages[0]
    assert [p.entries for p in after.packages] == [50, 2]
    by_path = {f.path: f for f in after.files}
    assert by_path["new/big.bin"].package is None
    assert {by_path["new/a.bin"].package, by_path["new/b.bin"].package} == {1}
    assert after.package_max_file == 20_000
    shown = api.show(URI, store=store_url, env=env).to_json()
    assert shown["unpackaged"]["too_big"] == {"files": 1, "bytes": 30_000}
    api.pull(URI, tmp_path / "dest", store=store_url, env=env)
    assert read_tree(tmp_path / "dest") == parent | extra


def test_racing_runs_in_one_process_exactly_one_replace_wins(
    store_case: StoreCase, tmp_path: Path, env: dict[str, str]
) -> None:
    full_env = {**env, **store_case.env}
    files = make_tree(tmp_path / "src", 400)
    store = store_case.open()
    api.publish(tmp_path / "src", store=store, to=URI, env=full_env)

    async def both() -> tuple[PackResult, PackResult]:
        uri = VersionUri.parse(URI)
        # Both read the version before either replaces it: the second replace must lose.
        return await asyncio.gather(
            package_version(uri, store, PackOptions()), package_version(uri, store, PackOptions())
        )

    results = asyncio.run(both())
    states = sorted((r.state, r.lost_race) for r in results)
    assert states == [("already packaged", True), ("packaged", False)]
    after = version_of(store)
    winner = next(r for r in results if r.state == "packaged")
    assert [p.key for p in after.packages] == [p.key for p in winner.packages]
    assert len(package_dirs(store)) == 1  # the loser removed its packages
    api.pull(URI, tmp_path / "dest", store=store, env=full_env)
    assert read_tree(tmp_path / "dest") == files


def test_package_racing_another_package_and_a_pull_in_processes(
    seaweedfs_server: S3Server, tmp_path: Path, env: dict[str, str]
) -> None:
    server = seaweedfs_server
    case = StoreCase("s3", server.url(os.urandom(8).hex()), server.env())
    full_env = {**env, **case.env, "DSPKG_STORE": case.url}
    files = make_tree(tmp_path / "src", 3_000)
    api.publish(tmp_path / "src", store=case.url, to=URI, env=full_env)

    def start(*args: str, cache: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "dspkg.cli", *args],
            env={**os.environ, **full_env, "DSPKG_CACHE": str(tmp_path / cache)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    runs = [
        start("pull", URI, str(tmp_path / "pulled"), cache="c0"),
        start("package", URI, "--json", cache="c1"),
        start("package", URI, "--json", cache="c2"),
    ]
    outs = [run.communicate(timeout=600) for run in runs]
    for run, (_, err) in zip(runs, outs, strict=True):
        assert run.returncode == 0, err
    # The pull that started before the packages were recorded still gives the tree.
    assert read_tree(tmp_path / "pulled") == files
    results = [json.loads(out) for out, _ in outs[1:]]
    assert sorted(r["state"] for r in results) == ["already packaged", "packaged"]
    winner = next(r for r in results if r["state"] == "packaged")
    loser = next(r for r in results if r["state"] != "packaged")
    store = case.open()
    after = version_of(store)
    assert [p.key for p in after.packages] == [p["key"] for p in winner["packages"]]
    assert len(package_dirs(store)) == 1  # nothing but the winner's packages
    if loser["lost_race"]:  # it read the version before the winner replaced it
        _, err = outs[1 + results.index(loser)]
        assert "was changed by another run while this one packaged it" in err
    # And after: pulls use the packages.
    pulled = api.pull(
        URI, tmp_path / "after", store=case.url, cache_dir=tmp_path / "c3", env=full_env
    )
    assert read_tree(tmp_path / "after") == files
    assert pulled.requests <= 20


def test_a_version_published_from_metadata_without_the_gate(
    tmp_path: Path, env: dict[str, str]
) -> None:
    store_url = f"file://{tmp_path / 'store'}"
    files = {"a/1.txt": b"one", "a/2.txt": b"two", "b/3.txt": b"three"}
    write_outputs(tmp_path / "out", files, [{"uri": URI, "packaging": True}])
    api.publish(tmp_path / "out", store=store_url, env=env)  # the gate is off: no packages
    again = run_cli(["publish", str(tmp_path / "out"), "--store", store_url, "--packaging"], env)
    assert f"{URI} has files in no package: dspkg package {URI} adds packages" in again.stdout
    base = ["package", URI, "--store", store_url]
    assert_usage_error(run_cli([*base, "--package-max-file", "0"], env), "0 would keep every file")
    assert_one_line_error(
        run_cli(["package", "dataset://pk/nope", "--store", store_url], env), "not found"
    )
    made = run_cli(["package", "dataset://pk/latest", "--store", store_url], env)  # an alias
    assert made.returncode == 0, made.stderr
    assert f"{URI}: packaging it as asked, though a version of 3 files" in made.stdout
    assert f"packaged {URI}: 3 files (11 B) into 1 package(s)" in made.stdout
    shown = run_cli(["show", URI, "--store", store_url], env)
    assert "packages: 1 (3 files packaged)" in shown.stdout
    api.pull(URI, tmp_path / "dest", store=store_url, env=env)
    assert read_tree(tmp_path / "dest") == files


def test_a_missing_blob_is_named_by_the_api(tmp_path: Path, env: dict[str, str]) -> None:
    store_url = f"file://{tmp_path / 'store'}"
    write_outputs(tmp_path / "out", {"a": b"a"}, [URI])
    api.publish(tmp_path / "out", store=store_url, env=env)
    asyncio.run(open_store(store_url).delete(blob_key(hashlib.sha256(b"a").hexdigest())))
    with pytest.raises(Integrity, match="file 'a' has no blob in the store"):
        api.package(URI, store=store_url, env=env)


def test_a_cache_that_pulled_before_uses_the_packages_once_it_needs_files(
    tmp_path: Path, env: dict[str, str]
) -> None:
    store_url = f"file://{tmp_path / 'store'}"
    files = make_tree(tmp_path / "src", 200)
    api.publish(tmp_path / "src", store=store_url, to=URI, env=env)
    first = api.pull(URI, tmp_path / "one", store=store_url, env=env)
    # The root, its one shard, and every blob.
    assert first.requests == 2 + len({hashlib.sha256(d).digest() for d in files.values()})
    api.package(URI, store=store_url, env=env)
    # Everything cached: the old manifest is enough, nothing is asked of the store.
    warm = api.pull(URI, tmp_path / "two", store=store_url, env=env)
    assert (warm.requests, warm.packaged) == (0, False)
    # Files missing: the root is read again (one request), its new shard, and the package.
    for path in (Path(env["DSPKG_CACHE"]) / "objects").rglob("*"):
        if path.is_file():
            path.unlink()
    cold = api.pull(URI, tmp_path / "three", store=store_url, env=env)
    assert cold.packaged and cold.requests <= 5, cold.requests
    assert read_tree(tmp_path / "three") == files
    # A dry run plans with the packages too, and writes nothing.
    for path in (Path(env["DSPKG_CACHE"]) / "objects").rglob("*"):
        if path.is_file():
            path.unlink()
    plan = api.pull(URI, tmp_path / "four", store=store_url, dry_run=True, env=env).plan
    assert plan is not None and (plan["blobs"], plan["ranges"]) == (0, 1)
