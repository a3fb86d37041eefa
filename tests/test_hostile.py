"""Hostile packages and manifests in the store: the pull fails with one line or serves
exactly the published bytes, and nothing is written outside DEST."""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from dspkg import api
from dspkg import zipformat as zf
from dspkg.catalog import Catalog
from dspkg.errors import DspkgError
from dspkg.layout import manifest_key
from dspkg.names import VersionUri
from tests.helpers import (
    StoreCase,
    assert_one_line_error,
    package_keys,
    read_tree,
    run_cli,
    write_outputs,
)

URI = "dataset://hostile/v1"
# Names of 16 bytes, so a hostile name of the same length keeps every offset.
FILES = {f"dir/file{i:04d}.bin": bytes([65 + i % 26]) * (100 + i) for i in range(30)}
TARGET = "dir/file0007.bin"


def snapshot(root: Path, skip: set[str]) -> set[str]:
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if not any(p.relative_to(root).as_posix().startswith(s) for s in skip)
    }


def publish(case: StoreCase, tmp_path: Path, *, packages_only: bool) -> dict[str, str]:
    env = {
        **case.env,
        "DSPKG_STORE": case.url,
        "DSPKG_CACHE": str(tmp_path / "cache"),
    }
    write_outputs(tmp_path / "out", FILES, [{"uri": URI, "packaging": True}])
    args = ["publish", str(tmp_path / "out"), "--packaging"]
    if packages_only:
        args.append("--packages-only")
    result = run_cli(args, env)
    assert result.returncode == 0, result.stderr
    return env


def tamper(case: StoreCase, key: str, change: Callable[[bytes], bytes]) -> None:
    store = case.open()

    async def go() -> None:
        data = await store.get(key)
        await store.put(key, change(data))

    asyncio.run(go())


def as_v1(case: StoreCase, dataset: str, version: str) -> None:
    """Store the version in the v1 form (one JSON document), as dspkg 0.1 wrote it."""
    store = case.open()

    async def go() -> None:
        manifest = await Catalog(store).read_manifest(VersionUri(dataset, version))
        await store.put(manifest_key(dataset, version), manifest.to_json())

    asyncio.run(go())


def rename_entry(new_name: str) -> Callable[[bytes], bytes]:
    old = TARGET.encode()
    new = new_name.encode()
    assert len(new) == len(old)
    return lambda data: data.replace(old, new)


def flip_byte(data: bytes) -> bytes:
    at = data.index(TARGET.encode()) + len(TARGET) + 10
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


def symlink_mode(data: bytes) -> bytes:
    at = data.index(struct.pack("<I", zf.CENTRAL_SIG))
    patched = bytearray(data)
    while at < len(data) and struct.unpack_from("<I", data, at)[0] == zf.CENTRAL_SIG:
        nlen, xlen, clen = struct.unpack_from("<HHH", data, at + 28)
        if data[at + 46 : at + 46 + nlen] == TARGET.encode():
            struct.pack_into("<I", patched, at + 38, (0o120777 << 16) & 0xFFFFFFFF)
        at += 46 + nlen + xlen + clen
    return bytes(patched)


