"""Carries out a fetch plan: ranged GETs parsed as they stream in, verified, into the cache.

Each range is read by :class:`~dspkg.zipreader.LocalEntryParser` while it downloads;
an entry at an offset the manifest names must carry the manifest's path and size,
its CRC-32 must match its header and its sha256 the manifest, before its bytes
enter the cache. Entries the plan did not ask for (cached files inside a
coalesced range) are parsed and dropped. If a package turns out corrupt or hostile,
its files come from their blobs instead when the version has them; otherwise the
pull fails naming the package and entry.

The event loop only parses; hashing and writing happen in the disk threads, in
batches of the entries that one network chunk completed, so that file creation runs
alongside the download instead of after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

from dspkg import zipformat as zf
from dspkg.cache import Cache, ObjectWriter
from dspkg.concurrency import BoundedTasks
from dspkg.errors import Integrity, UnsafePackage
from dspkg.layout import blob_key
from dspkg.manifest import FileEntry, Manifest
from dspkg.progress import Progress
from dspkg.pull_plan import FetchPlan, RangeFetch, Tuning, coalesce, header_start
from dspkg.store import Store
from dspkg.zipreader import (
    LocalEntryParser,
    LocalHeader,
    locate_central_directory,
    read_central_directory,
)

# Entries at least this big are written to a temp file as they arrive, not held in memory.
BIG_ENTRY = 8 << 20
# Bytes handed to the disk threads and not yet written, per range.
PENDING_BYTES = 4 << 20

OnInsert = Callable[[FileEntry], None]


def _nothing(_: FileEntry) -> None:
    return None


@dataclass(frozen=True, slots=True)
class _Item:
    """A complete small entry waiting to be verified and written."""

    entry: FileEntry
    crc32: int | None  # from the local header; None for blobs
    pieces: Sequence[bytes | memoryview]
    obj: str


@dataclass
class FetchResult:
    files: int = 0
    bytes: int = 0
    fallbacks: list[str] = field(default_factory=list)


@dataclass
class Fetcher:
    """Fetches what a plan lists into the cache; ``on_insert`` runs in a disk thread for
    every object as soon as it is in the cache (the puller links it into DEST there)."""

    store: Store
    cache: Cache
    manifest: Manifest
    disk: Executor
    tuning: Tuning = field(default_factory=Tuning)
    progress: Progress = field(default_factory=Progress)
    on_insert: OnInsert = _nothing
    result: FetchResult = field(default_factory=FetchResult)
    # Ranges of packages found unusable, with why: their files come from blobs instead.
    _failed: list[tuple[RangeFetch, Exception]] = field(default_factory=list)
    _size_checks: dict[int, asyncio.Task[Exception | None]] = field(default_factory=dict)
    _range_slots: asyncio.Semaphore | None = None

    async def run(self, plan: FetchPlan) -> FetchResult:
        # Each package's size is checked alongside its first ranges, not before them: a
        # round trip saved, and nothing unverified is kept meanwhile (every entry is
        # checked against its sha256 before it enters the cache).
        self._range_slots = asyncio.Semaphore(self.tuning.range_requests)
        by_package: dict[int, list[RangeFetch]] = {}
        for r in plan.ranges:
            by_package.setdefault(r.package, []).append(r)
        self._size_checks = {i: asyncio.create_task(self._check_package(i)) for i in by_package}
        try:
            async with BoundedTasks(len(by_package) + 1) as groups:
                for index, ranges in by_package.items():
                    await groups.spawn(self._fetch_package(index, ranges))
                if plan.blobs:
                    await groups.spawn(self._fetch_blobs(list(plan.blobs)))
        finally:
            for task in self._size_checks.values():
                task.cancel()
            await asyncio.gather(*self._size_checks.values(), return_exceptions=True)
        await self._fall_back_to_blobs()
        return self.result

    async def _fall_back_to_blobs(self) -> None:
        """Fetch the files of refused packages one by one, when the version has blobs."""
        fallback: list[FileEntry] = []
        for r, exc in self._failed:
            if not self.manifest.blobs:
                raise exc
            note = f"{exc}; fetching its files one by one instead"
            if note not in self.result.fallbacks:
                self.result.fallbacks.append(note)
                self.progress.warn(note)
            fallback.extend(f for f in r.files if not self.cache.lookup(f.sha256, f.size))
        self._failed.clear()
        if fallback:
            await self._fetch_blobs(fallback)

    def _refuse(self, index: int, ranges: list[RangeFetch], exc: Exception) -> None:
        """The whole package is unusable: one reason for all its ranges."""
        self._failed[:] = [(r, e) for r, e in self._failed if r.package != index]
        self._failed.extend((r, exc) for r in ranges)

    async def _fetch_package(self, index: int, ranges: list[RangeFetch]) -> None:
        # One process downloads a package at a time; the others wait, then fetch only
        # what is still missing (usually nothing).
        info = self.manifest.packages[index]
        lock = self.cache.lock(self.store.url, info.key)
        if not lock.try_acquire():
            await lock.acquire_async()
            ranges = self._still_missing(index, ranges)
        directory: asyncio.Task[None] | None = None
        try:
            # Downloading most of the package anyway: check its central directory too,
            # alongside the ranges (their bytes are verified one by one; a bad directory
            # refuses the package all the same).
            if sum(r.size for r in ranges) * 2 >= info.size:
                directory = asyncio.create_task(self._check_directory(index))
            work = asyncio.create_task(self._fetch_ranges(ranges))
            try:
                # A missing or resized package makes its ranges fail in ways of their
                # own (not found, short answers); the size check says why.
                bad = await self._size_checks[index]
            except BaseException:
                await _cancelled(work)
                raise
            if bad is not None:
                await _cancelled(work)
                self._refuse(index, ranges, bad)
                return
            await work
            if directory is not None:
                try:
                    await directory
                except (Integrity, UnsafePackage) as exc:
                    self._refuse(index, ranges, exc)
        finally:
            if directory is not None:
                await _cancelled(directory)  # awaited either way, so never orphaned
            lock.release()

    async def _fetch_ranges(self, ranges: list[RangeFetch]) -> None:
        async with BoundedTasks(max(1, len(ranges))) as parts:
            for r in ranges:
                await parts.spawn(self._fetch_range_or_refuse(r))

    async def _fetch_range_or_refuse(self, r: RangeFetch) -> None:
        assert self._range_slots is not None
        async with self._range_slots:
            try:
                await self._fetch_range(r)
            except (Integrity, UnsafePackage) as exc:
                self._failed.append((r, exc))

    async def _fetch_blobs(self, files: list[FileEntry]) -> None:
        lock = self.cache.lock(self.store.url, "blobs", str(self.manifest.uri))
        if not lock.try_acquire():
            await lock.acquire_async()
            files = [f for f in files if not self.cache.lookup(f.sha256, f.size)]
        try:
            async with BoundedTasks(self.tuning.blob_requests) as tasks:
                for f in files:
                    await tasks.spawn(self._fetch_blob(f))
        finally:
            lock.release()

    def _still_missing(self, index: int, ranges: list[RangeFetch]) -> list[RangeFetch]:
        """Ranges for the files of ``ranges`` that the cache still lacks."""
        files = [f for r in ranges for f in r.files if not self.cache.lookup(f.sha256, f.size)]
        return coalesce(self.manifest, index, files, self.tuning)

    def _count(self, files: int, nbytes: int) -> None:
        self.result.files += files
        self.result.bytes += nbytes
        self.progress.advance(files, nbytes)

    # --- package checks ----------------------------------------------------------------

    async def _check_package(self, index: int) -> Exception | None:
        """Why not to use a package at all (missing from the store, or of the wrong
        size), or None."""
        info = self.manifest.packages[index]
        name = self.store.describe(info.key)
        head = await self.store.head(info.key)
        if head is None:
            return Integrity(f"package {name} is missing from the store", obj=info.key)
        if head.size != info.size:
            return Integrity(
                f"package {name} is {head.size} bytes but its manifest says {info.size} "
                "(truncated or replaced)",
                obj=info.key,
            )
        return None

    async def _check_directory(self, index: int) -> None:
        """When most of a package is about to be downloaded anyway, its central directory
        too: it must agree with the manifest and declare no links, devices or overlaps."""
        info = self.manifest.packages[index]
        name = self.store.describe(info.key)
        spans: dict[int, bytes] = {}

        def read(start: int, end: int) -> bytes:
            for base, data in spans.items():
                if base <= start and end <= base + len(data):
                    return data[start - base : end - base]
            raise UnsafePackage(f"package {name}: end records point outside the package", obj=name)

        # One request when the manifest's names size the directory right (they do for
        # what dspkg writes); a second one when the tail fell short of it.
        mine = [f for f in self.manifest.files if f.package == index]
        names = sum(len(f.path.encode()) for f in mine)
        expected = len(mine) * (zf.CENTRAL.size + zf.CENTRAL_ZIP64_EXTRA_MAX) + names
        tail_start = max(0, info.size - zf.END_RECORDS_MAX - expected)
        spans[tail_start] = await self.store.get_range(info.key, tail_start, info.size)
        where = locate_central_directory(read, info.size, obj=name)
        if where.offset < tail_start:
            spans[where.offset] = await self.store.get_range(info.key, where.offset, info.size)
        entries = read_central_directory(read, info.size, obj=name)
        if len(entries) != info.entries:
            raise UnsafePackage(
                f"package {name} holds {len(entries)} entries, its manifest says {info.entries}",
                obj=name,
            )
        by_offset = {e.header_offset: e for e in entries}
        for f in mine:
            entry = by_offset.get(header_start(f))
            if entry is None or entry.name != f.path or entry.size != f.size:
                raise UnsafePackage(
                    f"package {name}: its central directory does not list {f.path!r} "
                    "where the manifest says",
                    obj=name,
                    entry=f.path,
                )

    # --- ranges -----------------------------------------------------------------------

    async def _fetch_range(self, r: RangeFetch) -> None:
        loop = asyncio.get_running_loop()
        name = self.store.describe(r.key)
        wanted = {f.offset: f for f in r.files}
        parser = LocalEntryParser(r.start, obj=name)
        current: LocalHeader | None = None
        entry: FileEntry | None = None
        pieces: list[memoryview] = []
        big: _StreamedEntry | None = None
        pending: deque[tuple[asyncio.Future[tuple[int, int]], int]] = deque()
        pending_bytes = 0
        try:
            async for chunk in self.store.stream_range(r.key, r.start, r.end):
                batch: list[_Item] = []
                for header, piece, last in parser.feed(chunk):
                    if header is not current:
                        current = header
                        entry = wanted.pop(header.data_offset, None)
                        pieces = []
                        big = None
                        if entry is not None:
                            _check_header(header, entry, name)
                            if entry.size >= BIG_ENTRY:
                                big = _StreamedEntry(entry, header.crc32, name, self.cache)
                    if entry is not None:
                        if big is not None:
                            big.add(piece)
                            if last:
                                big.commit()
                                big = None
                                self.on_insert(entry)
                                self._count(1, entry.size)
                        else:
                            pieces.append(piece)
                            if last:
                                batch.append(_Item(entry, header.crc32, pieces, name))
                    if last:
                        current = None
                if batch:
                    size = sum(item.entry.size for item in batch)
                    future = loop.run_in_executor(self.disk, self._insert_batch, batch)
                    pending.append((future, size))
                    pending_bytes += size
                    while pending_bytes > PENDING_BYTES:
                        pending_bytes -= await self._settle(pending)
            parser.close()
            while pending:
                await self._settle(pending)
        finally:
            if big is not None:
                big.abort()
            for future, _ in pending:
                future.cancel()
            # Let cancelled or failing writes finish before this range reports back.
            with contextlib.suppress(BaseException):
                await asyncio.gather(*(f for f, _ in pending), return_exceptions=True)
        if wanted:
            missing = next(iter(wanted.values()))
            raise UnsafePackage(
                f"package {name}: no entry for {missing.path!r} at offset {missing.offset}",
                obj=name,
                entry=missing.path,
            )

    async def _settle(self, pending: deque[tuple[asyncio.Future[tuple[int, int]], int]]) -> int:
        future, size = pending.popleft()
        self._count(*await future)
        return size

    def _insert_batch(self, batch: Sequence[_Item]) -> tuple[int, int]:
        """In a disk thread: verify each entry, insert it into the cache, hand it on."""
        nbytes = 0
        for item in batch:
            check = _Check(item.entry, item.crc32, item.obj)
            for piece in item.pieces:
                check.update(piece)
            check.verify()
            self.cache.write_object(item.entry.sha256, item.pieces)
            self.on_insert(item.entry)
            nbytes += item.entry.size
        return len(batch), nbytes

    # --- blobs ------------------------------------------------------------------------

    async def _fetch_blob(self, f: FileEntry) -> None:
        key = blob_key(f.sha256)
        name = self.store.describe(key)
        if f.size >= BIG_ENTRY:
            big = _StreamedEntry(f, None, name, self.cache)
            try:
                async for chunk in self.store.stream_range(key, 0, f.size):
                    big.add(chunk)
                big.commit()
            finally:
                big.abort()
            self.on_insert(f)
            self._count(1, f.size)
            return
        data = await self.store.get_range(key, 0, f.size) if f.size else b""
        # Small enough to write right here: a hand-off to a disk thread costs more.
        self._count(*self._insert_batch([_Item(f, None, [data], name)]))


async def _cancelled(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` (a no-op when it is done) and wait for it, whatever it raises."""
    task.cancel()
    with contextlib.suppress(BaseException):
        await task


