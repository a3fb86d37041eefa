"""Which files to fetch ahead of the one being read (pure: no I/O, no clock).

A mount or a reader sees one file at a time (a FUSE ``open``, a ``v[i]``). Read one by
one, small files would each cost a round trip; read in storage order (what ``os.walk``
plus ``read`` does, or a sequential sampler), the files that follow can come in a few
coalesced ranged GETs instead, as in a pull. Random access must not drag in bytes
nobody reads, so read-ahead starts only once reads are seen to move forward.

Storage order is per *lane*: each package's files by offset, and one lane for files
that live only as blobs, in manifest order. A *stream* follows one reader moving
forward in a lane; several run at once (DataLoader workers, parallel walkers), the
least recently used is forgotten. A read that lands within ``trigger`` files of a
stream's frontier continues it; its window (bytes kept planned ahead of the reader)
starts at ``first`` and doubles with every chunk it plans, up to ``most``. Chunks are
planned when less than half a window lies ahead, so ranges stay long.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate, chain, groupby, islice, repeat
from operator import itemgetter, le

from dspkg.manifest import Manifest
from dspkg.pull_plan import Tuning

# How far behind a stream's furthest read (in files) a read still counts as continuing
# it: readers in parallel finish files a little out of order.
TRIGGER = 8
# Streams remembered at once.
STREAMS = 16


@dataclass(frozen=True)
class Lanes:
    """Every file's lane and position, and each lane's files in storage order."""

    lane: tuple[int, ...]  # by manifest index
    position: tuple[int, ...]  # by manifest index
    files: tuple[tuple[int, ...], ...]  # by lane: manifest indices in storage order
    ends: tuple[tuple[int, ...], ...]  # by lane: bytes of positions [0, p) at [p]

    @classmethod
    def of(cls, manifest: Manifest) -> Lanes:
        # Whole runs at a time, not a Python step per file (a mount builds this before
        # its first read): a package's files are runs of the manifest's order, and in a
        # checked manifest already in storage order (packages are written in path order).
        files = manifest.files
        blob_lane = len(manifest.packages)
        keys = [blob_lane if p is None else p for p in map(itemgetter(3), files)]
        runs: dict[int, list[range]] = {}
        start = 0
        for key, group in groupby(keys):
            stop = start + len(list(group))
            runs.setdefault(key, []).append(range(start, stop))
            start = stop
        sizes = list(map(itemgetter(1), files))
        lane = [0] * len(files)
        position = [0] * len(files)
        members_of: list[tuple[int, ...]] = []
        ends: list[tuple[int, ...]] = []
        for number, key in enumerate(sorted(runs)):
            members = list(chain.from_iterable(runs[key]))
            offsets = [files[i].offset or 0 for i in members] if key != blob_lane else []
            if not all(map(le, offsets, islice(offsets, 1, None))):
                members.sort(key=lambda i: files[i].offset or 0)
                for p, i in enumerate(members):
                    lane[i] = number
                    position[i] = p
            else:
                p = 0
                for run in runs[key]:
                    lane[run.start : run.stop] = repeat(number, len(run))
                    position[run.start : run.stop] = range(p, p + len(run))
                    p += len(run)
            members_of.append(tuple(members))
            ends.append(tuple(accumulate(map(sizes.__getitem__, members), initial=0)))
        return cls(tuple(lane), tuple(position), tuple(members_of), tuple(ends))


@dataclass
class _Stream:
    lane: int
    next: int  # one past the furthest position read
    ahead: int  # one past the furthest position planned
    window: int  # bytes to keep planned ahead of ``next``
    used: int  # when it was last continued, for forgetting


class ReadAhead:
    """Turns each read into the files to fetch ahead of it. Not thread-safe: one owner
    (the on-demand core's event loop) calls it."""

    def __init__(
        self,
        lanes: Lanes,
        *,
        first: int,
        most: int,
        trigger: int = TRIGGER,
        streams: int = STREAMS,
    ) -> None:
        self.lanes = lanes
        self.first = max(first, 1)
        self.most = max(most, self.first)
        self.trigger = trigger
        self.max_streams = streams
        self._streams: list[_Stream] = []
        self._tick = 0

    @classmethod
    def for_tuning(cls, lanes: Lanes, tuning: Tuning) -> ReadAhead:
        """Windows from the pull's network assumptions: the first chunk is worth a round
        trip (at least a bandwidth-delay product), the largest keeps every ranged GET
        the pull would run in flight."""
        return cls(lanes, first=2 * tuning.gap_bytes, most=tuning.range_requests * tuning.min_range)

    def on_read(self, index: int) -> list[int]:
        """Note a read of file ``index``; the files to fetch ahead of it, in storage order
        (never ``index`` itself, and each file at most once over the stream's life)."""
        self._tick += 1
        lane = self.lanes.lane[index]
        pos = self.lanes.position[index]
        stream = self._continued(lane, pos)
        if stream is None:
            self._remember(_Stream(lane, pos + 1, pos + 1, 0, self._tick))
            return []
        stream.used = self._tick
        stream.next = max(stream.next, pos + 1)
        return self._plan(stream)

    def on_reads(self, indexes: Sequence[int]) -> list[int]:
        """:meth:`on_read` for each of ``indexes`` in order (reads that were served without
        asking, heard of in a batch), the files to fetch ahead of them together. A run
        of reads that continue one stream moves its frontier read by read and plans
        once, after the run's last read: what one read at a time would plan, at most a
        batch later."""
        chosen: list[int] = []
        lanes = self.lanes
        trigger = self.trigger
        stream: _Stream | None = None
        for index in indexes:
            lane = lanes.lane[index]
            pos = lanes.position[index]
            if stream is not None and stream.lane == lane and stream.window:
                if stream.next - trigger <= pos < stream.next + trigger:
                    self._tick += 1
                    stream.used = self._tick
                    stream.next = max(stream.next, pos + 1)
                    continue
                chosen += self._plan(stream)
            chosen += self.on_read(index)
            stream = self._continued(lane, pos)
        if stream is not None and stream.window:
            chosen += self._plan(stream)
        return chosen

    def _plan(self, stream: _Stream) -> list[int]:
        """The next chunk of ``stream`` when less than half its window lies ahead."""
        stream.ahead = max(stream.ahead, stream.next)
        ends = self.lanes.ends[stream.lane]
        planned = ends[stream.ahead] - ends[stream.next]
        if stream.window and planned * 2 >= stream.window:
            return []
        stream.window = min(max(stream.window * 2, self.first), self.most)
        # The furthest position whose bytes still fit in the window after ``next``.
        end = bisect.bisect_right(ends, ends[stream.next] + stream.window) - 1
        end = min(max(end, stream.ahead + 1), len(ends) - 1)
        chosen = self.lanes.files[stream.lane][stream.ahead : end]
        stream.ahead = max(stream.ahead, end)
        return list(chosen)

    def _continued(self, lane: int, pos: int) -> _Stream | None:
        for stream in self._streams:
            if stream.lane != lane:
                continue
            # Near the reader's frontier only: a read that lands further inside what was
            # planned is random access, and must not grow the window.
            if stream.next - self.trigger <= pos < stream.next + self.trigger:
                return stream
        return None

    def _remember(self, stream: _Stream) -> None:
        if len(self._streams) >= self.max_streams:
            self._streams.remove(min(self._streams, key=lambda s: s.used))
        self._streams.append(stream)
