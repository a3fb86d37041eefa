"""Publishing on a Dask cluster: a real LocalCluster of two worker processes."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import WorkerPlugin

from dspkg import api
from dspkg import distributed as dist
from dspkg.catalog import Catalog
from dspkg.concurrency import run_sync
from dspkg.errors import InvalidArgument
from dspkg.layout import blob_key, manifest_key
from dspkg.names import VersionUri
from dspkg.store import open_store
from tests.helpers import assert_usage_error, free_port, read_tree, run_cli, write_outputs

URI = "dataset://cluster/v1"
VERSION = VersionUri("cluster", "v1")


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    with (
        LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as c,  # type: ignore[no-untyped-call]
    ):
        yield c


def files_of(count: int, seed: int, size: tuple[int, int] = (500, 3000)) -> dict[str, bytes]:
    rng = random.Random(seed)
    return {f"d{i % 7}/f{i:05d}.bin": rng.randbytes(rng.randint(*size)) for i in range(count)}


def big_and_small_files(
    count: int, seed: int, small: tuple[int, int], big: list[int]
) -> dict[str, bytes]:
    """``count`` small files, and files of the ``big`` sizes among them in path order."""
    files = files_of(count, seed, small)
    rng = random.Random(seed)
    for i, size in enumerate(big):
        files[f"d{i % 7}/f{rng.randrange(count):05d}-big{i}.bin"] = rng.randbytes(size)
    return files


def write_files(out: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    return out


def stored_version(url: str) -> tuple[dict[str, Any], list[tuple[Any, ...]]]:
    """The root (as stored) and the files of the version, as records."""
    store = open_store(url)
    root = json.loads(run_sync(store.get(manifest_key(VERSION.dataset, VERSION.version))))
    manifest = run_sync(Catalog(store).read_manifest(VERSION))
    return root, [tuple(f) for f in manifest.files]


@pytest.mark.slow
def test_dask_version_is_the_single_process_version(
    client: Client, tmp_path: Path, env: dict[str, str]
) -> None:
    files = files_of(1500, seed=1)
    out = write_outputs(tmp_path / "out", files, [URI])
    single, on_dask = f"file://{tmp_path / 'single'}", f"file://{tmp_path / 'dask'}"
    api.publish(out, store=single, packaging=True, package_size="200KB", env=env)
    address = client.scheduler_info()["address"]
    published = run_cli(
        [
            "publish",
            str(out),
            "--dask",
            address,
            "--packaging",
            "--package-size",
            "200KB",
            "--json",
        ],
        {**env, "DSPKG_STORE": on_dask},
    )
    assert published.returncode == 0, published.stderr
    [result] = json.loads(published.stdout)["versions"]
    assert result["created"] and result["tasks"] == result["packages"] > 5
    assert_same_version(single, on_dask, files)
    api.pull(URI, tmp_path / "dest", store=on_dask, env=env)
    assert read_tree(tmp_path / "dest") == files


def assert_same_version(single: str, on_dask: str, files: dict[str, bytes]) -> None:
    """The version in ``on_dask`` is the one in ``single``, but for package attempts."""
    one, one_files = stored_version(single)
    two, two_files = stored_version(on_dask)
    # The same file records, in the same shards: byte for byte.
    assert one_files == two_files and len(one_files) == len(files)
    assert one["digest"] == two["digest"] and one["shards"] == two["shards"]
    assert one.get("package_max_file") == two.get("package_max_file")
    assert one["blobs"] == two["blobs"]

    def without_attempt(package: dict[str, Any]) -> dict[str, Any]:
        parts = package["key"].split("/")
        return {**package, "key": "/".join(parts[:3] + parts[4:])}

    # The same packages (names, sizes, SHA-256, entries); keys differ in the attempt only.
    assert [without_attempt(p) for p in one["packages"]] == [
        without_attempt(p) for p in two["packages"]
    ]


def assert_big_files_are_blobs(url: str, files: dict[str, bytes], max_file: int) -> None:
    """Files of ``max_file`` bytes or more are in no package, their blobs whole and exact;
    the others are packaged."""
    root, records = stored_version(url)
    assert root["package_max_file"] == max_file
    store = open_store(url)
    for path, size, sha256, package, _ in records:
        assert (package is None) == (size >= max_file), path
        if package is None:
            blob = run_sync(store.get(blob_key(sha256)))
            assert blob == files[path]


@pytest.mark.slow
def test_dask_version_with_big_files_is_the_single_process_version(
    client: Client, tmp_path: Path, env: dict[str, str]
) -> None:
    """Mixed sizes: files at or above --package-max-file stay blobs, uploaded by tasks of
    their own (a few to a task), the rest packaged: the version a single publish makes."""
    max_file = 100_000
    big = [max_file, max_file - 1, 150_000, 230_000, 310_000, 120_000, 400_000, 101_000]
    files = big_and_small_files(1200, seed=3, small=(500, 3000), big=big)
    out = write_outputs(tmp_path / "out", files, [URI])
    single, on_dask = f"file://{tmp_path / 'single'}", f"file://{tmp_path / 'dask'}"
    limits = ["--package-size", "300000", "--package-max-file", str(max_file)]
    published = run_cli(
        ["publish", str(out), "--packaging", *limits, "--json"], {**env, "DSPKG_STORE": single}
    )
    assert published.returncode == 0, published.stderr
    address = client.scheduler_info()["address"]
    published = run_cli(
        ["publish", str(out), "--dask", address, "--packaging", *limits, "--json"],
        {**env, "DSPKG_STORE": on_dask},
    )
    assert published.returncode == 0, published.stderr
    assert "7 files of 100.0 KB or more" in published.stderr
    [result] = json.loads(published.stdout)["versions"]
    # One task per package, and the 7 big files in blob tasks of at most 300,000 bytes.
    blob_tasks = result["tasks"] - result["packages"]
    assert result["created"] and result["packages"] > 5 and 3 <= blob_tasks < 7
    assert_same_version(single, on_dask, files)
    assert_big_files_are_blobs(on_dask, files, max_file)
    api.pull(URI, tmp_path / "dest", store=on_dask, env=env)
    assert read_tree(tmp_path / "dest") == files


class KillOnce(WorkerPlugin):
    """Kills its worker (SIGKILL) the first time any worker runs a dspkg task (whose key
    holds ``task``), once an upload has begun under ``watch`` in the store: a worker lost
    mid-task."""

    def __init__(self, marker: str, watch: str, task: str = "") -> None:
        self.marker = marker
        self.watch = watch
        self.task = task
        self.name = f"kill-once-{marker}"

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        key = str(key)
        if finish != "executing" or not key.startswith("dspkg-") or self.task not in key:
            return
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return
        threading.Thread(target=self._kill_when_uploading, daemon=True).start()

    def _kill_when_uploading(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(Path(self.watch).rglob("*")):
            time.sleep(0.002)
        Path(self.marker).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.slow
def test_a_worker_killed_mid_task(client: Client, tmp_path: Path, env: dict[str, str]) -> None:
    files = files_of(400, seed=2, size=(20_000, 60_000))  # about 16 MB: uploads take a while
    out = write_files(tmp_path / "out", files)
    url = f"file://{tmp_path / 'store'}"
    marker = tmp_path / "killed"
    before = set(client.run(os.getpid).values())
    client.register_plugin(KillOnce(str(marker), str(tmp_path / "store" / "packages")))
    result = dist.publish([out], URI, client, store=url, package_size="2MB")
    killed = int(marker.read_text())
    assert killed in before
    assert result.commit.created and result.commit.files == len(files)
    root, records = stored_version(url)
    assert [r[0] for r in records] == sorted(files)  # each file once
    store = open_store(url)
    for package in root["packages"]:  # every package referenced is whole and exact
        data = run_sync(store.get(package["key"]))
        assert hashlib.sha256(data).hexdigest() == package["sha256"]
    api.pull(URI, tmp_path / "dest", store=url, env=env)
    assert read_tree(tmp_path / "dest") == files
    assert_worker_replaced(client, killed)


def assert_worker_replaced(client: Client, killed: int) -> None:
    """The nanny restarts the worker it lost."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(client.scheduler_info()["workers"]) < 2:
        time.sleep(0.1)
    now = set(client.run(os.getpid).values())
    assert len(now) == 2 and killed not in now