def _check_header(header: LocalHeader, entry: FileEntry, obj: str) -> None:
    if header.name != entry.path or header.size != entry.size:
        raise UnsafePackage(
            f"package {obj}: entry {header.name!r} ({header.size} bytes) at offset "
            f"{header.data_offset} is not {entry.path!r} ({entry.size} bytes) as the "
            "manifest says",
            obj=obj,
            entry=header.name,
        )


class _Check:
    """Size, CRC-32 (from a local header; None for blobs) and sha256 of an entry's bytes,
    as they arrive, against what the manifest promises."""

    __slots__ = ("crc", "entry", "obj", "sha", "size", "want_crc")

    def __init__(self, entry: FileEntry, want_crc: int | None, obj: str) -> None:
        self.entry = entry
        self.want_crc = want_crc
        self.obj = obj
        self.sha = hashlib.sha256()
        self.crc = 0
        self.size = 0

    def update(self, piece: bytes | memoryview) -> None:
        self.size += len(piece)
        if self.size > self.entry.size:
            raise self._error(f"is longer than {self.entry.size} bytes")
        self.sha.update(piece)
        if self.want_crc is not None:
            self.crc = zlib.crc32(piece, self.crc)

    def verify(self) -> None:
        if self.size != self.entry.size:
            raise self._error(f"has {self.size} bytes, expected {self.entry.size}")
        if self.want_crc is not None and self.crc != self.want_crc:
            raise self._error("fails its CRC-32 check")
        if self.sha.hexdigest() != self.entry.sha256:
            raise self._error("does not match its sha256 in the manifest")

    def _error(self, problem: str) -> Integrity:
        return Integrity(f"{self.obj}: entry {self.entry.path!r} {problem}", obj=self.obj)


class _StreamedEntry:
    """A big entry streamed into a new cache object as it arrives, verified, then committed."""

    def __init__(self, entry: FileEntry, want_crc: int | None, obj: str, cache: Cache) -> None:
        self.entry = entry
        self.check = _Check(entry, want_crc, obj)
        self.writer: ObjectWriter = cache.object_writer()

    def add(self, piece: bytes | memoryview) -> None:
        self.check.update(piece)
        self.writer.write(piece)

    def commit(self) -> None:
        self.check.verify()
        self.writer.commit(self.entry.sha256)

    def abort(self) -> None:
        self.writer.abort()
