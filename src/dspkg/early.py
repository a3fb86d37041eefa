"""Ranged GETs of packages sent before the plan that will use them (a cold pull).

A cold pull of a whole version downloads its packages whole, and a manifest's root
already says how big each package is. So the pull sends the package GETs
(:func:`~dspkg.pull_plan.early_spans`) as soon as the bytes of the manifest's shards
are in, and checks the shards, plans the tree and plans the fetch while the packages'
first bytes arrive; the plan then cuts the packages at the same places, and each
planned range takes the bytes of the span it starts in (:meth:`EarlyReads.take`).

Nothing here is trusted or kept: the bytes wait in memory (at most
``Tuning.early_buffer`` of them) until a range takes them, and its extractor checks
every entry against the manifest as it does for its own GETs. A span no range takes
is cancelled when the plan is known.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Iterable, Sequence

from dspkg.cache import Cache
from dspkg.errors import StoreError
from dspkg.locks import FileLock
from dspkg.manifest import PackageInfo
from dspkg.pull_plan import EARLY_MARGIN, EarlySpan, RangeFetch, Tuning, early_cuts, early_spans
from dspkg.store import STREAM_CHUNK, Store


class _Span:
    """One early ranged GET: its bytes as they come, held until a range takes them, the
    download paused while ``cap`` bytes wait."""

    def __init__(self, store: Store, span: EarlySpan, cap: int) -> None:
        self.store = store
        self.span = span
        self.cap = cap
        self._chunks: collections.deque[memoryview] = collections.deque()
        self._held = 0
        self._arrived = asyncio.Event()  # a chunk, the end or an error
        self._room = asyncio.Event()
        self._room.set()
        self._finished = False
        self._error: BaseException | None = None
        self._task = asyncio.create_task(self._download())

    async def _download(self) -> None:
        span = self.span
        try:
            async for chunk in self.store.stream_range(span.key, span.start, span.end):
                self._chunks.append(chunk)
                self._held += len(chunk)
                self._arrived.set()
                if self._held >= self.cap:
                    self._room.clear()
                    await self._room.wait()
        except Exception as exc:  # the range that takes these bytes raises it
            self._error = exc
        finally:
            self._finished = True
            self._arrived.set()

    async def read(self, start: int, end: int) -> AsyncIterator[memoryview]:
        """Bytes ``[start, end)`` (inside the span) in chunks; the download stops at
        ``end``."""
        position = self.span.start
        try:
            while position < end:
                while not self._chunks:
                    if self._finished:
                        raise self._error or StoreError(
                            f"{self.store.describe(self.span.key)}: the body ended at byte "
                            f"{position} of {self.span.end}",
                            key=self.span.key,
                        )
                    self._arrived.clear()
                    await self._arrived.wait()
                chunk = self._chunks.popleft()
                self._held -= len(chunk)
                if self._held < self.cap:
                    self._room.set()
                low, high = max(start - position, 0), min(end - position, len(chunk))
                position += len(chunk)
                if low < high:
                    yield chunk[low:high]
        finally:
            await self.close()

    def stop(self) -> None:
        """Cancel the download and let go of what it held."""
        self._chunks.clear()
        self._task.cancel()

    async def close(self) -> None:
        self.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class EarlyReads:
    """The early GETs of one pull; :meth:`close` stops the ones still running.

    One process downloads a package at a time (the fetcher's package lock): a package
    is read early only when its lock is free and was not stamped since ``looked`` (when
    the cache was found cold). The lock is then held from the first GET on and handed
    to the fetcher (:meth:`lock`), so that concurrent cold pulls of a version still
    download each byte once.
    """

    def __init__(
        self,
        store: Store,
        cache: Cache,
        packages: Sequence[PackageInfo],
        tuning: Tuning,
        looked: float,
    ) -> None:
        self.store = store
        spans = early_spans(packages, tuning)
        self._locks: dict[str, FileLock] = {}
        for key in dict.fromkeys(s.key for s in spans):
            lock = cache.lock(store.url, key)
            if not lock.try_acquire():
                continue
            if lock.stamped_since(looked):  # another process fetched it meanwhile
                lock.release()
                continue
            self._locks[key] = lock
        spans = tuple(s for s in spans if s.key in self._locks)
        cap = max(tuning.early_buffer // max(len(spans), 1), STREAM_CHUNK)
        self._spans = [_Span(store, span, cap) for span in spans]
        self._stopped: list[_Span] = []
        # The plan cuts every package that has an early span where the spans do.
        self.cuts = {s.package: early_cuts(packages[s.package], tuning) for s in spans}

    def lock(self, key: str) -> FileLock | None:
        """The lock of package ``key``, held since its GETs went out, now the caller's
        (to stamp and release), or None."""
        return self._locks.pop(key, None)

    def keep(self, ranges: Iterable[RangeFetch]) -> None:
        """Stop the spans that none of the planned ``ranges`` will take, and let go of
        the locks of packages the plan does not fetch from."""
        ranges = list(ranges)
        wanted = {id(span) for r in ranges if (span := self._match(r)) is not None}
        for span in list(self._spans):
            if id(span) not in wanted:
                self._drop(span)
        fetched = {r.key for r in ranges}
        for key in [k for k in self._locks if k not in fetched]:
            self._locks.pop(key).release()

    def take(self, r: RangeFetch) -> AsyncIterator[memoryview] | None:
        """The bytes of ``r`` from the span it starts in (the rest, past the span, by
        a GET of their own), or None when no span holds its start."""
        span = self._match(r)
        if span is None:
            return None
        self._spans.remove(span)
        return self._serve(span, r)

    async def _serve(self, span: _Span, r: RangeFetch) -> AsyncIterator[memoryview]:
        end = span.span.end
        async for chunk in span.read(r.start, min(r.end, end)):
            yield chunk
        if r.end > end:  # an entry longer than the margin straddles the next cut
            async for chunk in self.store.stream_range(r.key, end, r.end):
                yield chunk

    def drop(self, key: str) -> None:
        """Stop the spans of package ``key`` that no range took."""
        for span in [s for s in self._spans if s.span.key == key]:
            self._drop(span)

    async def close(self) -> None:
        spans, self._spans = self._spans + self._stopped, []
        self._stopped = []
        try:
            await asyncio.gather(*(span.close() for span in spans))
        finally:
            for lock in self._locks.values():
                lock.release()
            self._locks.clear()

    def _match(self, r: RangeFetch) -> _Span | None:
        """The span of the last cut at or before the start of ``r``, if it starts near."""
        best = None
        for span in self._spans:
            s = span.span
            if (
                s.key == r.key
                and s.start <= r.start
                and (best is None or s.start > best.span.start)
            ):
                best = span
        if best is None or r.start >= min(best.span.start + EARLY_MARGIN, best.span.end):
            return None
        return best

    def _drop(self, span: _Span) -> None:
        self._spans.remove(span)
        span.stop()
        self._stopped.append(span)
