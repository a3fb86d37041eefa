"""Carries out a fetch plan: ranged GETs parsed as they stream in, verified, into the cache.

Each range is read by :class:`~dspkg.zipreader.LocalEntryParser` while it downloads;
an entry at an offset the manifest names must carry the manifest's path and size,
its CRC-32 must match its header and its sha256 the manifest, before its bytes
enter the cache. Entries the plan did not ask for (cached files inside a
coalesced range) are parsed and dropped. If a package turns out corrupt or hostile,
its files come from their blobs instead when the version has them; otherwise the
pull fails naming the package and entry.

The event loop only moves bytes: each range's chunks are queued to a
:class:`_RangeExtractor` that parses, hashes and writes them in a disk thread, one chunk
after another, so that file creation runs alongside the download instead of after it.
Verified objects go to a :class:`Sink`: the cache alone by default, or a pull's tree
builder, which writes each file once where it ends up (see :mod:`dspkg.materialize`).
A CRC-32 in a local header is not checked: the manifest's SHA-256, which every entry
must match, already says more.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Protocol

from dspkg import zipformat as zf
from dspkg.cache import Cache, ObjectWriter, cache_error
from dspkg.concurrency import BoundedTasks
from dspkg.errors import DspkgError, Integrity, UnsafePackage
from dspkg.layout import blob_key
from dspkg.manifest import FileEntry, Manifest, PackageInfo
from dspkg.progress import Progress
from dspkg.pull_plan import FetchPlan, RangeFetch, Tuning, coalesce, header_start
from dspkg.speedups import bad_entry_type, extractor_type
from dspkg.store import Store
from dspkg.zipreader import (
    LocalEntryParser,
    LocalHeader,
    locate_central_directory,
    read_central_directory,
)

# Entries at least this big are written to a temp file as they arrive, not held in memory.
BIG_ENTRY = 8 << 20
# Chunks of a range downloaded and not yet written (about 1 MiB each).
PENDING_CHUNKS = 4

Pieces = Sequence[bytes | memoryview]


class Sink(Protocol):
    """Where verified objects go (called from the disk threads)."""

    # For the compiled extractor: True when it writes each entry where it ends up and
    # links the cache's name to it; False when it writes a temp file and renames it.
    links_targets: bool

    def put(self, entry: FileEntry, pieces: Pieces) -> None:
        """A whole object, verified."""

    def open_object(self, entry: FileEntry) -> ObjectWriter:
        """A writer for a big object, streamed and verified as it arrives."""

    def committed(self, entry: FileEntry) -> None:
        """A big object is in the cache now."""

    def targets(self, entry: FileEntry) -> tuple[str, str]:
        """For the compiled extractor: the file to write, and the cache object it becomes."""

    def placed(self, entry: FileEntry) -> None:
        """The compiled extractor wrote, verified and placed ``entry``."""

    def os_error(self, exc: OSError) -> DspkgError:
        """Our error for a failed write or link of the compiled extractor."""


class CacheSink:
    """The cache only: what fills the cache without a tree (mount, prefetch)."""

    links_targets = False

    def __init__(self, cache: Cache) -> None:
        self.cache = cache

    def targets(self, entry: FileEntry) -> tuple[str, str]:
        return self.cache.temp_name(), self.cache.object_path(entry.sha256)

    def placed(self, entry: FileEntry) -> None:
        return None

    def os_error(self, exc: OSError) -> DspkgError:
        return cache_error(exc, self.cache.root)

    def put(self, entry: FileEntry, pieces: Pieces) -> None:
        """A whole object, verified."""
        self.cache.write_object(entry.sha256, pieces)

    def open_object(self, entry: FileEntry) -> ObjectWriter:
        """A writer for a big object, streamed and verified as it arrives."""
        return self.cache.object_writer()

    def committed(self, entry: FileEntry) -> None:
        """A big object is in the cache now."""


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
    sink: Sink | None = None  # default: the cache alone
    speedups: bool = True  # the compiled extractor, where it is built
    # When the plan's view of the cache was taken (wall clock): a package whose lock
    # was stamped since then is looked at again before it is fetched.
    planned_at: float = field(default_factory=time.time)
    # Warnings given already (shared by the fetchers of one pull's batches: once each).
    warned: set[str] = field(default_factory=set)
    result: FetchResult = field(default_factory=FetchResult)
    # Ranges of packages found unusable, with why: their files come from blobs instead.
    _failed: list[tuple[RangeFetch, Exception]] = field(default_factory=list)
    _size_checks: dict[int, asyncio.Task[Exception | None]] = field(default_factory=dict)
    _range_slots: asyncio.Semaphore | None = None

    def __post_init__(self) -> None:
        self._sink: Sink = self.sink or CacheSink(self.cache)

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

    # --- one range or blob at a time, for callers that coordinate their own requests -------

    async def fetch_range(self, r: RangeFetch) -> None:
        """Fetch one range into the cache, every wanted entry verified before it enters,
        without what :meth:`run` adds around ranges (the package lock, the size check, the
        fallback to blobs): the on-demand core holds its own lease on the package, checks
        each package once, and decides per file what a failure means."""
        await self._fetch_range(r)

    async def fetch_blob(self, f: FileEntry) -> None:
        """Fetch one file from its blob into the cache, verified."""
        await self._fetch_blob(f)

    async def check_package(self, index: int) -> Exception | None:
        """Why not to use package ``index`` at all (missing, wrong size), or None."""
        return await self._check_package(index)

    async def _fall_back_to_blobs(self) -> None:
        """Fetch the files of refused packages one by one, when the version has blobs."""
        fallback: list[FileEntry] = []
        for r, exc in self._failed:
            if not self.manifest.blobs:
                raise exc
            note = f"{exc}; fetching its files one by one instead"
            if note not in self.result.fallbacks:
                self.result.fallbacks.append(note)
                if note not in self.warned:
                    self.warned.add(note)
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
        elif lock.stamped_since(self.planned_at):
            # Another process fetched it and let go between this one's plan and now.
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
            lock.stamp()
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
        return await check_package(self.store, self.manifest.packages[index])

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
        # what dspkg writes); a second one when the tail fell short of it. A manifest
        # holding some of the package's files (a subset, a batch of a big pull) sizes
        # the rest of the names by theirs.
        mine = [f for f in self.manifest.files if f.package == index]
        names = sum(len(f.path.encode()) for f in mine)
        if mine and len(mine) < info.entries:
            names = -(-names * info.entries // len(mine))
        count = max(len(mine), info.entries)
        expected = count * (zf.CENTRAL.size + zf.CENTRAL_ZIP64_EXTRA_MAX) + names
        tail_start = max(0, info.size - zf.END_RECORDS_MAX - expected)
        spans[tail_start] = await self.store.get_range(info.key, tail_start, info.size)
        where = locate_central_directory(read, info.size, obj=name)
        if where.offset < tail_start:
            spans[where.offset] = await self.store.get_range(info.key, where.offset, info.size)

        def check() -> None:
            entries = read_central_directory(read, info.size, obj=name)
            if len(entries) != info.entries:
                raise UnsafePackage(
                    f"package {name} holds {len(entries)} entries, its manifest says "
                    f"{info.entries}",
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

        # About 5 microseconds an entry: in a thread, so that the loop keeps handing the
        # ranges' chunks to the disk threads meanwhile.
        await asyncio.get_running_loop().run_in_executor(None, check)

    # --- ranges -----------------------------------------------------------------------

    async def _fetch_range(self, r: RangeFetch) -> None:
        """Download a range while a disk thread extracts it, chunk after chunk."""
        loop = asyncio.get_running_loop()
        name = self.store.describe(r.key)
        compiled = extractor_type() if self.speedups else None
        extractor: _RangeExtractor | _CompiledExtractor | None = None

        def prepare() -> _RangeExtractor | _CompiledExtractor:
            # A few microseconds a file (its names, its digest): in a disk thread while
            # the request is in flight, not on the loop before it is sent.
            if compiled is not None:
                return _CompiledExtractor(r, name, self._sink, compiled)
            return _RangeExtractor(r, name, self._sink)

        chunks: asyncio.Queue[memoryview | None] = asyncio.Queue(PENDING_CHUNKS)

        async def download() -> None:
            async for chunk in self.store.stream_range(r.key, r.start, r.end):
                await chunks.put(chunk)
            await chunks.put(None)

        async def extract() -> None:
            nonlocal extractor
            extractor = ready = await loop.run_in_executor(self.disk, prepare)
            while (chunk := await chunks.get()) is not None:
                self._count(*await loop.run_in_executor(self.disk, ready.feed, chunk))
            ready.close()

        try:
            async with BoundedTasks(2) as both:
                await both.spawn(download())
                await both.spawn(extract())
        finally:
            if extractor is not None:
                extractor.abort()

    # --- blobs ------------------------------------------------------------------------

    async def _fetch_blob(self, f: FileEntry) -> None:
        key = blob_key(f.sha256)
        name = self.store.describe(key)
        parts = self.tuning.blob_parts(f.size)
        if len(parts) > 1:
            await self._fetch_blob_in_parts(f, key, name, parts)
            return
        if f.size >= BIG_ENTRY:
            big = _StreamedEntry(f, name, self._sink)
            try:
                async for chunk in self.store.stream_range(key, 0, f.size):
                    big.add(chunk)
                big.commit()
            finally:
                big.abort()
            self._count(1, f.size)
            return
        data = await self.store.get_range(key, 0, f.size) if f.size else b""
        # Small enough to write right here: a hand-off to a disk thread costs more.
        check = _Check(f, name)
        check.update(data)
        check.verify()
        self._sink.put(f, [data])
        self._count(1, f.size)

    async def _fetch_blob_in_parts(
        self, f: FileEntry, key: str, name: str, parts: list[tuple[int, int]]
    ) -> None:
        """A big blob as parallel ranged GETs, each part written at its offset into one
        new object as it streams in (in the disk threads), then the whole verified by
        its sha256 and inserted. Parts share the ranged GETs' slots with packages."""
        loop = asyncio.get_running_loop()
        slots = self._range_slots or asyncio.Semaphore(self.tuning.range_requests)
        writer = self._sink.open_object(f)
        try:
            await loop.run_in_executor(self.disk, writer.allocate, f.size)

            async def part(start: int, end: int) -> None:
                async with slots:
                    position = start
                    async for chunk in self.store.stream_range(key, start, end):
                        await loop.run_in_executor(self.disk, writer.write_at, position, chunk)
                        position += len(chunk)
                        self._count(0, len(chunk))

            async with BoundedTasks(min(len(parts), self.tuning.range_requests)) as tasks:
                for start, end in parts:
                    await tasks.spawn(part(start, end))
            digest = await loop.run_in_executor(self.disk, writer.sha256)
            if digest != f.sha256:
                raise Integrity(
                    f"{name}: blob of {f.path!r} does not match its sha256 in the manifest",
                    obj=name,
                )
            await loop.run_in_executor(self.disk, self._commit, f, writer)
        finally:
            writer.abort()
        self._count(1, 0)

    def _commit(self, f: FileEntry, writer: ObjectWriter) -> None:
        writer.commit(f.sha256)
        self._sink.committed(f)


