"""``dspkg bench --manifest``: how long a big manifest takes to write, load and check.

For a synthetic packaged version of N files in folders of 1,000, this times both forms:

- v1 (one JSON document): serializing it, parsing and validating it as a manifest from
  the store, and parsing it as the cache's own checked copy (validation skipped);
- v2 (a root and shards, what dspkg writes): writing it to a ``file://`` store, loading
  the root alone through the loader with an empty cache (what ``show`` and a subset pull
  start with), loading every file with an empty cache (fetched, validated, kept), and
  again from the cache (the checked copies).

Each load is the best of three, every cold one with a fresh cache.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dspkg.cache import Cache
from dspkg.catalog import Catalog
from dspkg.concurrency import run_sync
from dspkg.layout import manifest_key
from dspkg.loader import load_manifest, load_root
from dspkg.manifest import FileEntry, Manifest, PackageInfo
from dspkg.names import VersionUri
from dspkg.store import open_store

ROUNDS = 3


def synthetic(files: int) -> Manifest:
    """A packaged version of ``files`` files with realistic names and offsets."""
    entries = []
    offset = 0
    for i in range(files):
        path = f"class_{i // 1000:04d}/img_{i:08d}.jpg"
        size = 1000 + i % 20_000
        offset += 30 + len(path)
        sha = hashlib.sha256(i.to_bytes(8, "little")).hexdigest()
        entries.append(FileEntry(path, size, sha, 0, offset))
        offset += size
    package = PackageInfo(
        "synthetic.v1.vhpkgzip",
        "packages/synthetic/v1/0000000000000000/synthetic.v1.vhpkgzip",
        offset + 100 * files + 98,
        "0" * 64,
        files,
    )
    return Manifest(
        "synthetic", "v1", tuple(entries), (package,), created_at="2026-01-01T00:00:00Z"
    )


def _best(run: Callable[[], Any], prepare: Callable[[], None] = lambda: None) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        prepare()
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def run_manifest(files: int) -> dict[str, Any]:
    manifest = synthetic(files)
    started = time.perf_counter()
    data = manifest.to_json()
    figures: dict[str, Any] = {
        "files": files,
        "bytes": len(data),
        "write_seconds": time.perf_counter() - started,
    }
    figures["load_seconds"] = _best(lambda: Manifest.from_json(data, obj="v1"))
    figures["load_checked_seconds"] = _best(
        lambda: Manifest.from_json(data, obj="v1", trusted=True)
    )
    with tempfile.TemporaryDirectory(prefix="dspkg-manifest-bench-") as work:
        figures["v2"] = _run_v2(manifest, Path(work))
    return figures


def _run_v2(manifest: Manifest, work: Path) -> dict[str, Any]:
    store = open_store(f"file://{work / 'store'}")
    started = time.perf_counter()
    run_sync(Catalog(store).write_manifest(manifest))
    written = time.perf_counter() - started
    uri = VersionUri(manifest.dataset, manifest.version)
    root_bytes = (work / "store" / manifest_key(uri.dataset, uri.version)).stat().st_size
    shards = sorted((work / "store" / "datasets" / uri.dataset / "shards").iterdir())
    caches = iter(range(10 * ROUNDS))
    cache = Cache(work / "cache-0")

    def fresh_cache() -> None:
        nonlocal cache
        cache = Cache(work / f"cache-{next(caches)}")

    def root() -> None:
        with cache:
            run_sync(load_root(store, cache, uri))

    def whole() -> None:
        with cache:
            loaded = run_sync(load_manifest(store, cache, uri))
            assert len(loaded.files) == len(manifest.files)

    return {
        "write_seconds": written,
        "root_bytes": root_bytes,
        "shards": len(shards),
        "shard_bytes": sum(p.stat().st_size for p in shards),
        "root_load_seconds": _best(root, fresh_cache),
        "load_seconds": _best(whole, fresh_cache),
        "load_cached_seconds": _best(whole),  # the last fresh cache, now filled
    }


def describe(figures: dict[str, Any]) -> str:
    v2 = figures["v2"]
    return (
        f"manifest of {figures['files']:,} files (best of {ROUNDS}):\n"
        f"  v1, one JSON document: {figures['bytes'] / 1e6:.1f} MB; "
        f"write {figures['write_seconds']:.2f} s; load and validate "
        f"{figures['load_seconds']:.2f} s; load the cache's checked copy "
        f"{figures['load_checked_seconds']:.2f} s\n"
        f"  v2, root and {v2['shards']} shards: root {v2['root_bytes'] / 1e3:.1f} kB, shards "
        f"{v2['shard_bytes'] / 1e6:.1f} MB; write {v2['write_seconds']:.2f} s; "
        f"load the root {v2['root_load_seconds']:.3f} s; load and validate every file "
        f"{v2['load_seconds']:.2f} s; from the cache {v2['load_cached_seconds']:.2f} s"
    )
