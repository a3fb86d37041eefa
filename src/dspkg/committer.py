"""``dspkg commit``: merge the staged parts of a version into it, with one conditional create.

read the part records -> check they agree and their packages are in the store -> merge
the parts' files (and the parent's, for a version built ``from`` one) in path order,
one shard of each source at a time, writing the version's shards as they fill -> create
the root (the commit point: of two commits racing, exactly one creates it) -> aliases ->
remove the part records. A commit that fails leaves no version; running it again is safe.
"""

from __future__ import annotations

import contextlib
import heapq
import time
from collections import deque
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from dspkg.catalog import Catalog, now_iso
from dspkg.concurrency import BoundedTasks
from dspkg.errors import AlreadyExists, DspkgError, InvalidMetadata, NotFound, StoreError
from dspkg.layout import LATEST, manifest_key, name_from_key, part_key, staging_prefix
from dspkg.manifest import FileEntry, ManifestRoot, ShardInfo
from dspkg.manifest_checks import CollisionCheck
from dspkg.names import VersionUri
from dspkg.parts import Candidate, Merge, Part, agree, parse_part
from dspkg.progress import Progress
from dspkg.shards import WRITER_LIMITS, ShardLimits, ShardWriter, decode_shard, encode_root
from dspkg.store import Store


@dataclass(frozen=True)
class CommitResult:
    uri: str
    created: bool
    files: int
    bytes: int
    parts: tuple[str, ...]
    packages: int
    requests: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "created": self.created,
            "files": self.files,
            "bytes": self.bytes,
            "parts": list(self.parts),
            "packages": self.packages,
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
        }


async def read_parts(
    catalog: Catalog, uri: VersionUri, only: Collection[str] | None = None
) -> tuple[list[Part], bool]:
    """Every part staged for ``uri`` (or those of ``only``), by name, each checked and about
    this version; and whether a part listed vanished before it was read (a commit
    finished meanwhile)."""
    prefix = staging_prefix(uri.dataset, uri.version)
    names = sorted(
        n
        for n in (name_from_key(i.key, prefix) for i in await catalog.store.list(prefix))
        if n and (only is None or n in only)
    )
    parts = []
    for name in names:
        part = await read_part(catalog, uri, name)
        if part is not None:
            parts.append(part)
    return parts, len(parts) < len(names)


async def read_part(catalog: Catalog, uri: VersionUri, name: str) -> Part | None:
    """Part ``name`` of ``uri``, checked, or None when it is not staged."""
    store = catalog.store
    key = part_key(uri.dataset, uri.version, name)
    data = await store.get_optional(key)
    if data is None:
        return None
    part = parse_part(data, obj=store.describe(key))
    if part.root.uri != uri or part.name != name:
        raise InvalidMetadata(
            f"{store.describe(key)} describes part {part.name!r} of {part.root.uri}, "
            f"not part {name!r} of {uri}; remove it",
            path=key,
        )
    return part