async def check_package(store: Store, info: PackageInfo) -> Exception | None:
    """Why not to use a package at all (missing from the store, or of the wrong size),
    or None."""
    name = store.describe(info.key)
    head = await store.head(info.key)
    if head is None:
        return Integrity(f"package {name} is missing from the store", obj=info.key)
    if head.size != info.size:
        return Integrity(
            f"package {name} is {head.size} bytes but its manifest says {info.size} "
            "(truncated or replaced)",
            obj=info.key,
        )
    return None


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


class _RangeExtractor:
    """Parses, verifies and writes one range's bytes; fed its chunks in order, in a disk
    thread (one chunk at a time: the caller awaits each before the next)."""

    def __init__(self, r: RangeFetch, obj: str, sink: Sink) -> None:
        self.obj = obj
        self.sink = sink
        self.parser = LocalEntryParser(r.start, obj=obj)
        self.wanted = {f.offset: f for f in r.files}
        self.current: LocalHeader | None = None
        self.entry: FileEntry | None = None
        self.check: _Check | None = None
        self.pieces: list[memoryview] = []
        self.big: _StreamedEntry | None = None

    def feed(self, chunk: memoryview) -> tuple[int, int]:
        """Extract what ``chunk`` completes; return the files and bytes written."""
        files = nbytes = 0
        for header, piece, last in self.parser.feed(chunk):
            if header is not self.current:
                self._start(header)
            entry = self.entry
            if entry is not None:
                if self.big is not None:
                    self.big.add(piece)
                    if last:
                        self.big.commit()
                        self.big = None
                else:
                    assert self.check is not None
                    self.check.update(piece)
                    self.pieces.append(piece)
                    if last:
                        self.check.verify()
                        self.sink.put(entry, self.pieces)
                if last:
                    files += 1
                    nbytes += entry.size
            if last:
                self.current = self.entry = self.check = None
                self.pieces = []
        return files, nbytes

    def _start(self, header: LocalHeader) -> None:
        self.current = header
        self.entry = entry = self.wanted.pop(header.data_offset, None)
        if entry is None:
            return  # a file the plan does not need, inside a coalesced range
        _check_header(header, entry, self.obj)
        if entry.size >= BIG_ENTRY:
            self.big = _StreamedEntry(entry, self.obj, self.sink)
        else:
            self.check = _Check(entry, self.obj)

    def close(self) -> None:
        """Raise unless the range held every entry the plan expects, whole."""
        self.parser.close()
        if self.wanted:
            missing = next(iter(self.wanted.values()))
            raise UnsafePackage(
                f"package {self.obj}: no entry for {missing.path!r} at offset {missing.offset}",
                obj=self.obj,
                entry=missing.path,
            )

    def abort(self) -> None:
        if self.big is not None:
            self.big.abort()
            self.big = None


