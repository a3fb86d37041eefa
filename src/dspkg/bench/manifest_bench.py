"""``dspkg bench --manifest``: how long a big manifest takes to write, load and check.

DESIGN.md asks that a 1,000,000-file manifest load "in well under 3 s". This times,
for a synthetic packaged version of N files in folders of 1,000: serializing it,
parsing and validating it as a manifest from the store is, and parsing it as the
cache's own checked copy is (validation skipped, see docs/formats.md).
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from dspkg.manifest import FileEntry, Manifest, PackageInfo


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
        "packages/synthetic/v1/synthetic.v1.vhpkgzip",
        offset + 100 * files + 98,
        "0" * 64,
        files,
    )
    return Manifest(
        "synthetic", "v1", tuple(entries), (package,), created_at="2026-01-01T00:00:00Z"
    )


def run_manifest(files: int) -> dict[str, Any]:
    manifest = synthetic(files)
    started = time.perf_counter()
    data = manifest.to_json()
    written = time.perf_counter() - started
    figures: dict[str, Any] = {"files": files, "bytes": len(data), "write_seconds": written}
    for label, checked in (("load_seconds", False), ("load_checked_seconds", True)):
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            loaded = Manifest.from_json(data, obj="synthetic", trusted=checked)
            best = min(best, time.perf_counter() - started)
            assert len(loaded.files) == files
        figures[label] = best
    return figures


def describe(figures: dict[str, Any]) -> str:
    return (
        f"manifest of {figures['files']:,} files: {figures['bytes'] / 1e6:.1f} MB; "
        f"write {figures['write_seconds']:.2f} s; load and validate "
        f"{figures['load_seconds']:.2f} s; load the cache's checked copy "
        f"{figures['load_checked_seconds']:.2f} s (best of 3)"
    )