async def commit_version(
    store: Store,
    uri: VersionUri,
    progress: Progress | None = None,
    *,
    only: Collection[str] | None = None,
    limits: ShardLimits = WRITER_LIMITS,
) -> CommitResult:
    """Merge every staged part of ``uri`` (or the parts named in ``only``, all of which
    must be staged) into the version (see the module docstring)."""
    progress = progress or Progress()
    started = time.monotonic()
    requests = store.stats.requests
    catalog = Catalog(store)
    parts, vanished = await read_parts(catalog, uri, only)
    existing = await catalog.find_root(uri)
    if vanished and existing is not None:
        # Another commit created the version and removed the part records meanwhile.
        progress.log(f"{uri} was committed by another process meanwhile; nothing to do")
        return _result(existing, (), False, store, requests, started)
    if not parts:
        if existing is not None:
            progress.log(f"{uri} exists and no parts are staged; nothing to commit")
            return _result(existing, (), False, store, requests, started)
        raise NotFound(
            f"no parts of {uri} are staged in {store.url}; stage them first with "
            "'dspkg publish DIR --part NAME'",
            uri=str(uri),
        )
    missing = sorted(set(only or ()) - {p.name for p in parts})
    if missing and existing is None:
        raise NotFound(
            f"part {missing[0]!r} of {uri} is not staged in {store.url} ({len(missing)} "
            "missing); stage it again, then commit",
            uri=str(uri),
        )
    lineage = agree(str(uri), parts)
    parent = None
    if lineage.parent is not None and not lineage.start_fresh:
        parent = await _parent(catalog, uri, lineage.parent)
    await _check_packages(store, uri, parts)
    # A version that exists is compared, never written over: nothing is uploaded then.
    commit = _Commit(catalog, uri, limits, write=existing is None)
    merge = Merge(str(uri), lineage.exclude)
    await commit.run(parts, parent, merge, progress)
    for path in sorted(lineage.exclude - merge.excluded):
        progress.warn(f"{uri}: excluded path {path!r} is not in {lineage.parent}")
    inherited_blobs = parent is None or parent.blobs or commit.inherited == 0
    root = commit.writer.root(
        version=uri.version,
        packages=merge.packages,
        parent=lineage.parent,
        created_at=now_iso(),
        blobs=lineage.blobs and inherited_blobs,
        package_max_file=max(
            (p.root.package_max_file for p in parts if p.root.package_max_file is not None),
            default=None,
        ),
    )
    key = manifest_key(uri.dataset, uri.version)
    created = existing is None and await store.put(key, encode_root(root), create=True)
    if not created:
        other = existing or await catalog.find_root(uri)
        if other is None or other.file_digest() != root.digest:
            raise AlreadyExists(
                f"{uri} already exists with different content than its staged parts "
                f"({', '.join(p.name for p in parts)}); versions are immutable, stage the "
                "parts under a new version name",
                uri=str(uri),
            )
        progress.log(f"{uri} already exists with the content of its parts; nothing to do")
        return _result(other, parts, False, store, requests, started)
    for alias in (LATEST, *lineage.aliases):
        await catalog.set_alias(uri.dataset, alias, uri.version)
    for part in parts:  # best effort: gc removes what is left
        with contextlib.suppress(DspkgError):
            await store.delete(part_key(uri.dataset, uri.version, part.name))
    return _result(root, parts, True, store, requests, started)


async def _parent(catalog: Catalog, uri: VersionUri, parent: str) -> ManifestRoot:
    try:
        return await catalog.read_root(VersionUri.parse(parent))
    except NotFound:
        raise InvalidMetadata(
            f"{uri} is built from {parent}, which does not exist in {catalog.store.url}; "
            "publish it first or stage the parts without 'from'",
            path=str(uri),
        ) from None


async def _check_packages(store: Store, uri: VersionUri, parts: Sequence[Part]) -> None:
    """Every package a part names is in the store, whole: a commit never creates a version
    that points at a package removed meanwhile (``dspkg gc`` after the grace period)."""

    async def check(part: Part, key: str, size: int) -> None:
        head = await store.head(key)
        if head is None or head.size != size:
            raise StoreError(
                f"package {store.describe(key)} of part {part.name!r} of {uri} is missing "
                "or incomplete; stage that part again, then commit",
                key=key,
            )

    async with BoundedTasks(32) as tasks:
        for part in parts:
            for package in part.root.packages:
                await tasks.spawn(check(part, package.key, package.size))


@dataclass
class _Source:
    """One stream of files in path order: a part, or the parent (``name`` None)."""

    name: str | None
    root: ManifestRoot
    shards: deque[ShardInfo]
    entries: tuple[FileEntry, ...] = ()
    at: int = 0

    @property
    def first(self) -> str:
        return self.root.shards[0].first if self.root.shards else self.entries[0].path