class _CompiledExtractor:
    """:class:`_RangeExtractor`'s work done by ``_speedups.Extractor`` (C): each chunk is
    parsed, hashed, written and placed without the interpreter, four system calls per
    file. Same checks, same errors."""

    def __init__(self, r: RangeFetch, obj: str, sink: Sink, compiled: Any) -> None:
        self.obj = obj
        self.sink = sink
        self.files = sorted(r.files, key=lambda f: f.offset or 0)
        entries = []
        for f in self.files:
            target, final = sink.targets(f)
            entries.append(
                (
                    f.offset,
                    f.size,
                    bytes.fromhex(f.sha256),
                    f.path.encode(),
                    os.fsencode(target),
                    os.fsencode(final),
                )
            )
        self.native = compiled(r.start, entries, not sink.links_targets)
        self.done = [False] * len(self.files)

    def feed(self, chunk: memoryview) -> tuple[int, int]:
        try:
            finished = self.native.feed(chunk)
        except bad_entry_type() as exc:
            raise self._error(exc) from None
        except OSError as exc:
            raise self.sink.os_error(exc) from None
        nbytes = 0
        for i in finished:
            f = self.files[i]
            self.done[i] = True
            self.sink.placed(f)
            nbytes += f.size
        return len(finished), nbytes

    def close(self) -> None:
        try:
            self.native.close()
        except bad_entry_type() as exc:
            raise self._error(exc) from None
        if not all(self.done):
            missing = self.files[self.done.index(False)]
            raise UnsafePackage(
                f"package {self.obj}: no entry for {missing.path!r} at offset {missing.offset}",
                obj=self.obj,
                entry=missing.path,
            )

    def abort(self) -> None:
        self.native.abort()

    def _error(self, exc: Exception) -> Integrity | UnsafePackage:
        kind, message = exc.args
        if kind == "integrity":
            return Integrity(f"{self.obj}: {message}", obj=self.obj)
        return UnsafePackage(f"package {self.obj}: {message}", obj=self.obj)


