"""Carries out a fetch plan: ranged GETs parsed as they stream in, verified, into the cache.

Each range is read by :class:`~dspkg.zipreader.LocalEntryParser` while it downloads;
an entry at an offset the manifest names must carry the manifest's path and size,
its CRC-32 must match its header and its sha256 the manifest, before its bytes
enter the cache. Entries the plan did not ask for (cached files inside a
coalesced range) are parsed and dropped. If a package turns out corrupt or hostile,
its files come from their blobs instead when the version has them; otherwise the
pull fails naming the package and entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dspkg.cache import Cache, cache_error
from dspkg.catalog import blob_key
from dspkg.errors import Integrity, UnsafePackage
from dspkg.manifest import FileEntry, Manifest
from dspkg.progress import Progress
from dspkg.pull_plan import FetchPlan, RangeFetch, header_start
from dspkg.store import Store
from dspkg.transfer import BoundedTasks
from dspkg.zipreader import (
    END_RECORDS_MAX,
    LocalEntryParser,
    LocalHeader,
    locate_central_directory,
    read_central_directory,
)

# Entries at least this big are written to a temp file as they arrive, not held in memory.
BIG_ENTRY = 8 << 20

Warn = Callable[[str], None]


@dataclass
class FetchResult:
    files: int = 0
    bytes: int = 0
    fallbacks: list[str] = field(default_factory=list)


@dataclass
class Fetcher:
    store: Store
    cache: Cache
    manifest: Manifest
    jobs: int = 16
    progress: Progress = field(default_factory=Progress)
    result: FetchResult = field(default_factory=FetchResult)

    async def run(self, plan: FetchPlan) -> FetchResult:
        bad_packages = await self._check_packages(plan)
        tasks = BoundedTasks(max(1, self.jobs))
        failed: list[tuple[RangeFetch, Exception]] = []

        async def fetch_range(r: RangeFetch) -> None:
            try:
                await self._fetch_range(r)
            except (Integrity, UnsafePackage) as exc:
                failed.append((r, exc))

        fallback: list[FileEntry] = []
        for r in plan.ranges:
            if r.package in bad_packages:
                failed.append((r, bad_packages[r.package]))
            else:
                await tasks.spawn(fetch_range(r))
        for f in plan.blobs:
            await tasks.spawn(self._fetch_blob(f))
        await tasks.join()
        for r, exc in failed:
            if not self.manifest.blobs:
                raise exc
            note = f"{exc}; fetching its files one by one instead"
            if note not in self.result.fallbacks:
                self.result.fallbacks.append(note)
                self.progress.warn(note)
            fallback.extend(f for f in r.files if not self.cache.lookup(f.sha256, f.size))
        for f in fallback:
            await tasks.spawn(self._fetch_blob(f))
        await tasks.join()
        return self.result

    async def _check_packages(self, plan: FetchPlan) -> dict[int, Exception]:
        """Packages not to read at all: missing, of the wrong size, or, when most of a
        package is about to be downloaded anyway, with a central directory that
        disagrees with the manifest or declares links, devices or overlaps."""
        planned: Counter[int] = Counter()
        for r in plan.ranges:
            planned[r.package] += r.size

        async def check(index: int) -> Exception | None:
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
            if planned[index] * 2 < info.size:
                return None
            try:
                await self._check_directory(index)
            except (Integrity, UnsafePackage) as exc:
                return exc
            return None

        found = await asyncio.gather(*(check(i) for i in plan.packages))
        return {i: exc for i, exc in zip(plan.packages, found, strict=True) if exc is not None}

    async def _check_directory(self, index: int) -> None:
        info = self.manifest.packages[index]
        name = self.store.describe(info.key)
        spans: dict[int, bytes] = {}

        def read(start: int, end: int) -> bytes:
            for base, data in spans.items():
                if base <= start and end <= base + len(data):
                    return data[start - base : end - base]
            raise UnsafePackage(f"package {name}: end records point outside the package", obj=name)

        tail_start = max(0, info.size - END_RECORDS_MAX)
        spans[tail_start] = await self.store.get_range(info.key, tail_start, info.size)
        where = locate_central_directory(read, info.size, obj=name)
        spans[where.offset] = await self.store.get_range(info.key, where.offset, info.size)
        entries = read_central_directory(read, info.size, obj=name)
        if len(entries) != info.entries:
            raise UnsafePackage(
                f"package {name} holds {len(entries)} entries, its manifest says {info.entries}",
                obj=name,
            )
        by_offset = {e.header_offset: e for e in entries}
        for f in self.manifest.files:
            if f.package != index:
                continue
            entry = by_offset.get(header_start(f))
            if entry is None or entry.name != f.path or entry.size != f.size:
                raise UnsafePackage(
                    f"package {name}: its central directory does not list {f.path!r} "
                    "where the manifest says",
                    obj=name,
                    entry=f.path,
                )

    async def _fetch_range(self, r: RangeFetch) -> None:
        name = self.store.describe(r.key)
        wanted = {f.offset: f for f in r.files}
        parser = LocalEntryParser(r.start, obj=name)
        sink: _EntrySink | None = None
        async for chunk in self.store.stream_range(r.key, r.start, r.end):
            for header, piece, last in parser.feed(chunk):
                if sink is None or sink.header is not header:
                    entry = wanted.pop(header.data_offset, None)
                    sink = _EntrySink(header, entry, name, self.cache)
                sink.add(piece)
                if last:
                    if sink.entry is not None:
                        sink.commit()
                        self.result.files += 1
                        self.result.bytes += header.size
                        self.progress.advance(1, header.size)
                    sink = None
        parser.close()
        if wanted:
            missing = next(iter(wanted.values()))
            raise UnsafePackage(
                f"package {name}: no entry for {missing.path!r} at offset {missing.offset}",
                obj=name,
                entry=missing.path,
            )

    async def _fetch_blob(self, f: FileEntry) -> None:
        key = blob_key(f.sha256)
        header = LocalHeader(f.path, f.size, 0, 0, 0)
        sink = _EntrySink(header, f, self.store.describe(key), self.cache, check_crc=False)
        if f.size >= BIG_ENTRY:
            async for chunk in self.store.stream_range(key, 0, f.size):
                sink.add(chunk)
        elif f.size:
            sink.add(memoryview(await self.store.get(key)))
        sink.commit()
        self.result.files += 1
        self.result.bytes += f.size
        self.progress.advance(1, f.size)


class _EntrySink:
    """Collects one entry's bytes, verifies them and inserts them into the cache."""

    def __init__(
        self,
        header: LocalHeader,
        entry: FileEntry | None,
        obj: str,
        cache: Cache,
        *,
        check_crc: bool = True,
    ) -> None:
        self.header = header
        self.entry = entry
        self.obj = obj
        self.cache = cache
        self.check_crc = check_crc
        self.sha = hashlib.sha256()
        self.crc = 0
        self.size = 0
        self.pieces: list[memoryview] = []
        self.fd: int | None = None
        self.tmp: Path | None = None
        if entry is not None and (header.name != entry.path or header.size != entry.size):
            raise UnsafePackage(
                f"package {obj}: entry {header.name!r} ({header.size} bytes) at offset "
                f"{header.data_offset} is not {entry.path!r} ({entry.size} bytes) as the "
                "manifest says",
                obj=obj,
                entry=header.name,
            )

    def add(self, piece: memoryview) -> None:
        if self.entry is None:
            return
        self.size += len(piece)
        if self.size > self.entry.size:
            raise Integrity(
                f"{self.obj}: {self.entry.path!r} is longer than expected", obj=self.obj
            )
        self.sha.update(piece)
        if self.check_crc:
            self.crc = zlib.crc32(piece, self.crc)
        if self.entry.size < BIG_ENTRY:
            self.pieces.append(piece)
            return
        try:
            if self.fd is None:
                self.tmp = self.cache.temp_path()
                self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            view = piece
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError as exc:
            self.abort()
            raise cache_error(exc, self.cache.root) from None

    def commit(self) -> None:
        entry = self.entry
        assert entry is not None
        problem = None
        if self.size != entry.size:
            problem = f"has {self.size} bytes, expected {entry.size}"
        elif self.check_crc and self.crc != self.header.crc32:
            problem = "fails its CRC-32 check"
        elif self.sha.hexdigest() != entry.sha256:
            problem = "does not match its sha256 in the manifest"
        if problem:
            self.abort()
            raise Integrity(f"{self.obj}: entry {entry.path!r} {problem}", obj=self.obj)
        if self.fd is None:
            self.cache.write_object(entry.sha256, self.pieces)
            self.pieces = []
            return
        os.close(self.fd)
        self.fd = None
        assert self.tmp is not None
        self.cache.commit_temp(self.tmp, entry.sha256)

    def abort(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.tmp)
            self.tmp = None
