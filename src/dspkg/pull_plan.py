"""Which bytes a pull must download, computed as data before any request (pure).

Files the cache holds are skipped. Missing files that live in packages are grouped
into ranged GETs: neighbours are coalesced when the bytes between them cost less
to download than another request would (bandwidth x round trip), and long runs
are cut into ranges that can be fetched in parallel. Files without a package are
fetched blob by blob, a big one in parts by parallel ranged GETs. The same content
appearing under several paths is fetched once.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from dspkg import zipformat as zf
from dspkg.manifest import FileEntry, Manifest


@dataclass(frozen=True)
class Tuning:
    """How a pull uses the network: the one owner of its concurrency, used by the plan,
    its estimates and the fetcher alike."""

    rtt: float = 0.030  # seconds per round trip
    bandwidth: float = 125e6  # bytes per second
    min_range: int = 8 << 20  # a long run of files is cut into ranges of at least this
    max_range: int = 256 << 20  # ... and at most this
    range_requests: int = 8  # ranged GETs in flight (package ranges and parts of big blobs)
    blob_requests: int = 128  # per-file GETs in flight
    blob_part: int = 8 << 20  # a blob of two parts or more is fetched as parallel ranged GETs

    def with_jobs(self, jobs: int) -> Tuning:
        """``--jobs N``: at most N requests in flight of either kind."""
        jobs = max(jobs, 1)
        return replace(self, blob_requests=jobs, range_requests=min(self.range_requests, jobs))

    def range_limit(self, span: int) -> int:
        """How long one ranged GET may be when ``span`` bytes of a package are wanted:
        long enough that about ``range_requests`` requests cover it (every request costs
        a round trip, and some servers a pass over the whole object), short enough
        that they run in parallel."""
        return min(max(math.ceil(span / self.range_requests), self.min_range), self.max_range)

    def blob_parts(self, size: int) -> list[tuple[int, int]]:
        """The byte ranges a blob of ``size`` bytes is fetched in: one, or parts of about
        ``blob_part`` bytes fetched in parallel."""
        return even_parts(size, max(1, size // self.blob_part))

    @property
    def gap_bytes(self) -> int:
        """Bytes worth downloading to save one request."""
        return max(int(self.bandwidth * self.rtt), 64 << 10)


def even_parts(size: int, count: int) -> list[tuple[int, int]]:
    """``[start, end)`` ranges that cover ``size`` bytes in ``count`` nearly equal parts."""
    edges = [size * i // count for i in range(count + 1)]
    return list(itertools.pairwise(edges))


@dataclass(frozen=True)
class RangeFetch:
    package: int
    key: str
    start: int  # the local header of the first wanted entry
    end: int  # the end of the last wanted entry's data
    files: tuple[FileEntry, ...]

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class FetchPlan:
    uri: str
    files_total: int
    bytes_total: int
    files_cached: int
    bytes_cached: int
    ranges: tuple[RangeFetch, ...]
    blobs: tuple[FileEntry, ...]
    blob_gets: int  # requests for the blobs: a big one takes one per part

    @property
    def files_to_fetch(self) -> int:
        return sum(len(r.files) for r in self.ranges) + len(self.blobs)

    @property
    def bytes_to_fetch(self) -> int:
        return sum(r.size for r in self.ranges) + sum(f.size for f in self.blobs)

    @property
    def requests(self) -> int:
        return len(self.ranges) + self.blob_gets

    @property
    def packages(self) -> tuple[int, ...]:
        return tuple(sorted({r.package for r in self.ranges}))


def header_start(f: FileEntry) -> int:
    assert f.offset is not None
    return f.offset - zf.local_header_size(f.path.encode(), f.size)


def plan_fetch(
    manifest: Manifest, cached: Callable[[FileEntry], bool], tuning: Tuning = Tuning()
) -> FetchPlan:
    """Plan the downloads that fill the cache with every file of ``manifest``."""
    seen: set[str] = set()
    add = seen.add
    files_cached = bytes_cached = 0
    by_package: dict[int, list[FileEntry]] = {}
    blobs: list[FileEntry] = []
    # One pass a file, on the way to the first request: a million files take about a
    # second in Python, so nothing here is done twice.
    for f in manifest.files:
        sha = f.sha256
        if sha in seen:
            continue
        add(sha)
        if cached(f):
            files_cached += 1
            bytes_cached += f.size
        elif (package := f.package) is not None:
            group = by_package.get(package)
            if group is None:
                by_package[package] = [f]
            else:
                group.append(f)
        else:  # in no package: its blob is where it is (also in a --packages-only version)
            blobs.append(f)
    ranges: list[RangeFetch] = []
    for index in sorted(by_package):
        ranges.extend(coalesce(manifest, index, by_package[index], tuning))
    return FetchPlan(
        uri=str(manifest.uri),
        files_total=len(manifest.files),
        bytes_total=manifest.total_bytes,
        files_cached=files_cached,
        bytes_cached=bytes_cached,
        ranges=tuple(ranges),
        blobs=tuple(blobs),
        blob_gets=sum(len(tuning.blob_parts(f.size)) for f in blobs),
    )


def _offset(f: FileEntry) -> int:
    return f.offset or 0


def coalesce(
    manifest: Manifest, index: int, files: list[FileEntry], tuning: Tuning
) -> list[RangeFetch]:
    """The ranged GETs that fetch ``files`` of package ``index``."""
    key = manifest.packages[index].key
    files = sorted(files, key=_offset)
    span = (files[-1].offset or 0) + files[-1].size - header_start(files[0]) if files else 0
    limit = tuning.range_limit(span)
    gap = tuning.gap_bytes
    header = zf.LOCAL.size
    big = zf.MAX32
    ranges: list[RangeFetch] = []
    group: list[FileEntry] = []
    start = end = 0
    for f in files:
        offset = f.offset
        assert offset is not None
        size = f.size
        # header_start(f), inline: the local header's fixed part, the name, ZIP64's extra.
        f_start = (
            offset - header - len(f.path.encode()) - (zf.LOCAL_ZIP64_EXTRA if size >= big else 0)
        )
        f_end = offset + size
        if group and (f_start - end > gap or f_end - start > limit):
            ranges.append(RangeFetch(index, key, start, end, tuple(group)))
            group = []
        if not group:
            start = f_start
        group.append(f)
        end = f_end
    if group:
        ranges.append(RangeFetch(index, key, start, end, tuple(group)))
    return ranges


def estimate(plan: FetchPlan, manifest: Manifest, tuning: Tuning = Tuning()) -> dict[str, Any]:
    """Seconds each strategy would take for the missing files, by a simple latency and
    bandwidth model: per-file GETs, whole packages, and the planned ranges."""
    missing = [f for r in plan.ranges for f in r.files] + list(plan.blobs)
    nbytes = sum(f.size for f in missing)
    per_file = max(
        nbytes / tuning.bandwidth,
        math.ceil(len(missing) / tuning.blob_requests) * tuning.rtt,
    ) + (tuning.rtt if missing else 0)
    package_bytes = sum(manifest.packages[i].size for i in plan.packages)
    blob_bytes = sum(f.size for f in plan.blobs)
    whole = (
        (package_bytes + blob_bytes) / tuning.bandwidth
        + math.ceil(len(plan.blobs) / tuning.blob_requests) * tuning.rtt
        + (tuning.rtt if plan.requests else 0)
    )
    ranged = (
        plan.bytes_to_fetch / tuning.bandwidth
        + math.ceil(len(plan.ranges) / tuning.range_requests) * tuning.rtt
        + math.ceil(len(plan.blobs) / tuning.blob_requests) * tuning.rtt
        + (tuning.rtt if plan.requests else 0)
    )
    return {
        "assumptions": {"rtt_ms": tuning.rtt * 1000, "mbit": tuning.bandwidth * 8 / 1e6},
        "per_file": {"requests": len(missing), "bytes": nbytes, "seconds": round(per_file, 3)},
        "whole_packages": {
            "requests": len(plan.packages) + len(plan.blobs),
            "bytes": package_bytes + blob_bytes,
            "seconds": round(whole, 3),
        },
        "ranged": {
            "requests": plan.requests,
            "bytes": plan.bytes_to_fetch,
            "seconds": round(ranged, 3),
        },
    }
