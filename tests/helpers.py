"""Helpers the tests share: store cases on every kind, outputs trees, the CLI, mounts."""

from __future__ import annotations

import contextlib
import json
import struct
import subprocess
import sys
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from dspkg import zipformat as zf
from dspkg.bench.servers import LocalServer, S3Credentials
from dspkg.bench.servers import free_port as free_port  # noqa: PLC0414 (re-exported for tests)
from dspkg.cache import Cache
from dspkg.materialize import LinkMode, MissingObject, TreeBuilder, TreePlan
from dspkg.store import Store, open_store
from dspkg.zipreader import LocalHeader, parse_local_header
from dspkg.zipwriter import PackageWriter, WrittenEntry

BUCKET = "dspkg-test"
# moto checks no signatures; SeaweedFS refuses any other keys than these.
S3_CREDENTIALS = S3Credentials("testing", "testing")
S3_ENV = S3_CREDENTIALS.env()
# Installed by `make azurite` (npm); pinned there.
AZURITE_BIN = Path(__file__).resolve().parents[1] / ".cache/azurite/node_modules/.bin/azurite-blob"
# Every server fixture's type: dspkg.bench.servers starts them for the tests and the bench.
S3Server = LocalServer


def gcs_upload(server: LocalServer, key: str, data: bytes) -> None:
    """Write an object to fake-gcs-server through its JSON API (obstore writes through XML,
    which it does not take: see tests/test_store_gcs.py)."""
    import urllib.request

    url = (
        f"{server.endpoint}/upload/storage/v1/b/{server.bucket}/o"
        f"?uploadType=media&name={quote(key)}"
    )
    request = urllib.request.Request(url, data=data, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()


STORE_KINDS = ["memory", "file", "s3", "seaweedfs", "az"]


def make_store_url(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> tuple[str, dict[str, str]]:
    """A fresh, empty store URL of ``kind`` and the environment it needs."""
    if kind == "memory":
        return f"memory://{uuid.uuid4().hex}", {}
    if kind == "file":
        return f"file://{tmp_path / 'store'}", {}
    fixture = {"s3": "s3_server", "seaweedfs": "seaweedfs_server", "az": "azurite_server"}[kind]
    server: LocalServer = request.getfixturevalue(fixture)
    return server.url(uuid.uuid4().hex), server.env()


@dataclass(frozen=True)
class StoreCase:
    kind: str
    url: str
    env: dict[str, str]

    def open(self) -> Store:
        return open_store(self.url, env=self.env)


LISTED_KEYS = ("datasets/a/versions/v1.json", "datasets/b/versions/v1.json", "x/y")


async def check_listing_and_delete(store: Store) -> None:
    """With LISTED_KEYS in ``store``: folders and keys listed, deletes idempotent."""
    assert await store.list_dirs("datasets/") == ["a", "b"]
    keys = sorted(i.key for i in await store.list("datasets/"))
    assert keys == list(LISTED_KEYS[:2])
    await store.delete("x/y")
    await store.delete("x/y")  # deleting what is gone is fine
    assert await store.head("x/y") is None


def write_outputs(
    root: Path,
    files: dict[str, bytes],
    versions: list[Any] | None = None,
    *,
    per_file: dict[str, list[Any]] | None = None,
) -> Path:
    """Write ``files`` under ``root`` and one metadata line per file naming ``versions``."""
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        entries = (per_file or {}).get(rel, versions)
        if entries is not None:
            lines.append(
                json.dumps({"file": rel, "metadata": {"valohai.dataset-versions": entries}})
            )
    (root / "valohai.metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


def read_tree(root: Path) -> dict[str, bytes]:
    """Every regular file under ``root`` (following links) by relative path."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def run_cli(
    args: list[str], env: dict[str, str], *, cwd: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run ``dspkg`` as a user would: a separate process, only ``env`` in its environment."""
    import os

    full_env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/root")}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "dspkg.cli", *args],
        env=full_env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def assert_usage_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit status 2 (bad usage), one ``dspkg: error:`` line and nothing else on stderr."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return assert_one_line_error(result, *needles, status=2)


def assert_one_line_error(
    result: subprocess.CompletedProcess[str], *needles: str, status: int = 1
) -> str:
    """Exit status 1, one ``dspkg: error:`` line on stderr, no traceback; return the line."""
    assert result.returncode == status, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("dspkg: error: ")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@contextlib.contextmanager
def loop_mount(
    tmp_path: Path, fstype: str, *, size_mb: int, mkfs_options: tuple[str, ...] = ()
) -> Iterator[Path]:
    """A small file system of ``fstype`` (xfs or tmpfs) mounted under ``tmp_path``.

    Needs root and loop devices, as on the CI machine; elsewhere the test is skipped.
    The image is a sparse file: it takes the disk space its contents take.
    """
    import shutil

    mount = tmp_path / f"mnt-{fstype}"
    mount.mkdir()
    if fstype == "tmpfs":
        command = ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(mount)]
    else:
        if shutil.which(f"mkfs.{fstype}") is None:
            pytest.skip(f"mkfs.{fstype} is not installed (make test installs it)")
        image = tmp_path / f"{fstype}.img"
        with image.open("wb") as f:
            f.truncate(size_mb << 20)
        made = subprocess.run(
            [f"mkfs.{fstype}", "-q", "-f", *mkfs_options, str(image)],
            capture_output=True,
            check=False,
        )
        if made.returncode != 0:
            pytest.skip(f"mkfs.{fstype} failed: {made.stderr.decode().strip()}")
        command = ["mount", "-o", "loop", str(image), str(mount)]
    mounted = subprocess.run(command, capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a {fstype} file system here: {mounted.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)


def build_package(files: Iterable[tuple[str, bytes]]) -> tuple[bytes, list[WrittenEntry]]:
    """A whole package in memory from ``(name, data)`` pairs (sorted here)."""
    writer = PackageWriter()
    out = bytearray()
    for name, data in sorted(files):
        out += writer.add(name, len(data), zlib.crc32(data))
        out += data
    entries = writer.entries
    out += writer.finish()
    return bytes(out), entries


def materialize(plan: TreePlan, cache: Cache, dest: Path, mode: LinkMode) -> LinkMode:
    """Build the whole tree in DEST from cached objects; return the link mode used."""
    builder = TreeBuilder(cache, dest, mode)
    builder.begin(plan)
    try:
        missing = builder.link(plan.files)
        if missing:
            raise MissingObject(missing[0])
    except BaseException:
        builder.abort()
        raise
    builder.commit()
    return builder.mode


def package_keys(case: StoreCase, dataset: str, version: str) -> list[str]:
    """The keys of a published version's packages, as its manifest names them."""
    import asyncio

    from dspkg.layout import manifest_key

    raw = asyncio.run(case.open().get(manifest_key(dataset, version)))
    return [p["key"] for p in json.loads(raw)["packages"]]


def read_entry(
    read_range: Callable[[int, int], bytes], header_offset: int, *, obj: str = "package"
) -> tuple[LocalHeader, bytes]:
    """One entry's header and data read from its local header offset alone (no central
    directory): the random access the format promises."""
    head = read_range(header_offset, header_offset + zf.LOCAL.size)
    nlen, xlen = struct.unpack_from("<HH", head, 26)
    full = head + read_range(
        header_offset + zf.LOCAL.size, header_offset + zf.LOCAL.size + nlen + xlen
    )
    parsed = parse_local_header(full, header_offset, obj=obj)
    assert parsed is not None, "truncated local header"
    header, _ = parsed
    return header, read_range(header.data_offset, header.data_offset + header.size)


def stored_record(case: StoreCase, dataset: str, version: str, path: str) -> dict[str, Any]:
    """A file's record in the stored manifest (v1 or v2), with its package's key."""
    import asyncio

    from dspkg.catalog import Catalog
    from dspkg.names import VersionUri

    manifest = asyncio.run(Catalog(case.open()).read_manifest(VersionUri(dataset, version)))
    entry = next(f for f in manifest.files if f.path == path)
    key = manifest.packages[entry.package].key if entry.package is not None else None
    return {"offset": entry.offset, "size": entry.size, "sha256": entry.sha256, "package_key": key}