@pytest.mark.slow
def test_a_worker_killed_while_uploading_big_files(
    client: Client, tmp_path: Path, env: dict[str, str]
) -> None:
    """A worker lost in a task of big files (kept out of the packages): Dask runs the task
    again, its blobs are uploaded once and whole, and the version is the single
    publish's, here with --packages-only (big files are blobs all the same)."""
    max_file = 1_000_000
    big = [random.Random(i).randint(max_file, 3 * max_file) for i in range(8)]  # about 16 MB
    files = big_and_small_files(300, seed=4, small=(1_000, 20_000), big=big)
    out = write_files(tmp_path / "out", files)
    options: dict[str, Any] = {
        "packages_only": True,
        "package_size": "4MB",
        "package_max_file": max_file,
    }
    single = f"file://{tmp_path / 'single'}"
    api.publish(out, store=single, to=URI, **options, env=env)
    url = f"file://{tmp_path / 'store'}"
    marker = tmp_path / "killed"
    before = set(client.run(os.getpid).values())
    # Only big files are blobs (--packages-only): the first blob is a blob task uploading.
    plugin = KillOnce(str(marker), str(tmp_path / "store" / "blobs"), task="-blobs-")
    client.register_plugin(plugin)
    try:
        result = dist.publish([out], URI, client, store=url, **options)
    finally:
        client.unregister_worker_plugin(plugin.name)  # type: ignore[no-untyped-call]
    killed = int(marker.read_text())
    assert killed in before
    assert result.commit.created and result.commit.files == len(files)
    assert result.tasks > result.commit.packages  # big files had tasks of their own
    assert_same_version(single, url, files)
    assert_big_files_are_blobs(url, files, max_file)
    root, _ = stored_version(url)
    store = open_store(url)
    for package in root["packages"]:  # every package referenced is whole and exact
        data = run_sync(store.get(package["key"]))
        assert hashlib.sha256(data).hexdigest() == package["sha256"]
    api.pull(URI, tmp_path / "dest", store=url, env=env)
    assert read_tree(tmp_path / "dest") == files
    assert_worker_replaced(client, killed)


def test_dask_publish_checks_package_max_file_before_reaching_the_cluster(
    client: Client, tmp_path: Path, env: dict[str, str]
) -> None:
    out = write_outputs(tmp_path / "out", files_of(3, seed=5), [URI])
    url = f"file://{tmp_path / 'store'}"
    # No scheduler listens there: the usage error comes first.
    base = ["publish", str(out), "--store", url, "--dask", f"tcp://127.0.0.1:{free_port()}"]
    for value, needle in (
        ("0", "0 would keep every file out of the packages; use --no-packaging"),
        ("ten", "invalid size 'ten'"),
        ("9999999TB", "larger than any object a store holds"),
    ):
        assert_usage_error(run_cli([*base, f"--package-max-file={value}"], env), needle)
    with pytest.raises(InvalidArgument, match="0 would keep every file"):
        dist.publish([out], URI, client, store=url, package_max_file=0)
    assert not (tmp_path / "store").exists()
