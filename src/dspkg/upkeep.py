"""Looking after the cache: what it holds, checking every object, eviction, clearing.

Eviction is by version, least recently used first, and never touches the objects of
a version that a running pull or job has pinned. Objects no version uses (left by an
interrupted pull) go first. Removing an object is one ``unlink``, so a prune killed
at any moment leaves whole objects or none, never a partial one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dspkg.cache import Cache, VersionRecord, object_problem
from dspkg.loader import cached_files
from dspkg.names import VersionUri
from dspkg.shards import shard_names


def _disk_bytes(info: os.stat_result) -> int:
    """Space a file takes on disk: what a size limit on the cache directory is about."""
    return max(info.st_blocks * 512, info.st_size)


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


@dataclass(frozen=True)
class VersionUse:
    uri: str
    store: str
    files: int
    bytes: int
    last_used: float
    pinned: bool
    partial: bool = False  # only subsets pulled: files and bytes count what they linked

    def to_json(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "store": self.store,
            "files": self.files,
            "bytes": self.bytes,
            "last_used": _iso(self.last_used),
            "pinned": self.pinned,
            "partial": self.partial,
        }


@dataclass(frozen=True)
class CacheInfo:
    root: str
    objects: int
    bytes: int
    disk_bytes: int
    max_size: int | None
    versions: tuple[VersionUse, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "cache": self.root,
            "objects": self.objects,
            "bytes": self.bytes,
            "disk_bytes": self.disk_bytes,
            "max_size": self.max_size,
            "versions": [v.to_json() for v in self.versions],
        }


@dataclass(frozen=True)
class VerifyResult:
    objects: int
    bytes: int
    bad: tuple[tuple[str, str], ...]  # (object, what was wrong)
    leftovers: int

    def to_json(self) -> dict[str, Any]:
        return {
            "objects": self.objects,
            "bytes": self.bytes,
            "bad": [{"object": o, "problem": p} for o, p in self.bad],
            "temp_leftovers_removed": self.leftovers,
        }


@dataclass
class PruneResult:
    max_size: int
    before: int
    after: int = 0
    evicted: list[str] = field(default_factory=list)
    objects_removed: int = 0
    in_use: list[str] = field(default_factory=list)  # kept: pinned by a running pull or job

    @property
    def reached(self) -> bool:
        return self.after <= self.max_size

    def to_json(self) -> dict[str, Any]:
        return {
            "max_size": self.max_size,
            "disk_bytes_before": self.before,
            "disk_bytes_after": self.after,
            "evicted_versions": self.evicted,
            "objects_removed": self.objects_removed,
            "versions_in_use": self.in_use,
            "limit_reached": self.reached,
        }


def _object_sizes(cache: Cache) -> dict[str, int]:
    sizes = {}
    for sha, path in cache.iter_objects():
        with contextlib.suppress(OSError):
            sizes[sha] = _disk_bytes(path.stat())
    return sizes


def disk_usage(root: Path) -> int:
    """Bytes the cache directory takes on disk, files and directories alike (like ``du``)."""
    total = 0
    for dirpath, _dirnames, filenames in os.walk(root):
        with contextlib.suppress(OSError):
            total += _disk_bytes(os.lstat(dirpath))
        for name in filenames:
            with contextlib.suppress(OSError):
                total += _disk_bytes(os.lstat(os.path.join(dirpath, name)))
    return total


def _pinned_objects(
    cache: Cache, records: Iterable[tuple[Path, VersionRecord]]
) -> tuple[set[tuple[str, str]], set[str]]:
    """Pinned (store, uri) pairs and every object they use (from records or manifests)."""
    pins = {(store, str(uri)) for store, uri in cache.pinned()}
    objects: set[str] = set()
    by_key = {(r.store, r.uri): r for _, r in records}
    for store, uri in pins:
        record = by_key.get((store, uri))
        if record is not None:
            objects.update(record.objects)
        # A pull still running has no record yet: its cached manifest tells.
        objects.update(f.sha256 for f in cached_files(cache, store, VersionUri.parse(uri)))
    return pins, objects


def info(cache: Cache, max_size: int | None = None) -> CacheInfo:
    records = cache.version_records()
    pins, _ = _pinned_objects(cache, records)
    objects = nbytes = 0
    for _, path in cache.iter_objects():
        with contextlib.suppress(OSError):
            nbytes += path.stat().st_size
            objects += 1
    uses = tuple(
        sorted(
            (
                VersionUse(
                    r.uri,
                    r.store,
                    r.files,
                    r.nbytes,
                    r.last_used,
                    (r.store, r.uri) in pins,
                    r.partial,
                )
                for _, r in records
            ),
            key=lambda v: -v.last_used,
        )
    )
    return CacheInfo(str(cache.root), objects, nbytes, disk_usage(cache.root), max_size, uses)


def verify(cache: Cache, threads: int = 3) -> VerifyResult:
    """Re-hash every object; drop (and report) any that is not exactly what its name says.
    The others are marked checked (see the tamper check in :mod:`dspkg.cache`)."""
    leftovers = cache.sweep()

    def check(item: tuple[str, Path]) -> tuple[str, int, str | None]:
        sha, path = item
        problem = object_problem(str(path), sha) if len(sha) == 64 else "not an object name"
        try:
            size = path.stat().st_size
        except OSError:
            size = 0
        if problem is None:
            cache.touch(sha)  # checked now: later pulls trust it without hashing
        return sha, size, problem

    bad: list[tuple[str, str]] = []
    count = nbytes = 0
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for sha, size, problem in pool.map(check, cache.iter_objects()):
            count += 1
            nbytes += size
            if problem:
                bad.append((sha, problem))
                cache.drop(sha)
    return VerifyResult(count, nbytes, tuple(bad), leftovers)


def prune(cache: Cache, max_size: int) -> PruneResult:
    """Evict until the cache takes at most ``max_size`` bytes of disk."""
    with cache.lock("gc"):
        cache.sweep()
        records = cache.version_records()
        pins, protected = _pinned_objects(cache, records)
        sizes = _object_sizes(cache)
        total = disk_usage(cache.root)
        result = PruneResult(max_size=max_size, before=total)
        refs: Counter[str] = Counter()
        for _, record in records:
            refs.update(set(record.objects))

        def remove(sha: str) -> int:
            if sha in protected or sha not in sizes:
                return 0
            cache.drop(sha)
            result.objects_removed += 1
            return sizes.pop(sha)

        if total > max_size:
            for sha in [s for s in sizes if refs[s] == 0]:
                total -= remove(sha)
        for path, record in sorted(records, key=lambda item: item[1].last_used):
            if total <= max_size:
                break
            if (record.store, record.uri) in pins:
                result.in_use.append(record.uri)
                continue
            before = _record_bytes(cache, record)
            cache.forget_version(path, record)
            total -= before
            result.evicted.append(record.uri)
            for sha in set(record.objects):
                refs[sha] -= 1
                if refs[sha] <= 0:
                    total -= remove(sha)
        if result.evicted:
            _sweep_shards(cache)
        result.after = disk_usage(cache.root)
        return result


def _sweep_shards(cache: Cache) -> None:
    """Remove kept manifest shards that no kept root names any more (shards are shared
    by content, so a shard goes with the last version that uses it)."""
    for folder in cache.manifests.glob("*/*/shards"):
        named: set[str] = set()
        for root in folder.parent.glob("*.json"):
            with contextlib.suppress(OSError):
                named |= shard_names(root.read_bytes())
        for shard in folder.iterdir():
            if shard.name not in named:
                with contextlib.suppress(OSError):
                    shard.unlink()


def _record_bytes(cache: Cache, record: VersionRecord) -> int:
    total = 0
    for path in cache.record_files(record.store, VersionUri.parse(record.uri)):
        with contextlib.suppress(OSError):
            total += _disk_bytes(path.stat())
    return total


def clear(cache: Cache) -> dict[str, int]:
    """Remove every object, record and cached manifest."""
    with cache.lock("gc"):
        removed = 0
        nbytes = 0
        for _sha, path in list(cache.iter_objects()):
            with contextlib.suppress(OSError):
                nbytes += path.stat().st_size
                path.unlink()
                removed += 1
        for base in (cache.manifests, cache.versions):
            shutil.rmtree(base, ignore_errors=True)
            base.mkdir(exist_ok=True)
        cache.sweep()
    return {"objects_removed": removed, "bytes_removed": nbytes}