@dataclass
class _Commit:
    catalog: Catalog
    uri: VersionUri
    limits: ShardLimits
    write: bool
    writer: ShardWriter = field(init=False)
    inherited: int = 0
    collisions: CollisionCheck = field(default_factory=CollisionCheck)

    def __post_init__(self) -> None:
        self.writer = ShardWriter(self.uri.dataset, limits=self.limits)

    async def run(
        self, parts: Sequence[Part], parent: ManifestRoot | None, merge: Merge, progress: Progress
    ) -> None:
        progress.start(f"committing {self.uri}", sum(p.root.files for p in parts), 0)
        batch: list[str] = []
        try:
            async for entry, from_parent in self._merged(parts, parent, merge):
                self.inherited += from_parent
                batch.append(entry.path)
                await self._store(self.writer.add(entry))
                if len(batch) >= self.limits.max_files:
                    self.collisions.add(batch)
                    batch = []
                progress.advance(0 if from_parent else 1, 0)
            self.collisions.add(batch)
            await self._store(self.writer.flush())
        finally:
            progress.done()
        if self.write:  # else the existing version's digest decides
            await self._check_collisions()

    async def _store(self, shard: tuple[ShardInfo, bytes] | None) -> None:
        if shard is not None and self.write:
            await self.catalog.store.put(shard[0].key, shard[1], create=True)

    async def _check_collisions(self) -> None:
        """Parts that are each fine may still collide with each other (``A`` and ``a``)."""
        suspects = self.collisions.suspects()
        if not suspects:
            return
        paths: list[str] = []
        written = self._written_root()
        for shard in self.writer.shards:
            data = await self.catalog.shard_bytes(written, shard)
            paths.extend(decode_shard(data, shard, obj=shard.key).paths)
        found = CollisionCheck.collision_among(paths, suspects)
        if found is not None:
            raise InvalidMetadata(
                f"{self.uri}: file {found[0]!r} {found[1]} in another part; rename one of them "
                "and stage its part again",
                path=str(self.uri),
            )

    def _written_root(self) -> ManifestRoot:
        return self.writer.root(
            version=self.uri.version, packages=(), parent=None, created_at="", blobs=True
        )

    async def _merged(
        self, parts: Sequence[Part], parent: ManifestRoot | None, merge: Merge
    ) -> AsyncIterator[tuple[FileEntry, bool]]:
        """The committed files in path order, opening each source only when the merge
        reaches its first path and holding one shard of each open source."""
        sources = [_Source(p.name, p.root, deque(p.root.shards)) for p in parts if p.root.files]
        if parent is not None and parent.files:
            sources.append(_Source(None, parent, deque(parent.shards), parent.inline or ()))
        pending = deque(sorted(sources, key=lambda s: s.first))
        heap: list[tuple[str, int]] = []  # (next path, index of its source)
        order = {id(s): i for i, s in enumerate(sources)}
        while heap or pending:
            while pending and (not heap or pending[0].first <= heap[0][0]):
                await self._advance(pending.popleft(), heap, order)
            path = heap[0][0]
            group: list[Candidate] = []
            while heap and heap[0][0] == path:
                source = sources[heapq.heappop(heap)[1]]
                entry = source.entries[source.at]
                source.at += 1
                package = None if entry.package is None else source.root.packages[entry.package]
                group.append(Candidate(source.name, entry, package))
                await self._advance(source, heap, order)
            chosen = merge.pick(group)
            if chosen is not None:
                yield chosen, all(c.source is None for c in group)

    async def _advance(
        self, source: _Source, heap: list[tuple[str, int]], order: dict[int, int]
    ) -> None:
        """Push the source's next file, loading its next shard when it needs one."""
        if source.at >= len(source.entries):
            if not source.shards:
                return
            shard = source.shards.popleft()
            source.entries = await self.catalog.read_files(source.root, [shard])
            source.at = 0
        heapq.heappush(heap, (source.entries[source.at].path, order[id(source)]))


def _result(
    root: ManifestRoot,
    parts: Sequence[Part],
    created: bool,
    store: Store,
    requests: int,
    started: float,
) -> CommitResult:
    return CommitResult(
        uri=str(root.uri),
        created=created,
        files=root.files,
        bytes=root.bytes,
        parts=tuple(p.name for p in parts),
        packages=len(root.packages),
        requests=store.stats.requests - requests,
        seconds=time.monotonic() - started,
    )