class _Check:
    """Size and sha256 of an entry's bytes, as they arrive, against the manifest."""

    __slots__ = ("entry", "obj", "sha", "size")

    def __init__(self, entry: FileEntry, obj: str) -> None:
        self.entry = entry
        self.obj = obj
        self.sha = hashlib.sha256()
        self.size = 0

    def update(self, piece: bytes | memoryview) -> None:
        self.size += len(piece)
        if self.size > self.entry.size:
            raise self._error(f"is longer than {self.entry.size} bytes")
        self.sha.update(piece)

    def verify(self) -> None:
        if self.size != self.entry.size:
            raise self._error(f"has {self.size} bytes, expected {self.entry.size}")
        if self.sha.hexdigest() != self.entry.sha256:
            raise self._error("does not match its sha256 in the manifest")

    def _error(self, problem: str) -> Integrity:
        return Integrity(f"{self.obj}: entry {self.entry.path!r} {problem}", obj=self.obj)


class _StreamedEntry:
    """A big entry streamed into a new cache object as it arrives, verified, committed,
    then handed to the sink."""

    def __init__(self, entry: FileEntry, obj: str, sink: Sink) -> None:
        self.entry = entry
        self.sink = sink
        self.check = _Check(entry, obj)
        self.writer: ObjectWriter = sink.open_object(entry)

    def add(self, piece: bytes | memoryview) -> None:
        self.check.update(piece)
        self.writer.write(piece)

    def commit(self) -> None:
        self.check.verify()
        self.writer.commit(self.entry.sha256)
        self.sink.committed(self.entry)

    def abort(self) -> None:
        self.writer.abort()
