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
from dspkg.layout import manifest_key
from dspkg.names import VersionUri
from dspkg.store import open_store
from tests.helpers import read_tree, run_cli, write_outputs

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
    one, one_files = stored_version(single)
    two, two_files = stored_version(on_dask)
    # The same file records, in the same shards: byte for byte.
    assert one_files == two_files and len(one_files) == len(files)
    assert one["digest"] == two["digest"] and one["shards"] == two["shards"]

    def without_attempt(package: dict[str, Any]) -> dict[str, Any]:
        parts = package["key"].split("/")
        return {**package, "key": "/".join(parts[:3] + parts[4:])}

    # The same packages (names, sizes, SHA-256, entries); keys differ in the attempt only.
    assert [without_attempt(p) for p in one["packages"]] == [
        without_attempt(p) for p in two["packages"]
    ]
    api.pull(URI, tmp_path / "dest", store=on_dask, env=env)
    assert read_tree(tmp_path / "dest") == files


class KillOnce(WorkerPlugin):
    """Kills its worker (SIGKILL) the first time any worker runs a dspkg task, once a
    package upload has begun in the store: a worker lost mid-task."""

    def __init__(self, marker: str, watch: str) -> None:
        self.marker = marker
        self.watch = watch

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        if finish != "executing" or not str(key).startswith("dspkg-"):
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
    out = tmp_path / "out"
    for rel, data in files.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
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
    # The nanny restarts the worker it lost.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(client.scheduler_info()["workers"]) < 2:
        time.sleep(0.1)
    now = set(client.run(os.getpid).values())
    assert len(now) == 2 and killed not in now
