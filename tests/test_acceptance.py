"""End to end, as users run it: publish outputs, inspect, pull, on a local store and on S3."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import random
import shutil
import subprocess
import uuid
import zipfile
from pathlib import Path

import pytest

from dspkg import api
from dspkg.bench.servers import LocalServer
from dspkg.layout import blob_key, manifest_key
from dspkg.manifest import content_digest
from dspkg.shards import parse_stored
from dspkg.sizes import format_size
from tests.helpers import (
    StoreCase,
    assert_one_line_error,
    make_store_url,
    package_keys,
    read_tree,
    run_cli,
    write_outputs,
)

URI = "dataset://imagenet-subset/train-v1"
PACKAGE = "imagenet-subset.train-v1.vhpkgzip"


def image_files(seed: int = 7, per_class: int = 700) -> dict[str, bytes]:
    rng = random.Random(seed)
    return {
        f"{cls}/{cls}_{i:04d}.jpg": rng.randbytes(rng.randint(0, 20_000))
        for cls in ("cat", "dog", "bird")
        for i in range(per_class)
    }


@pytest.fixture(params=["file", "s3", "seaweedfs"])
def durable_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreCase:
    """conftest's stores plus SeaweedFS: these end-to-end runs also meet an S3 server that
    checks signatures and keeps connections alive (moto stays the default elsewhere)."""
    url, env = make_store_url(request.param, tmp_path, request)
    return StoreCase(request.param, url, env)


def cli_env(case: StoreCase, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        **case.env,
        "DSPKG_STORE": case.url,
        "DSPKG_CACHE": str(tmp_path / "cache"),
        **extra,
    }


def store_bytes(case: StoreCase, key: str) -> bytes:
    return asyncio.run(case.open().get(key))


def test_image_classification_case(durable_store: StoreCase, tmp_path: Path) -> None:
    files = image_files()
    outputs = write_outputs(tmp_path / "outputs", files, [{"uri": URI, "packaging": True}])
    env = cli_env(durable_store, tmp_path, VH_ENABLE_DATASET_VERSION_PACKAGING="1")

    published = run_cli(["publish", str(outputs)], env)
    assert published.returncode == 0, published.stderr
    # The reference product's three lines per package.
    manifest = json.loads(store_bytes(durable_store, manifest_key("imagenet-subset", "train-v1")))
    ((key, size),) = [(p["key"], p["size"]) for p in manifest["packages"]]
    where = (
        f"local bucket {tmp_path / 'store'}"
        if durable_store.kind == "file"
        else f"S3 bucket {durable_store.url.removeprefix('s3://')}"
    )
    lines = published.stdout.splitlines()
    at = lines.index(f"(dataset version package 1/1) uploading {PACKAGE} ({format_size(size)})")
    assert lines[at + 1 : at + 3] == [
        f"(dataset version package 1/1) uploading to {where}",
        f"(dataset version package 1/1) upload complete ({key})",
    ]

    # The package sits where DESIGN.md says, and stock tools accept it.
    package = tmp_path / PACKAGE
    package.write_bytes(
        store_bytes(durable_store, package_keys(durable_store, "imagenet-subset", "train-v1")[0])
    )
    if shutil.which("unzip"):
        subprocess.run(["unzip", "-tq", str(package)], check=True, capture_output=True)
    with zipfile.ZipFile(package) as archive:
        infos = archive.infolist()
        assert len(infos) == 2100
        assert all(i.compress_type == zipfile.ZIP_STORED for i in infos)
        assert {i.filename: archive.read(i) for i in infos} == files

    shown = run_cli(["show", URI, "--json"], env)
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert doc["files"] == 2100 and doc["bytes"] == sum(map(len, files.values()))
    assert [p["name"] for p in doc["packages"]] == [PACKAGE]
    assert doc["packages"][0]["entries"] == 2100
    assert "latest" in doc["aliases"]

    dest = tmp_path / "inputs" / "training-images"
    pulled = run_cli(["pull", URI, str(dest), "--json"], env)
    assert pulled.returncode == 0, pulled.stderr
    figures = json.loads(pulled.stdout)
    assert figures["files"] == 2100
    assert figures["requests"] < 20  # a few ranged GETs, not 2,100 requests
    assert read_tree(dest) == files

    # A second pull, through the alias, is served from the cache: only the alias is read.
    again = run_cli(
        ["pull", "dataset://imagenet-subset/latest", str(tmp_path / "again"), "--json"], env
    )
    again_figures = json.loads(again.stdout)
    assert again_figures["files_fetched"] == 0
    assert again_figures["bytes_downloaded"] < 200
    assert read_tree(tmp_path / "again") == files


def test_child_version_from_parent(
    durable_store: StoreCase, tmp_path: Path, env: dict[str, str]
) -> None:
    files = image_files(per_class=100)
    store = durable_store.url
    full_env = {**env, **durable_store.env}
    write_outputs(tmp_path / "v1", files, [{"uri": URI, "packaging": True}])
    api.publish(tmp_path / "v1", store=store, packaging=True, env=full_env)

    rng = random.Random(3)
    new = {f"fish/fish_{i:03d}.jpg": rng.randbytes(rng.randint(1, 5000)) for i in range(50)}
    excluded = sorted(files)[:10]
    child = "dataset://imagenet-subset/train-v2"
    entry = {"uri": child, "from": URI, "exclude": excluded, "packaging": True}
    write_outputs(tmp_path / "v2", new, [entry])
    result = api.publish(tmp_path / "v2", store=store, packaging=True, env=full_env)
    created = result.versions[0]
    assert created.files == 300 - 10 + 50
    assert created.parent == URI
    # Only the new files were packaged and uploaded; the parent's package is referenced.
    assert [p.entries for p in created.packages if p.uploaded] == [50]

    dest = tmp_path / "child"
    pulled = api.pull(child, dest, store=store, env=full_env)
    expected = {k: v for k, v in files.items() if k not in excluded} | new
    assert read_tree(dest) == expected
    assert pulled.files == 340


def test_acceptance_child_pulls_2140_files(durable_store: StoreCase, tmp_path: Path) -> None:
    files = image_files()
    env = cli_env(durable_store, tmp_path, VH_ENABLE_DATASET_VERSION_PACKAGING="1")
    write_outputs(tmp_path / "v1", files, [{"uri": URI, "packaging": True}])
    assert run_cli(["publish", str(tmp_path / "v1")], env).returncode == 0
    parent = run_cli(["pull", URI, str(tmp_path / "parent")], env)
    assert parent.returncode == 0, parent.stderr
    new = {f"new/n_{i:02d}.jpg": bytes([i]) * (i * 100 + 1) for i in range(50)}
    excluded = sorted(files)[::210][:10]
    child = "dataset://imagenet-subset/train-v2"
    write_outputs(
        tmp_path / "v2", new, [{"uri": child, "from": URI, "exclude": excluded, "packaging": True}]
    )
    assert run_cli(["publish", str(tmp_path / "v2")], env).returncode == 0
    pulled = run_cli(["pull", child, str(tmp_path / "dest"), "--json"], env)
    assert pulled.returncode == 0, pulled.stderr
    tree = read_tree(tmp_path / "dest")
    assert len(tree) == 2140
    assert tree == {k: v for k, v in files.items() if k not in excluded} | new
    # Pulled after its parent, the child downloads little more than its new files.
    assert json.loads(pulled.stdout)["files_fetched"] == 50


def test_republishing_identical_content_is_a_no_op(
    durable_store: StoreCase, tmp_path: Path
) -> None:
    env = cli_env(durable_store, tmp_path)
    write_outputs(tmp_path / "out", {"a.txt": b"A", "b/c.txt": b"C"}, [URI])
    assert run_cli(["publish", str(tmp_path / "out")], env).returncode == 0
    again = run_cli(["publish", str(tmp_path / "out"), "--json"], env)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["versions"][0]["created"] is False


def test_republishing_changed_content_fails_cleanly(
    durable_store: StoreCase, tmp_path: Path
) -> None:
    env = cli_env(durable_store, tmp_path)
    write_outputs(tmp_path / "out", {"a.txt": b"A", "b/c.txt": b"C"}, [URI])
    assert run_cli(["publish", str(tmp_path / "out")], env).returncode == 0
    before = store_bytes(durable_store, manifest_key("imagenet-subset", "train-v1"))
    (tmp_path / "out" / "a.txt").write_bytes(b"changed")
    failed = run_cli(["publish", str(tmp_path / "out")], env)
    assert_one_line_error(failed, URI, "already exists with different content")
    assert store_bytes(durable_store, manifest_key("imagenet-subset", "train-v1")) == before


def test_broken_second_metadata_line_creates_nothing(
    durable_store: StoreCase, tmp_path: Path
) -> None:
    env = cli_env(durable_store, tmp_path, VH_ENABLE_DATASET_VERSION_PACKAGING="1")
    out = write_outputs(tmp_path / "out", {"a.txt": b"A", "b.txt": b"B", "c.txt": b"C"}, [URI])
    lines = (out / "valohai.metadata.jsonl").read_text().splitlines()
    lines[1] = lines[1][:-5]  # cut the second line short
    (out / "valohai.metadata.jsonl").write_text("\n".join(lines) + "\n")
    failed = run_cli(["publish", str(out)], env)
    assert_one_line_error(failed, "valohai.metadata.jsonl, line 2", "not valid JSON")
    assert asyncio.run(durable_store.open().list("")) == []


@pytest.mark.parametrize(
    ("files", "metadata", "needle"),
    [
        ({"a.txt": b"A"}, {"file": "missing.txt", "metadata": {}}, "does not exist"),
        ({"a.txt": b"A"}, {"file": "../escape.txt", "metadata": {}}, "contains '..'"),
        (
            {"a.txt": b"A"},
            {"file": "a.txt", "metadata": {"valohai.dataset-versions": ["dataset://bad name/v"]}},
            "invalid dataset name",
        ),
        (
            {"a.txt": b"A"},
            {"file": "a.txt", "metadata": {"valohai.dataset-versions": ["s3://x/y"]}},
            "expected dataset://",
        ),
    ],
)
def test_invalid_metadata_names_file_and_line(
    durable_store: StoreCase, tmp_path: Path, files: dict[str, bytes], metadata: object, needle: str
) -> None:
    env = cli_env(durable_store, tmp_path)
    out = write_outputs(tmp_path / "out", files, [URI])
    good = (out / "valohai.metadata.jsonl").read_text()
    (out / "valohai.metadata.jsonl").write_text(good + json.dumps(metadata) + "\n")
    failed = run_cli(["publish", str(out)], env)
    assert_one_line_error(failed, "valohai.metadata.jsonl, line 2", needle)
    assert asyncio.run(durable_store.open().list("")) == []


def test_packaging_gate_off_warns_and_creates_plain_version(
    durable_store: StoreCase, tmp_path: Path
) -> None:
    env = cli_env(durable_store, tmp_path)
    write_outputs(tmp_path / "out", {"a.txt": b"A"}, [{"uri": URI, "packaging": True}])
    published = run_cli(["publish", str(tmp_path / "out"), "--json"], env)
    assert published.returncode == 0
    assert "VH_ENABLE_DATASET_VERSION_PACKAGING" in published.stderr
    assert json.loads(published.stdout)["versions"][0]["packages"] == []
    for value in ("1", "yes", "TRUE", "True"):
        uri = f"dataset://gated/v-{value}"
        write_outputs(tmp_path / value, {"a.txt": b"A"}, [{"uri": uri, "packaging": True}])
        gated = run_cli(
            ["publish", str(tmp_path / value), "--json"],
            {**env, "VH_ENABLE_DATASET_VERSION_PACKAGING": value},
        )
        assert len(json.loads(gated.stdout)["versions"][0]["packages"]) == 1


def test_unpackaged_version_pulls_blob_by_blob(durable_store: StoreCase, tmp_path: Path) -> None:
    env = cli_env(durable_store, tmp_path)
    files = {f"d/{i}.bin": bytes([i]) * i for i in range(40)}
    write_outputs(tmp_path / "out", files, [URI])
    assert run_cli(["publish", str(tmp_path / "out")], env).returncode == 0
    pulled = run_cli(["pull", URI, str(tmp_path / "dest"), "--json"], env)
    assert pulled.returncode == 0, pulled.stderr
    assert read_tree(tmp_path / "dest") == files
    assert json.loads(pulled.stdout)["files_fetched"] == 40


def test_split_packages(durable_store: StoreCase, tmp_path: Path, env: dict[str, str]) -> None:
    files = {f"f/{i:03d}": bytes([i]) * 1000 for i in range(100)}
    write_outputs(tmp_path / "out", files, [{"uri": URI, "packaging": True}])
    full_env = {**env, **durable_store.env}
    result = api.publish(
        tmp_path / "out", store=durable_store.url, packaging=True, package_size="20KB", env=full_env
    )
    names = [p.name for p in result.versions[0].packages]
    assert len(names) > 4
    assert names[0] == f"imagenet-subset.train-v1.1-of-{len(names)}.vhpkgzip"
    assert all(p.size <= 20_000 for p in result.versions[0].packages)
    api.pull(URI, tmp_path / "dest", store=durable_store.url, env=full_env)
    assert read_tree(tmp_path / "dest") == files


def test_pull_needs_an_empty_destination(durable_store: StoreCase, tmp_path: Path) -> None:
    env = cli_env(durable_store, tmp_path)
    write_outputs(tmp_path / "out", {"a.txt": b"A"}, [URI])
    run_cli(["publish", str(tmp_path / "out")], env)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "other").write_text("x")
    assert_one_line_error(run_cli(["pull", URI, str(dest)], env), "not empty")
    assert_one_line_error(
        run_cli(["pull", "dataset://imagenet-subset/nope", str(tmp_path / "d2")], env), "not found"
    )


def test_manifest_is_a_compact_root_and_a_shard_with_offsets(
    durable_store: StoreCase, tmp_path: Path
) -> None:
    env = cli_env(durable_store, tmp_path, VH_ENABLE_DATASET_VERSION_PACKAGING="1")
    files = {"a.txt": b"alpha", "b/c.txt": b"gamma"}
    write_outputs(tmp_path / "out", files, [{"uri": URI, "packaging": True}])
    assert run_cli(["publish", str(tmp_path / "out")], env).returncode == 0
    raw = store_bytes(durable_store, manifest_key("imagenet-subset", "train-v1"))
    doc = json.loads(raw)
    assert list(doc) == sorted(doc)
    assert doc["schema_version"] == 2 and doc["from"] is None
    assert doc["files"] == 2 and doc["bytes"] == 10 and doc["packages"][0]["files"] == 2
    [shard] = doc["shards"]
    assert (shard["first"], shard["last"], shard["count"]) == ("a.txt", "b/c.txt", 2)
    stored = store_bytes(durable_store, shard["key"])
    assert hashlib.sha256(stored).hexdigest() == shard["sha256"] and len(stored) == shard["size"]
    assert shard["key"] == f"datasets/imagenet-subset/shards/{shard['sha256']}.json.gz"
    columns = json.loads(gzip.decompress(stored))
    assert columns["path"] == sorted(files) and columns["package"] == [0, 0]
    package = store_bytes(
        durable_store, package_keys(durable_store, "imagenet-subset", "train-v1")[0]
    )
    for path, size, sha, start in zip(
        columns["path"], columns["size"], columns["sha256"], columns["offset"], strict=True
    ):
        assert package[start : start + size] == files[path]
        assert store_bytes(durable_store, blob_key(sha)) == files[path]
    root = parse_stored(raw, obj="m")
    assert root.digest == content_digest(
        (p, len(files[p]), hashlib.sha256(files[p]).hexdigest()) for p in sorted(files)
    )


def test_publish_and_pull_on_azure(azurite_server: LocalServer, tmp_path: Path) -> None:
    """End to end on Azure Blob (Azurite), as a user runs it: packages only, several of
    them, one above the 8 MiB part size (a block-list upload), then a pull from them."""
    files = image_files(per_class=100)
    files["weights/model.bin"] = random.Random(3).randbytes(9 << 20)
    case = StoreCase("az", azurite_server.url(uuid.uuid4().hex), azurite_server.env())
    env = cli_env(case, tmp_path, VH_ENABLE_DATASET_VERSION_PACKAGING="1")
    outputs = write_outputs(tmp_path / "outputs", files, [{"uri": URI, "packaging": True}])

    published = run_cli(["publish", str(outputs), "--packages-only", "--package-size", "2MB"], env)
    assert published.returncode == 0, published.stderr
    listed = asyncio.run(case.open().list(""))
    keys = [i.key for i in listed]
    packages = [i.size for i in listed if i.key.endswith(".vhpkgzip")]
    assert len(packages) >= 3, keys
    assert max(packages) > 9 << 20  # the model's package went up in parts
    assert not [k for k in keys if k.startswith("blobs/")]

    pulled = run_cli(["pull", URI, str(tmp_path / "dest"), "--json"], env)
    assert pulled.returncode == 0, pulled.stderr
    doc = json.loads(pulled.stdout)
    assert doc["files"] == doc["files_fetched"] == len(files)
    assert doc["bytes_downloaded"] >= sum(map(len, files.values()))
    assert read_tree(tmp_path / "dest") == files
