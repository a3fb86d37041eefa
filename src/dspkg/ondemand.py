"""Verified bytes of single files on demand, through the shared cache, with read-ahead.

The one core behind ``dspkg mount`` and ``dspkg.open_version``: both ask for "file i",
and get the path of its cached object once the object is there. A file the cache
lacks is fetched alone (one ranged GET into its package, or its blob), checked by the
fetcher (size, CRC-32, SHA-256) before it enters the cache, and only then served, so a
front never hands out a byte that did not verify. A file whose bytes fail their checks
is refused for the life of the core, with one log line; the front turns that into
``EIO`` or an exception. Reads that move forward in storage order start read-ahead
(:mod:`dspkg.readahead`): the files that follow come in coalesced ranged GETs, as in a
pull.

Requests are shared: a file being fetched is never asked for twice by one process
(waiters wait for it), and processes (another mount, a pull) take turns per package
through the cache's package lock, the same one the fetcher takes, while a waiter
watches the cache and returns as soon as its file lands there. Locks only save work:
after ``PATIENCE`` seconds a waiter fetches anyway.

Everything here runs on one event loop (see :class:`~dspkg.concurrency.LoopThread`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from dspkg.cache import Cache, fingerprint_ok
from dspkg.errors import DspkgError, Integrity, UnsafePackage
from dspkg.fetcher import CacheSink, Fetcher, Pieces
from dspkg.locks import FileLock
from dspkg.manifest import FileEntry, Manifest
from dspkg.pull_plan import Tuning, coalesce
from dspkg.readahead import Lanes, ReadAhead
from dspkg.store import Store

# Demand fetches (a reader is waiting) in flight at once, besides read-ahead.
DEMAND_REQUESTS = 32
# How often a waiter for another process's download looks into the cache.
POLL = 0.02
# Seconds to wait for another process's download of a package before fetching anyway.
PATIENCE = 10.0
# Rounds of "not in the cache yet, wait or fetch" before giving up on a file that keeps
# vanishing (a prune racing us).
ROUNDS = 4

# Packages whose size is checked at start (the rest when first used).
EAGER_CHECKS = 64

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


@dataclass
class _Lease:
    """This process's turn on a package: one lock shared by every fetch in the process."""

    lock: FileLock
    users: int = 0


class _NotifyingSink(CacheSink):
    """The cache alone, and word to the core as each object lands (its waiters wake then,
    not when the whole range is done). Called from the disk threads."""

    def __init__(self, cache: Cache, landed: Callable[[FileEntry], None]) -> None:
        super().__init__(cache)
        self._landed = landed

    def put(self, entry: FileEntry, pieces: Pieces) -> None:
        super().put(entry, pieces)
        self._landed(entry)

    def committed(self, entry: FileEntry) -> None:
        super().committed(entry)
        self._landed(entry)

    def placed(self, entry: FileEntry) -> None:
        super().placed(entry)
        self._landed(entry)


