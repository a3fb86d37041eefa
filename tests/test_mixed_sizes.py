"""Mixed file sizes: files at or above ``--package-max-file`` stay out of packages, are
stored as blobs (also with ``--packages-only``) and pulled by parallel ranged GETs."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from dspkg import api
from dspkg.errors import Integrity, InvalidArgument
from dspkg.layout import blob_key
from dspkg.progress import Progress
from dspkg.pull_plan import Tuning
from dspkg.store import open_store
from tests.helpers import StoreCase, assert_usage_error, run_cli

MB = 1_000_000


class Lines(Progress):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, line: str) -> None:
        self.lines.append(line)


def digests(root: Path) -> dict[str, str]:
    """Every file under ``root`` by relative path, as its sha256 (big trees, little memory)."""
    found = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            with path.open("rb") as f:
                found[path.relative_to(root).as_posix()] = hashlib.file_digest(
                    f, "sha256"
                ).hexdigest()
    return found


def test_9990_small_and_10_big_files_pull_exactly_big_ones_in_parallel_parts(
    tmp_path: Path, env: dict[str, str]
) -> None:
    root = tmp_path / "src"
    for i in range(9_990):
        path = root / f"small/{i // 1000:02d}/{i:05d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(200 + i % 1_800))
    (root / "big").mkdir()
    for i in range(10):
        (root / f"big/{i:02d}.bin").write_bytes(os.urandom(50 * MB))
    store_url = f"file://{tmp_path / 'store'}"
    lines = Lines()
    result = api.publish(
        root, store=store_url, to="dataset://mixed/v1", packaging=True, progress=lines, env=env
    )
    (version,) = result.versions
    assert [p.entries for p in version.packages] == [9_990]
    assert "dataset://mixed/v1: 10 files of 10.0 MB or more (500.0 MB) stored as blobs" in (
        "\n".join(lines.lines)
    )
    details = api.show("dataset://mixed/v1", store=store_url, env=env).to_json()
    assert details["unpackaged"]["too_big"] == {"files": 10, "bytes": 500 * MB}
    assert details["package_max_file"] == 10 * MB
    shown = run_cli(["show", "dataset://mixed/v1", "--store", store_url], env)
    assert "big files: 10 of 10.0 MB or more (500.0 MB) stored as blobs" in shown.stdout

    planned = api.pull(
        "dataset://mixed/v1", tmp_path / "dest", store=store_url, dry_run=True, env=env
    ).plan
    assert planned is not None
    parts_per_file = len(Tuning().blob_parts(50 * MB))
    assert parts_per_file == 5
    assert (planned["blobs"], planned["requests"] - planned["ranges"]) == (10, 10 * parts_per_file)

    store = open_store(store_url)
    pulled = api.pull("dataset://mixed/v1", tmp_path / "dest", store=store, env=env)
    assert digests(tmp_path / "dest") == digests(root)
    # The manifest (its root and one shard), a size check and a directory check of the
    # package, its ranges, and five ranged GETs per big file; at most eight ranged GETs
    # ran at once, beside the package's two checks (they go alongside its first ranges,
    # outside the ranged GETs' slots, so up to two more requests may be in flight).
    assert pulled.requests == 2 + 2 + planned["ranges"] + 10 * parts_per_file
    assert 2 <= store.stats.peak_in_flight <= Tuning().range_requests + 2


def test_a_big_blob_comes_in_parallel_parts_and_is_verified_whole(
    durable_store: StoreCase, tmp_path: Path, env: dict[str, str]
) -> None:
    full_env = {**env, **durable_store.env}
    root = tmp_path / "src"
    root.mkdir()
    data = os.urandom(41 * MB)
    (root / "weights.bin").write_bytes(data)
    api.publish(root, store=durable_store.url, to="dataset://big/v1", env=full_env)
    store = durable_store.open()
    pulled = api.pull("dataset://big/v1", tmp_path / "one", store=store, env=full_env)
    assert (tmp_path / "one/weights.bin").read_bytes() == data
    parts = len(Tuning().blob_parts(len(data)))
    assert parts == 4
    assert pulled.requests == 2 + parts  # the root and its shard, then the parts
    assert store.stats.peak_in_flight == parts  # all at once
    # A blob changed in the store: the parts arrive, the whole fails its sha256, and
    # nothing enters the cache or DEST.
    sha = hashlib.sha256(data).hexdigest()
    bad = bytearray(data)
    bad[30 * MB] ^= 1
    asyncio.run(store.put(blob_key(sha), bytes(bad)))
    cache = tmp_path / "cache2"
    with pytest.raises(Integrity, match=r"blob of 'weights.bin' does not match its sha256"):
        api.pull("dataset://big/v1", tmp_path / "two", store=store, cache_dir=cache, env=full_env)
    assert not [p for p in (cache / "objects").rglob("*") if p.is_file()]
    assert not (tmp_path / "two").exists() or not any((tmp_path / "two").iterdir())


def test_packages_only_still_stores_big_files_as_blobs(
    durable_store: StoreCase, tmp_path: Path, env: dict[str, str]
) -> None:
    full_env = {**env, **durable_store.env}
    root = tmp_path / "src"
    files = {f"s/{i}.txt": os.urandom(100 + i) for i in range(30)}
    files |= {"b/one.bin": os.urandom(300_000), "b/two.bin": os.urandom(200_000)}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    lines = Lines()
    api.publish(
        root,
        store=durable_store.url,
        to="dataset://po/v1",
        packages_only=True,
        package_max_file="200KB",
        progress=lines,
        env=full_env,
    )
    keys = [i.key for i in asyncio.run(durable_store.open().list("blobs/"))]
    assert sorted(keys) == sorted(
        blob_key(hashlib.sha256(files[rel]).hexdigest()) for rel in ("b/one.bin", "b/two.bin")
    )
    # A small version asked to be packaged is packaged, with one line saying so.
    few = [line for line in lines.lines if "gains little" in line]
    assert few == [
        "dataset://po/v1: packaging it as asked, though a version of 32 files (under 1,000) "
        "gains little from packages"
    ]
    details = api.show("dataset://po/v1", store=durable_store.url, env=full_env)
    doc = details.to_json(files=True)
    assert (doc["blobs"], doc["packaged_files"]) == (False, 30)
    where = {f["path"]: f["package"] for f in doc["file_list"]}
    assert where["b/one.bin"] is None and where["b/two.bin"] is None
    api.pull("dataset://po/v1", tmp_path / "dest", store=durable_store.url, env=full_env)
    assert digests(tmp_path / "dest") == digests(root)


def test_package_max_file_must_be_a_sensible_size(tmp_path: Path, env: dict[str, str]) -> None:
    root = tmp_path / "src"
    root.mkdir()
    (root / "a").write_bytes(b"a")
    base = [
        "publish",
        str(root),
        "--store",
        f"file://{tmp_path / 'store'}",
        "--to",
        "dataset://x/v",
    ]
    for value, needle in (
        ("0", "0 would keep every file out of the packages; use --no-packaging"),
        ("-1MB", "invalid size '-1MB'"),
        ("ten", "invalid size 'ten'"),
        ("9999999TB", "larger than any object a store holds"),
    ):
        assert_usage_error(run_cli([*base, f"--package-max-file={value}"], env), needle)
    with pytest.raises(InvalidArgument, match="larger than any object"):
        api.publish(
            root, store=f"file://{tmp_path / 'store'}", to="dataset://x/v", package_max_file=1 << 60
        )
    assert api.datasets(store=f"file://{tmp_path / 'store'}", env=env) == []
    made = run_cli([*base, "--package-max-file", "1KB", "--packaging"], env)
    assert made.returncode == 0, made.stderr
