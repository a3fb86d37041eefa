"""``dspkg gc``: remove what no version references, never anything younger than the grace.

list the store -> mark what is referenced: every version's packages, shards and files'
blobs (roots and shards read one at a time), every package the reuse index names, and
everything a part staged within the grace period names -> candidates: packages, blobs,
shards and part records that nothing marks and that are older than the grace, and what
killed multipart uploads left where that can be seen (a local store) -> unless a dry run,
read every root and part again (one created meanwhile protects what it names), then
delete.

The rule that keeps a publish in flight safe: nothing younger than the grace period is
removed, so a publish (or a part waiting for its commit) that finishes within the grace
period never loses an object it uploaded. A publish that runs longer checks its packages
before it writes its manifest (see the publisher). Objects that a publish reuses instead
of uploading (blobs already in the store, packages found through the reuse index) are
protected when a version or the index names them; gc reads every root again just before
it deletes, so only a publish that starts and finishes within those seconds and reuses an
object nothing else references could lose it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dspkg.catalog import Catalog, parse_root
from dspkg.concurrency import BoundedTasks
from dspkg.errors import DspkgError, StoreError
from dspkg.layout import (
    BLOBS_PREFIX,
    DATASETS_PREFIX,
    INDEX_PREFIX,
    PACKAGES_PREFIX,
    blob_sha,
    garbage_kind,
    part_of_key,
    version_of_key,
)
from dspkg.manifest import ManifestRoot
from dspkg.names import VersionUri
from dspkg.parts import parse_part
from dspkg.progress import Progress
from dspkg.shards import decode_shard
from dspkg.store import ObjectInfo, Store

DEFAULT_GRACE = 24 * 3600.0
_DELETES_IN_FLIGHT = 32


@dataclass(frozen=True)
class Garbage:
    key: str
    size: int
    kind: str  # package, blob, shard, part, incomplete-upload

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "size": self.size, "kind": self.kind}


@dataclass(frozen=True)
class GcResult:
    store: str
    grace_seconds: float
    deleted: bool  # False: a dry run, nothing was removed
    garbage: tuple[Garbage, ...]
    versions: int
    young: int  # unreferenced objects kept because they are younger than the grace
    requests: int
    seconds: float

    @property
    def bytes(self) -> int:
        return sum(g.size for g in self.garbage)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for g in self.garbage:
            counts[g.kind] = counts.get(g.kind, 0) + 1
        return counts

    def to_json(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "grace_seconds": self.grace_seconds,
            "deleted": self.deleted,
            "objects": len(self.garbage),
            "bytes": self.bytes,
            "by_kind": self.counts(),
            "versions": self.versions,
            "young_unreferenced": self.young,
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "garbage": [g.to_json() for g in self.garbage],
        }


@dataclass
class _Marks:
    """What is referenced; blobs only among the candidates (old, listed), so memory
    follows the garbage, not the store."""

    packages: set[str] = field(default_factory=set)
    shards: set[str] = field(default_factory=set)
    old_blobs: set[str] = field(default_factory=set)  # sha256 of unreferenced blobs so far
    seen: dict[str, datetime | None] = field(default_factory=dict)  # roots and parts read
    versions: int = 0


async def collect(
    store: Store,
    *,
    grace: float = DEFAULT_GRACE,
    delete: bool = False,
    progress: Progress | None = None,
    now: datetime | None = None,
) -> GcResult:
    """Find (and with ``delete``, remove) what no version references and that is older
    than ``grace`` seconds."""
    progress = progress or Progress()
    started = time.monotonic()
    requests = store.stats.requests
    now = now or datetime.now(UTC)
    listing = await _list(store)
    marks = _Marks()
    marks.old_blobs = {
        blob_sha(i.key) for i in listing if garbage_kind(i.key) == "blob" and _old(i, now, grace)
    }
    await _mark(store, listing, marks, now, grace)
    garbage, young = _garbage(listing, marks, now, grace)
    local = store.incomplete_uploads((BLOBS_PREFIX, PACKAGES_PREFIX, DATASETS_PREFIX))
    garbage += [Garbage(i.key, i.size, "incomplete-upload") for i in local if _old(i, now, grace)]
    if delete and garbage:
        # Versions and parts created while this ran protect what they name.
        await _mark(store, await _list(store, (DATASETS_PREFIX,)), marks, now, grace)
        garbage = [g for g in garbage if _still_garbage(g, marks)]
        await _delete(store, garbage, progress)
    return GcResult(
        store=store.url,
        grace_seconds=grace,
        deleted=delete,
        garbage=tuple(sorted(garbage, key=lambda g: (g.kind, g.key))),
        versions=marks.versions,
        young=young,
        requests=store.stats.requests - requests,
        seconds=time.monotonic() - started,
    )


async def _list(
    store: Store, prefixes: Iterable[str] = (DATASETS_PREFIX, PACKAGES_PREFIX, BLOBS_PREFIX)
) -> list[ObjectInfo]:
    found: list[ObjectInfo] = []
    for prefix in prefixes:
        found.extend(await store.list(prefix))
    return found


def _old(info: ObjectInfo, now: datetime, grace: float) -> bool:
    """Older than the grace; an object whose age the store does not tell is young."""
    return info.modified is not None and (now - info.modified).total_seconds() > grace


async def _mark(
    store: Store, listing: list[ObjectInfo], marks: _Marks, now: datetime, grace: float
) -> None:
    catalog = Catalog(store)
    for info in listing:
        if marks.seen.get(info.key, 0) == info.modified:
            continue  # read already, unchanged
        version = version_of_key(info.key)
        part = part_of_key(info.key)
        if version is not None:
            await _mark_root(catalog, await _read(store, info.key, version), marks)
            marks.versions += 1
        elif part is not None and not _old(info, now, grace):
            await _mark_root(catalog, await _read(store, info.key, None), marks)
        elif info.key.startswith(INDEX_PREFIX):
            # A package the reuse index names may be reused by a publish at any moment.
            for _, package in await catalog.package_candidates(_shape(info.key)):
                marks.packages.add(package.key)
        else:
            continue
        marks.seen[info.key] = info.modified


def _shape(key: str) -> str:
    return key.rpartition("/")[2].removesuffix(".json")


async def _read(store: Store, key: str, version: tuple[str, str] | None) -> ManifestRoot:
    """The root of ``version``, or (None) a part record's; gc stops rather than remove
    anything on partial knowledge."""
    try:
        data = await store.get(key)
        if version is not None:
            return parse_root(data, VersionUri(*version), obj=store.describe(key))
        return parse_part(data, obj=store.describe(key)).root
    except DspkgError as exc:
        raise StoreError(
            f"gc stopped, nothing was removed: {store.describe(key)} cannot be read ({exc}); "
            "fix or remove it, then run gc again",
            key=key,
        ) from None


async def _mark_root(catalog: Catalog, root: ManifestRoot, marks: _Marks) -> None:
    marks.packages.update(p.key for p in root.packages)
    if root.inline is not None:
        marks.old_blobs.difference_update(f.sha256 for f in root.inline)
        return
    for shard in root.shards:
        marks.shards.add(shard.key)
        if not marks.old_blobs:
            continue
        try:
            data = await catalog.shard_bytes(root, shard)
            records = decode_shard(data, shard, obj=catalog.store.describe(shard.key))
        except DspkgError as exc:
            raise StoreError(
                f"gc stopped, nothing was removed: a shard of {root.uri} cannot be read "
                f"({exc}); fix the version, then run gc again",
                key=shard.key,
            ) from None
        marks.old_blobs.difference_update(records.shas)


def _garbage(
    listing: list[ObjectInfo], marks: _Marks, now: datetime, grace: float
) -> tuple[list[Garbage], int]:
    garbage: list[Garbage] = []
    young = 0
    for info in listing:
        kind = garbage_kind(info.key)
        if kind is None:
            continue
        candidate = Garbage(info.key, info.size, kind)
        if not _still_garbage(candidate, marks):
            continue
        if _old(info, now, grace):
            garbage.append(candidate)
        else:
            young += 1
    return garbage, young


def _still_garbage(g: Garbage, marks: _Marks) -> bool:
    if g.kind == "package":
        return g.key not in marks.packages
    if g.kind == "shard":
        return g.key not in marks.shards
    if g.kind == "blob":
        return blob_sha(g.key) in marks.old_blobs
    return True  # a part record past the grace, an incomplete upload


async def _delete(store: Store, garbage: list[Garbage], progress: Progress) -> None:
    progress.start("removing garbage", len(garbage), sum(g.size for g in garbage))
    try:
        async with BoundedTasks(_DELETES_IN_FLIGHT) as tasks:
            for g in garbage:
                if g.kind == "incomplete-upload":
                    store.delete_incomplete(g.key)
                else:
                    await tasks.spawn(store.delete(g.key))
                progress.advance(1, g.size)
    finally:
        progress.done()