class OnDemand:
    """Serves files of one version from the cache, fetching what is missing on demand."""

    def __init__(
        self,
        store: Store,
        cache: Cache,
        manifest: Manifest,
        *,
        tuning: Tuning | None = None,
        log: Log = _quiet,
        disk_threads: int = 2,
        speedups: bool = True,
        checks: Mapping[int, asyncio.Task[Exception | None]] | None = None,
    ) -> None:
        """``checks``: package checks (:func:`~dspkg.fetcher.check_package`) started
        already, by package index (the rest start with :meth:`start` or on first use)."""
        self.store = store
        self.cache = cache
        self.manifest = manifest
        self.tuning = tuning or Tuning()
        self.log = log
        self.lanes = Lanes.of(manifest)
        self.readahead = ReadAhead.for_tuning(self.lanes, self.tuning)
        self._disk = ThreadPoolExecutor(disk_threads, thread_name_prefix="dspkg-disk")
        self.fetcher = Fetcher(
            store,
            cache,
            manifest,
            self._disk,
            tuning=self.tuning,
            sink=_NotifyingSink(cache, self._inserted),
            speedups=speedups,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inflight: dict[str, asyncio.Future[None]] = {}
        self._awaited: dict[str, int] = {}  # sha256 -> readers waiting for its fetch
        self._bad: dict[str, str] = {}
        self._leases: dict[int, _Lease] = {}
        self._checks: dict[int, asyncio.Task[Exception | None]] = dict(checks or {})
        self._ahead_slots = asyncio.Semaphore(self.tuning.range_requests)
        self._blob_slots = asyncio.Semaphore(self.tuning.blob_requests)
        self._demand_slots = asyncio.Semaphore(DEMAND_REQUESTS)
        self._tasks: set[asyncio.Task[None]] = set()
        self._counting = threading.Lock()
        self._planning = threading.Lock()  # the read-ahead planner is called from threads
        self.fetched = 0  # objects this core put into the cache

    # --- the front's entry points ---------------------------------------------------------

    async def path(self, index: int, *, noted: bool = False) -> str:
        """The cached object of file ``index``: fetched and verified first when missing.

        Raises :class:`~dspkg.errors.Integrity` (or UnsafePackage) for a file whose bytes
        do not verify, and the store's errors when it cannot be reached. ``noted``: the
        caller already told :meth:`note_read` about this read.
        """
        self._loop = asyncio.get_running_loop()
        f = self.manifest.files[index]
        if not noted:
            self._read_ahead(index)
        for _ in range(ROUNDS):
            problem = self._bad.get(f.sha256)
            if problem is not None:
                raise Integrity(problem, obj=f.path)
            if self.cache.lookup(f.sha256, f.size):
                return self.cache.object_path(f.sha256)
            waiting = self._inflight.get(f.sha256)
            if waiting is None:
                await self._fetch_alone(f)
            else:
                await self._wait_for(f, waiting)
        raise Integrity(
            f"{f.path}: its cached copy vanished {ROUNDS} times while being served "
            "(is something pruning the cache?)",
            obj=f.path,
        )

    async def _wait_for(self, f: FileEntry, fetch: asyncio.Future[None]) -> None:
        """Wait for a fetch that brings ``f``, woken as soon as ``f`` lands (the fetch
        wakes only files someone waits for: a hop to the loop per object would cost
        more than a pass's reads)."""
        self._awaited[f.sha256] = self._awaited.get(f.sha256, 0) + 1
        try:
            # It may have landed between the caller's look and the mark just made.
            if not self.cache.lookup(f.sha256, f.size):
                await asyncio.shield(fetch)
        finally:
            left = self._awaited.pop(f.sha256) - 1
            if left:
                self._awaited[f.sha256] = left

    def cached(self, index: int) -> str | None:
        """The object of file ``index`` when it is cached and not refused, else None; safe
        from any thread (a front's fast path: no hop to the loop for what is there)."""
        f = self.manifest.files[index]
        if f.sha256 in self._bad or not self.cache.lookup(f.sha256, f.size):
            return None
        return self.cache.object_path(f.sha256)

    def open_cached(self, index: int) -> int | None:
        """A descriptor of file ``index``'s cached object when it is there, untouched and
        not refused, else None (then :meth:`path` fetches, or rechecks, it). Safe from any
        thread. One ``open`` and one ``fstat``: the object is checked on the descriptor
        that is read, so it cannot be swapped between the check and the read."""
        f = self.manifest.files[index]
        if f.sha256 in self._bad:
            return None
        try:
            fd = os.open(self.cache.object_path(f.sha256), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            ok = fingerprint_ok(os.fstat(fd), f.size)
        except OSError:
            ok = False
        if ok:
            return fd
        os.close(fd)
        return None

    def note_read(self, index: int) -> None:
        """A read of file ``index`` served from the cache: read-ahead still follows it.
        Safe from any thread; it reaches the loop only when there is something to fetch
        (a hop per file would cost more than the read)."""
        with self._planning:
            chosen = self.readahead.on_read(index)
        if chosen and self._loop is not None:
            self._loop.call_soon_threadsafe(self._fetch_ahead, chosen)

    def note_reads(self, indexes: Sequence[int]) -> None:
        """Reads of files ``indexes`` served elsewhere (the mount's compiled READ), in the
        order they came: read-ahead follows them as it follows :meth:`note_read`. On the
        loop."""
        with self._planning:
            chosen = self.readahead.on_reads(indexes)
        if chosen:
            self._fetch_ahead(chosen)

    def refused(self, sha256: str) -> bool:
        """Whether the object ``sha256`` was refused (its reads fail for good)."""
        return sha256 in self._bad

    async def start(self, *, prefetch: bool = False) -> None:
        """Check every package's size in the background right away (the first read then
        waits for no extra round trip); with ``prefetch``, start filling the cache."""
        self._loop = asyncio.get_running_loop()
        for package in range(min(len(self.manifest.packages), EAGER_CHECKS)):
            if package not in self._checks:
                self._checks[package] = asyncio.create_task(self.fetcher.check_package(package))
        if prefetch:
            self._spawn(self.prefetch())

    async def prefetch(self) -> None:
        """Fill the cache with the whole version, range by range, in the background of
        demand reads (which never wait for a range that has not started)."""
        self._loop = asyncio.get_running_loop()
        loop = self._loop
        missing = await loop.run_in_executor(self._disk, self._missing, self.manifest.files)
        by_lane: dict[int | None, list[FileEntry]] = {}
        seen: set[str] = set()
        for f in missing:
            if f.sha256 not in seen:
                seen.add(f.sha256)
                by_lane.setdefault(f.package, []).append(f)
        jobs: list[Coroutine[Any, Any, None]] = []
        for package, files in by_lane.items():
            if package is None:
                jobs.extend(self._blob_job(f, early=False) for f in files)
            else:
                for r in coalesce(self.manifest, package, files, self.tuning):
                    jobs.append(self._range_job(package, r.files, early=False))
        await asyncio.gather(*jobs)

    async def close(self) -> None:
        """Cancel read-ahead and prefetch, wait for them, release every lease."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for check in self._checks.values():
            check.cancel()
        await asyncio.gather(*self._checks.values(), return_exceptions=True)
        for lease in self._leases.values():
            if lease.lock.held:
                lease.lock.stamp()
            lease.lock.release()
        self._disk.shutdown(wait=True)

    @property
    def bad_files(self) -> dict[str, str]:
        """Objects refused so far (sha256 -> why)."""
        return dict(self._bad)

    # --- fetching -------------------------------------------------------------------------

    async def _fetch_alone(self, f: FileEntry) -> None:
        """Fetch one file now (a reader waits for it): its range, else its blob."""
        own = self._register([f])
        try:
            async with self._demand_slots:
                if f.package is not None:
                    try:
                        await self._fetch_files(f.package, [f])
                        return
                    except (Integrity, UnsafePackage) as exc:
                        if not self.manifest.blobs:
                            self._refuse(f, exc)
                            raise
                        self.log(f"{exc}; fetching {f.path} from its blob instead")
                try:
                    await self.fetcher.fetch_blob(f)
                except Integrity as exc:
                    self._refuse(f, exc)
                    raise
        finally:
            self._settle(own)

    def _read_ahead(self, index: int) -> None:
        with self._planning:
            chosen = self.readahead.on_read(index)
        if chosen:
            self._fetch_ahead(chosen)

    def _fetch_ahead(self, chosen: Sequence[int]) -> None:
        """Start fetching the files read-ahead chose (on the loop)."""
        files = self.manifest.files
        by_lane: dict[int | None, list[FileEntry]] = {}
        for i in chosen:
            f = files[i]
            if f.sha256 not in self._inflight and f.sha256 not in self._bad:
                by_lane.setdefault(f.package, []).append(f)
        for package, group in by_lane.items():
            if package is None:
                for f in group:
                    self._spawn(self._blob_job(f, early=True))
            else:
                for r in coalesce(self.manifest, package, group, self.tuning):
                    self._spawn(self._range_job(package, r.files, early=True))

    async def _range_job(self, package: int, files: Sequence[FileEntry], *, early: bool) -> None:
        """Read-ahead or prefetch of one range. Read-ahead registers its files at once
        (readers of them wait for this range); prefetch only once its turn comes."""
        own = self._register(files) if early else []
        try:
            async with self._ahead_slots:
                if not early:
                    own = self._register(files)
                    if not own:
                        return
                await self._fetch_files(package, [f for f, _ in own])
        except (DspkgError, OSError):
            # Not a verdict on any one file: readers fetch theirs alone, and only a file
            # that fails on its own is refused (and logged).
            pass
        finally:
            self._settle(own)

    async def _blob_job(self, f: FileEntry, *, early: bool) -> None:
        own = self._register([f]) if early else []
        try:
            async with self._blob_slots:
                if not early:
                    own = self._register([f])
                    if not own:
                        return
                if not self.cache.lookup(f.sha256, f.size):
                    await self.fetcher.fetch_blob(f)
        except (DspkgError, OSError):
            pass  # the reader of this file fetches it alone and sees the error
        finally:
            self._settle(own)

    async def _fetch_files(self, package: int, files: Sequence[FileEntry]) -> None:
        """Fetch ``files`` of ``package`` in this process's turn on the package."""
        check = self._checks.get(package)
        if check is None:
            check = self._checks[package] = asyncio.create_task(self.fetcher.check_package(package))
        lease = self._leases.get(package)
        if lease is None:
            info = self.manifest.packages[package]
            lease = self._leases[package] = _Lease(self.cache.lock(self.store.url, info.key))
        lease.users += 1
        try:
            missing = await self._take_turn(lease, files)
            if not missing:
                return
            problem = await asyncio.shield(check)
            if problem is not None:
                raise problem
            for run in self._runs(missing):
                for r in coalesce(self.manifest, package, run, self.tuning):
                    await self.fetcher.fetch_range(r)
        finally:
            self._end_turn(package)

    async def _take_turn(self, lease: _Lease, files: Sequence[FileEntry]) -> list[FileEntry]:
        """Wait for this process's turn on a package (the fetcher's lock); return which of
        ``files`` are still missing then."""
        deadline = time.monotonic() + PATIENCE
        while not lease.lock.try_acquire() and time.monotonic() < deadline:
            # Another process downloads from this package: what it brings may be ours.
            if not self._missing(files):
                return []
            await asyncio.sleep(POLL)
        if len(files) == 1:
            return self._missing(files)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._disk, self._missing, files)

    def _end_turn(self, package: int) -> None:
        lease = self._leases[package]
        lease.users -= 1
        if lease.users == 0:
            # Stamped: a pull that planned before this turn looks into the cache again.
            lease.lock.stamp()
            lease.lock.release()

    def _runs(self, files: Sequence[FileEntry]) -> list[list[FileEntry]]:
        """``files`` (of one package) cut where a file between them is not among them: a
        range never spans a file that is cached or that another fetch is bringing, so no
        byte is downloaded twice (at the price of a request now and then)."""
        if len(files) < 2:
            return [list(files)]  # a reader's file: no index of paths for the first byte
        index = self._index_of
        ordered = sorted(files, key=lambda f: self.lanes.position[index[f.path]])
        runs: list[list[FileEntry]] = []
        last = -2
        for f in ordered:
            pos = self.lanes.position[index[f.path]]
            if pos != last + 1:
                runs.append([])
            runs[-1].append(f)
            last = pos
        return runs

    @functools.cached_property
    def _index_of(self) -> dict[str, int]:
        return {f.path: i for i, f in enumerate(self.manifest.files)}

    def _missing(self, files: Sequence[FileEntry]) -> list[FileEntry]:
        return [f for f in files if not self.cache.lookup(f.sha256, f.size)]

    # --- who waits for what -----------------------------------------------------------------

    def _register(self, files: Sequence[FileEntry]) -> list[tuple[FileEntry, asyncio.Future[None]]]:
        """Claim the files nobody is fetching yet; readers of them wait for the claim."""
        loop = asyncio.get_running_loop()
        own = []
        for f in files:
            if f.sha256 in self._inflight or f.sha256 in self._bad:
                continue
            future: asyncio.Future[None] = loop.create_future()
            self._inflight[f.sha256] = future
            own.append((f, future))
        return own

    def _settle(self, own: Sequence[tuple[FileEntry, asyncio.Future[None]]]) -> None:
        """Release claims: their waiters look into the cache again (and fetch alone what
        is still missing)."""
        for f, future in own:
            if self._inflight.get(f.sha256) is future:
                del self._inflight[f.sha256]
            if not future.done():
                future.set_result(None)

    def _inserted(self, entry: FileEntry) -> None:
        """Called by the fetcher (in a disk thread) once an object is in the cache: wake
        its waiters now rather than when the whole range is done."""
        with self._counting:
            self.fetched += 1
        loop = self._loop
        # Read without the loop's lock: a reader marks a file before it looks into the
        # cache a last time, so either it sees the object there or this sees the mark.
        if loop is not None and entry.sha256 in self._awaited:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(self._wake, entry.sha256)

    def _wake(self, sha256: str) -> None:
        future = self._inflight.pop(sha256, None)
        if future is not None and not future.done():
            future.set_result(None)

    def _refuse(self, f: FileEntry, exc: Exception) -> None:
        if f.sha256 not in self._bad:
            self._bad[f.sha256] = str(exc)
            self.log(f"refusing {f.path}: {exc}")

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
