"""Server time and weight of the pages of a version with a million files.

    python -m dspkg.web.measure [--files 1000000] [--json]

Generates manifests in memory (no file bytes are published: the pages being measured
read only manifests), puts them in a ``memory://`` store and asks the app for pages
directly through ASGI, so the times are the server's own, without a network. Two
versions: ``nested`` (folders of 1,000 files, 100 x 10 of them) and ``flat`` (every file
in one folder, the worst case for paging); the second ``nested-b`` differs by 1% for the
diff. Each warm time is the median of several requests once the manifest is cached.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message

from dspkg.catalog import Catalog
from dspkg.concurrency import run_sync
from dspkg.layout import alias_key, manifest_key, package_key, package_name
from dspkg.manifest import FileEntry, Manifest, PackageInfo
from dspkg.shards import encode_manifest, encode_root
from dspkg.store import Store, open_store
from dspkg.web.app import create_app
from dspkg.web.manifests import ManifestCache

DATASET = "million"
PER_FOLDER = 1000
PER_PACKAGE = 100_000
FILE_SIZE = 10_240


def make_manifest(version: str, files: int, *, flat: bool, changed_every: int = 0) -> Manifest:
    """A packaged manifest of ``files`` files of 10 KB, nested or flat."""
    digest = hashlib.sha256(b"x").hexdigest()
    other = hashlib.sha256(b"y").hexdigest()
    entries = []
    for i in range(files):
        if flat:
            path = f"all/img-{i:07d}.jpg"
        else:
            folder = i // PER_FOLDER
            path = f"shard-{folder // 10:03d}/class-{folder % 10:02d}/img-{i:07d}.jpg"
        sha = other if changed_every and i % changed_every == 0 else digest
        header = 30 + len(path)
        entries.append(
            FileEntry(
                path,
                FILE_SIZE,
                sha,
                i // PER_PACKAGE,
                header + (i % PER_PACKAGE) * (FILE_SIZE + header),
            )
        )
    entries.sort(key=lambda f: f.path)
    count = -(-files // PER_PACKAGE)
    packages = tuple(
        PackageInfo(
            name=(name := package_name(DATASET, version, k, count)),
            key=package_key(DATASET, version, "0" * 16, name),
            size=PER_PACKAGE * (FILE_SIZE + 100) + 1000,
            sha256=digest,
            entries=PER_PACKAGE,
        )
        for k in range(count)
    )
    return Manifest(DATASET, version, tuple(entries), packages, created_at="2026-12-01T12:00:00Z")


async def put_manifest(store: Store, manifest: Manifest) -> int:
    """Store ``manifest`` as dspkg writes it (v2: shards, then the root); its bytes."""
    root, shards = encode_manifest(manifest)
    await Catalog(store).write_shards(shards)
    data = encode_root(root)
    await store.put(manifest_key(manifest.dataset, manifest.version), data)
    return len(data) + sum(len(d) for _, d in shards)


async def asgi_get(app: ASGIApp, url: str) -> tuple[int, bytes]:
    """One GET straight into the app: no socket, no client library."""
    parts = urlsplit(url)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": parts.path,
        "raw_path": parts.path.encode(),
        "query_string": parts.query.encode(),
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    status = 0
    body = bytearray()

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            body.extend(message.get("body", b""))

    await app(scope, receive, send)
    return status, bytes(body)


@dataclass(frozen=True)
class Timing:
    page: str
    url: str
    first_s: float
    warm_s: float
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return {
            "page": self.page,
            "url": self.url,
            "first_s": round(self.first_s, 4),
            "warm_median_s": round(self.warm_s, 4),
            "bytes": self.bytes,
        }


async def _time(app: ASGIApp, page: str, url: str, repeat: int) -> Timing:
    start = time.perf_counter()
    status, body = await asgi_get(app, url)
    first = time.perf_counter() - start
    if status != 200:
        raise RuntimeError(f"{url}: HTTP {status}: {body[:300]!r}")
    warm = []
    for _ in range(repeat):
        start = time.perf_counter()
        await asgi_get(app, url)
        warm.append(time.perf_counter() - start)
    return Timing(page, url, first, statistics.median(warm), len(body))


async def measure(files: int, repeat: int = 5) -> dict[str, Any]:
    store = open_store(f"memory://measure-{files}")
    made = time.perf_counter()
    sizes = {}
    for version, flat, changed in (
        ("nested", False, 0),
        ("flat", True, 0),
        ("nested-b", False, 100),
    ):
        manifest = make_manifest(version, files, flat=flat, changed_every=changed)
        sizes[version] = await put_manifest(store, manifest)
        del manifest
    await store.put(alias_key(DATASET, "latest"), json.dumps({"version": "nested"}).encode())
    generated = time.perf_counter() - made
    app = create_app(store, hosts=None, cache=ManifestCache(max_files=3 * files))
    last_page = -(-files // 200)
    diff_page = max(1, -(-(files // 100) // 200))
    middle = max(files // PER_FOLDER, 1) // 2
    deep = f"shard-{middle // 10:03d}/class-{middle % 10:02d}"
    v = f"/datasets/{DATASET}"
    pages = [
        ("version page (nested)", f"{v}/nested"),
        ("folder page (nested, 1,000 files)", f"{v}/nested/tree/{deep}?page=3"),
        ("version page (flat: root lists 1 folder)", f"{v}/flat"),
        (f"folder page (flat, last of {last_page:,})", f"{v}/flat/tree/all?page={last_page}"),
        ("folder page (flat) as JSON", f"/api{v}/flat/tree/all?page=2"),
        ("dataset page", v),
        ("datasets page", "/"),
        (
            "diff page (1% changed)",
            f"/diff?a=dataset://{DATASET}/nested&b=dataset://{DATASET}/nested-b&page={diff_page}",
        ),
    ]
    timings = [await _time(app, name, url, repeat) for name, url in pages]
    assets = {
        name: len((await asgi_get(app, f"/static/{name}"))[1]) for name in ("style.css", "app.js")
    }
    return {
        "files": files,
        "manifest_bytes": sizes,
        "generate_seconds": round(generated, 2),
        "pages": [t.to_json() for t in timings],
        "assets_bytes": assets,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dspkg.web.measure")
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run_sync(measure(args.files, args.repeat))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{args.files:,} files per version; manifests {result['manifest_bytes']}")
    print(f"{'page':<44} {'first':>8} {'warm':>8} {'HTML':>9}")
    for p in result["pages"]:
        print(
            f"{p['page']:<44} {p['first_s']:>7.3f}s {p['warm_median_s']:>7.3f}s "
            f"{p['bytes'] / 1000:>7.1f}KB"
        )
    print(f"assets: {result['assets_bytes']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
