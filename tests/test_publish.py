"""Publishing: reuse, packages-only versions, and bad input that must leave no version."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dspkg import api
from dspkg.bench.wan import WanConfig, WanEmulator
from dspkg.cache import Cache
from tests.helpers import (
    BUCKET,
    S3Server,
    StoreCase,
    assert_one_line_error,
    loop_mount,
    read_tree,
    run_cli,
    write_outputs,
)

URI = "dataset://pub/v1"


def published_keys(case: StoreCase) -> list[str]:
    return sorted(i.key for i in asyncio.run(case.open().list("")))


def test_identical_package_is_not_uploaded_again(
    durable_store: StoreCase, tmp_path: Path, env: dict[str, str]
) -> None:
    files = {f"img/{i:03d}.jpg": bytes([i]) * (500 + i) for i in range(60)}
    full_env = {**env, **durable_store.env}
    write_outputs(tmp_path / "a", files, [{"uri": URI, "packaging": True}])
    first = api.publish(tmp_path / "a", store=durable_store.url, packaging=True, env=full_env)
    assert first.versions[0].packages[0].uploaded
    write_outputs(tmp_path / "b", files, [{"uri": "dataset://pub/v2", "packaging": True}])
    second = api.publish(tmp_path / "b", store=durable_store.url, packaging=True, env=full_env)
    (package,) = second.versions[0].packages
    assert not package.uploaded
    assert package.key == first.versions[0].packages[0].key
    # Only the manifest, aliases and index: no package, and no blob (the store had them).
    assert second.bytes_uploaded < first.bytes_uploaded / 4
    api.pull("dataset://pub/v2", tmp_path / "dest", store=durable_store.url, env=full_env)
    assert read_tree(tmp_path / "dest") == files
    # One changed byte: a new package.
    files["img/000.jpg"] = b"changed"
    write_outputs(tmp_path / "c", files, [{"uri": "dataset://pub/v3", "packaging": True}])
    third = api.publish(tmp_path / "c", store=durable_store.url, packaging=True, env=full_env)
    assert third.versions[0].packages[0].uploaded


def test_packages_only_version_pulls_and_shows(
    durable_store: StoreCase, tmp_path: Path, env: dict[str, str]
) -> None:
    files = {f"d/{i:03d}.bin": os.urandom(300) for i in range(50)}
    full_env = {**env, **durable_store.env}
    write_outputs(tmp_path / "out", files, [URI])
    result = api.publish(
        tmp_path / "out", store=durable_store.url, packages_only=True, env=full_env
    )
    assert not [k for k in published_keys(durable_store) if k.startswith("blobs/")]
    assert result.versions[0].packages[0].entries == 50
    details = api.show(URI, store=durable_store.url, env=full_env)
    assert details.to_json()["blobs"] is False
    # A few neighbouring files missing from the cache are read from the package by range.
    api.pull(URI, tmp_path / "one", store=durable_store.url, env=full_env)
    cache = Cache(Path(env["DSPKG_CACHE"]))
    gone = sorted(files)[20:28]
    for path in gone:
        Path(cache.object_path(hashlib.sha256(files[path]).hexdigest())).unlink()
    pulled = api.pull(URI, tmp_path / "two", store=durable_store.url, env=full_env)
    assert pulled.files_fetched == len(gone)
    # One range over those eight files: their bytes and local headers, no more.
    assert pulled.bytes_downloaded <= sum(300 + 30 + len(p) for p in gone)
    assert read_tree(tmp_path / "two") == files


def test_child_reuploads_nothing_its_parent_stored(
    durable_store: StoreCase, tmp_path: Path, env: dict[str, str]
) -> None:
    files = {f"x/{i}.bin": os.urandom(2000) for i in range(40)}
    full_env = {**env, **durable_store.env}
    write_outputs(tmp_path / "p", files, [URI])
    api.publish(tmp_path / "p", store=durable_store.url, packaging=True, env=full_env)
    new = {"x/new.bin": os.urandom(2000)}
    child = {"uri": "dataset://pub/v2", "from": URI}
    # The child's outputs include copies of parent files: those blobs exist already.
    write_outputs(tmp_path / "c", {**new, "x/1.bin": files["x/1.bin"]}, [child])
    before = len(published_keys(durable_store))
    result = api.publish(tmp_path / "c", store=durable_store.url, env=full_env)
    new_keys = len(published_keys(durable_store)) - before
    # The new blob, the manifest's root and its one shard; "latest" existed already.
    assert new_keys == 3
    assert result.versions[0].files == 41


# --- bad input: one line, nothing half-published ---------------------------------


def test_file_that_disappears_while_publishing(
    s3_server: S3Server, tmp_path: Path, env: dict[str, str]
) -> None:
    """A slow store holds the publish in validation long enough to delete a file under it."""
    files = {f"f/{i}.bin": os.urandom(1000) for i in range(5)}
    write_outputs(tmp_path / "out", files, [{"uri": URI, "packaging": True}])
    with WanEmulator(("127.0.0.1", s3_server.port), WanConfig(rtt_ms=600, mbit=0)) as wan:
        store = f"s3://{BUCKET}/disappear"
        proc_env = {
            **os.environ,
            **s3_server.env(),
            **env,
            "AWS_ENDPOINT_URL": wan.url,
            "DSPKG_STORE": store,
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "dspkg.cli", "publish", str(tmp_path / "out"), "--packaging"],
            env=proc_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while wan.stats().connections == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        (tmp_path / "out" / "f/3.bin").unlink()  # the first request has only just started
        out, err = proc.communicate(timeout=120)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert_one_line_error(result, "f/3.bin", "disappeared while publishing")
    case = StoreCase("s3", store, s3_server.env())
    assert [k for k in published_keys(case) if not k.startswith("blobs/")] == []


@pytest.fixture
def growing_file(tmp_path: Path) -> Iterator[Path]:
    """A file another process keeps appending to."""
    path = tmp_path / "out" / "z" / "growing.log"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"start\n")
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "f = open(sys.argv[1], 'ab', buffering=0)\n"
            "while True:\n    f.write(b'x'); time.sleep(0.0005)",
            str(path),
        ]
    )
    try:
        yield path
    finally:
        writer.kill()
        writer.wait()


def test_file_that_grows_while_publishing_cleans_up_multipart(
    s3_server: S3Server, tmp_path: Path, env: dict[str, str], growing_file: Path
) -> None:
    # Big files first, so parts of the package are uploaded before the growing file is read.
    files = {f"a/{i}.bin": os.urandom(6 << 20) for i in range(3)}
    write_outputs(tmp_path / "out", files, [{"uri": URI, "packaging": True}])
    with (tmp_path / "out" / "valohai.metadata.jsonl").open("a") as f:
        line = {"file": "z/growing.log", "metadata": {"valohai.dataset-versions": [URI]}}
        f.write(json.dumps(line) + "\n")
    store = f"s3://{BUCKET}/growing"
    result = run_cli(
        ["publish", str(tmp_path / "out"), "--packaging", "--packages-only"],
        {**s3_server.env(), **env, "DSPKG_STORE": store},
    )
    assert_one_line_error(result, "growing.log", "changed size while being published")
    case = StoreCase("s3", store, s3_server.env())
    assert published_keys(case) == []
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    uploads = client.list_multipart_uploads(Bucket=BUCKET, Prefix="growing/").get("Uploads", [])
    assert uploads == []


def test_unreadable_file_is_named_and_nothing_is_uploaded(
    tmp_path: Path, env: dict[str, str]
) -> None:
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to take away root's right to read any file")
    out = write_outputs(tmp_path / "out", {"a.txt": b"A", "secret.txt": b"S"}, [URI])
    (out / "secret.txt").chmod(0o000)
    store = tmp_path / "store"
    # Root without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH obeys file modes like any user.
    result = subprocess.run(
        [
            setpriv,
            "--bounding-set=-dac_override,-dac_read_search",
            "--",
            sys.executable,
            "-m",
            "dspkg.cli",
            "publish",
            str(out),
        ],
        env={**env, "DSPKG_STORE": f"file://{store}"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert_one_line_error(result, "secret.txt", "not readable")
    assert not (store / "datasets").exists()
    assert not (store / "blobs").exists()


def test_full_disk_and_read_only_store(tmp_path: Path, env: dict[str, str]) -> None:
    files = {f"f{i}": os.urandom(400_000) for i in range(5)}
    write_outputs(tmp_path / "out", files, [{"uri": URI, "packaging": True}])
    with loop_mount(tmp_path, "tmpfs", size_mb=1) as mount:
        cli_env = {**env, "DSPKG_STORE": f"file://{mount / 'store'}"}
        full = run_cli(["publish", str(tmp_path / "out"), "--packaging"], cli_env)
        assert_one_line_error(full, "no space left on the store's disk")
        assert not (mount / "store" / "datasets").exists()
        assert not list((mount / "store").rglob("*.vhpkgzip*"))  # no partial package left
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        readonly = run_cli(["publish", str(tmp_path / "out"), "--packaging"], cli_env)
        assert_one_line_error(readonly, "read-only")


def test_store_without_bucket_refuses_writes(s3_server: S3Server, tmp_path: Path) -> None:
    write_outputs(tmp_path / "out", {"a": b"1"}, [URI])
    result = run_cli(
        ["publish", str(tmp_path / "out")],
        {**s3_server.env(), "DSPKG_STORE": "s3://no-such-bucket/x", "DSPKG_CACHE": str(tmp_path)},
    )
    assert_one_line_error(result, "no-such-bucket")


def test_packages_built_in_c_and_in_python_are_the_same_bytes(
    tmp_path: Path, env: dict[str, str]
) -> None:
    """``--packages-only`` lays small files out as package bytes in C where it is built
    (``DSPKG_SPEEDUPS=0`` turns that off): both give the same packages, byte for byte."""
    sizes = [0, 1, 300, 70_000, 9_000] * 30
    files = {f"d{i % 4}/{i:03d}.bin": os.urandom(size) for i, size in enumerate(sizes)}
    files["big/huge.bin"] = os.urandom(33 << 20)  # beyond the readers' batches: streamed
    write_outputs(tmp_path / "out", files, [{"uri": URI, "packaging": True}])
    packages = []
    for speedups in ("1", "0"):
        store = tmp_path / f"store{speedups}"
        result = run_cli(
            ["publish", str(tmp_path / "out"), "--packages-only", "--package-max-file", "64MiB"],
            {**env, "DSPKG_STORE": f"file://{store}", "DSPKG_SPEEDUPS": speedups},
        )
        assert result.returncode == 0, result.stderr
        (package,) = sorted(store.rglob("*.vhpkgzip"))
        packages.append(package.read_bytes())
        # The package's SHA-256, hashed in a thread of its own as its parts went up, is
        # the SHA-256 of its bytes.
        root = json.loads((store / "datasets" / "pub" / "versions" / "v1.json").read_text())
        (recorded,) = root["packages"]
        assert recorded["sha256"] == hashlib.sha256(packages[-1]).hexdigest()
        pulled = run_cli(
            ["pull", URI, str(tmp_path / f"dest{speedups}")],
            {
                **env,
                "DSPKG_STORE": f"file://{store}",
                "DSPKG_CACHE": str(tmp_path / "c" / speedups),
            },
        )
        assert pulled.returncode == 0, pulled.stderr
        assert read_tree(tmp_path / f"dest{speedups}") == files
    assert len(packages[0]) > 33 << 20  # the big file is in the package too
    assert packages[0] == packages[1]