def truncate(data: bytes) -> bytes:
    return data[: len(data) // 2]


TAMPERING = {
    "parent-escape": rename_entry("../escape001.bin"),
    "absolute": rename_entry("/etc/passwd0.bin"),
    "backslash": rename_entry("dir\\file0007.bi"[:15] + "n"),
    "symlink": symlink_mode,
    "flipped-bytes": flip_byte,
    "truncated": truncate,
}


@pytest.mark.parametrize("kind", sorted(TAMPERING))
def test_hostile_package_with_blobs_serves_the_published_bytes(
    durable_store: StoreCase, tmp_path: Path, kind: str
) -> None:
    env = publish(durable_store, tmp_path, packages_only=False)
    tamper(durable_store, package_keys(durable_store, "hostile", "v1")[0], TAMPERING[kind])
    before = snapshot(tmp_path, {"cache", "dest", "store"})
    pulled = run_cli(["pull", URI, str(tmp_path / "dest"), "--json"], env)
    assert pulled.returncode == 0, pulled.stderr
    assert "hostile.v1.vhpkgzip" in pulled.stderr  # the warning names the package
    assert read_tree(tmp_path / "dest") == FILES
    assert snapshot(tmp_path, {"cache", "dest", "store"}) == before
    assert not (tmp_path / "escape001.bin").exists()


@pytest.mark.parametrize("kind", sorted(TAMPERING))
def test_hostile_package_without_blobs_fails_with_one_line(
    durable_store: StoreCase, tmp_path: Path, kind: str
) -> None:
    env = publish(durable_store, tmp_path, packages_only=True)
    tamper(durable_store, package_keys(durable_store, "hostile", "v1")[0], TAMPERING[kind])
    before = snapshot(tmp_path, {"cache", "store"})
    dest = tmp_path / "dest"
    failed = run_cli(["pull", URI, str(dest)], env)
    assert_one_line_error(failed, "hostile.v1.vhpkgzip")
    # Nothing appeared outside DEST, and DEST holds no file.
    assert snapshot(tmp_path, {"cache", "store", "dest"}) == before - {"dest"}
    assert not dest.exists() or not any(p.is_file() for p in dest.rglob("*"))
    # The cache never holds a file that fails its hash.
    cached = [p for p in (tmp_path / "cache" / "objects").rglob("*") if p.is_file()]
    import hashlib

    for path in cached:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert digest == path.parent.name + path.name


@pytest.mark.parametrize("packages_only", [False, True])
def test_package_missing_from_the_store(
    durable_store: StoreCase, tmp_path: Path, packages_only: bool
) -> None:
    env = publish(durable_store, tmp_path, packages_only=packages_only)
    asyncio.run(durable_store.open().delete(package_keys(durable_store, "hostile", "v1")[0]))
    dest = tmp_path / "dest"
    pulled = run_cli(["pull", URI, str(dest), "--json"], env)
    if packages_only:
        assert_one_line_error(pulled, "hostile.v1.vhpkgzip is missing from the store")
        assert not dest.exists() or not any(p.is_file() for p in dest.rglob("*"))
    else:
        assert pulled.returncode == 0, pulled.stderr
        assert "hostile.v1.vhpkgzip is missing from the store" in pulled.stderr
        assert read_tree(dest) == FILES
        assert json.loads(pulled.stdout)["requests"] > len(FILES)  # one by one


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda d: d["files"][0].update(path="../../etc/x"), "refusing path"),
        (lambda d: d["files"][0].update(path="/etc/x"), "refusing path"),
        (lambda d: d["files"][1].update(path=d["files"][0]["path"]), "out of order or duplicated"),
        (lambda d: d["files"][0].update(sha256="zz"), "malformed sha256"),
        (lambda d: d["files"][0].update(size=-1), "malformed size"),
        (lambda d: d["files"][0].update(offset=d["files"][1]["offset"]), "overlaps"),
        (lambda d: d["files"][0].update(package=7), "does not exist"),
        (lambda d: d["packages"][0].update(key="../../x.vhpkgzip"), "not a package path"),
        (lambda d: d.update(schema_version=99), "schema_version"),
        (lambda d: d.update(version="other"), "describes"),
    ],
)
def test_hostile_v1_manifest_is_refused(
    durable_store: StoreCase,
    tmp_path: Path,
    change: Callable[[dict[str, object]], None],
    needle: str,
) -> None:
    env = publish(durable_store, tmp_path, packages_only=False)
    as_v1(durable_store, "hostile", "v1")
    key = manifest_key("hostile", "v1")

    def edit(data: bytes) -> bytes:
        doc = json.loads(data)
        change(doc)
        return json.dumps(doc).encode()

    tamper(durable_store, key, edit)
    failed = run_cli(["pull", URI, str(tmp_path / "dest")], env)
    assert_one_line_error(failed, needle)
    assert not (tmp_path / "dest").exists()


def test_v1_manifest_path_colliding_by_case_is_refused(
    durable_store: StoreCase, tmp_path: Path
) -> None:
    env = publish(durable_store, tmp_path, packages_only=False)
    as_v1(durable_store, "hostile", "v1")

    def edit(data: bytes) -> bytes:
        doc = json.loads(data)
        doc["files"][1]["path"] = doc["files"][0]["path"].upper()
        doc["files"].sort(key=lambda f: f["path"])
        return json.dumps(doc).encode()

    tamper(durable_store, manifest_key("hostile", "v1"), edit)
    assert_one_line_error(run_cli(["pull", URI, str(tmp_path / "dest")], env), "collides")


def test_publish_refuses_case_colliding_outputs(tmp_path: Path, env: dict[str, str]) -> None:
    out = write_outputs(tmp_path / "out", {"a/X.txt": b"1", "a/x.txt": b"2"}, [URI])
    if len(list((out / "a").iterdir())) < 2:
        pytest.skip("this file system folds case")
    with pytest.raises(DspkgError, match="collides"):
        api.publish(out, store=f"file://{tmp_path / 'store'}", env=env)
