"""Consuming a dataset version: manifest -> what the cache lacks -> fetch -> verify -> link."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dspkg.cache import Cache
from dspkg.catalog import Catalog, manifest_key
from dspkg.errors import DspkgError, Integrity
from dspkg.fetcher import Fetcher
from dspkg.manifest import FileEntry, Manifest
from dspkg.materialize import LinkMode, MissingObject, TreeBuilder, plan_tree, prepare_destination
from dspkg.names import VersionUri
from dspkg.progress import Progress
from dspkg.pull_plan import FetchPlan, Tuning, estimate, plan_fetch
from dspkg.store import Store
from dspkg.upkeep import prune

# Objects can vanish between planning and linking (a concurrent prune); plan again.
MAX_ROUNDS = 3
# Files per hand-off to a disk thread when checking or linking cached files.
LINK_BATCH = 2000


@dataclass(frozen=True)
class PullOptions:
    link: LinkMode = LinkMode.AUTO
    jobs: int = 64
    disk_threads: int = 3
    dry_run: bool = False
    refetch: bool = False  # ignore what the cache holds (VH_NO_DATA_CACHE)
    max_cache_size: int | None = None  # evict down to this after pulling
    tuning: Tuning = field(default_factory=Tuning)


@dataclass(frozen=True)
class PullResult:
    uri: str
    dest: str
    files: int
    bytes: int
    bytes_downloaded: int
    requests: int
    files_from_cache: int
    files_fetched: int
    seconds: float
    link: str
    packaged: bool
    fallbacks: tuple[str, ...] = ()
    plan: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "uri": self.uri,
            "dest": self.dest,
            "files": self.files,
            "bytes": self.bytes,
            "bytes_downloaded": self.bytes_downloaded,
            "requests": self.requests,
            "files_from_cache": self.files_from_cache,
            "files_fetched": self.files_fetched,
            "seconds": round(self.seconds, 3),
            "link": self.link,
            "packaged": self.packaged,
        }
        if self.fallbacks:
            doc["fallbacks"] = list(self.fallbacks)
        if self.plan is not None:
            doc["dry_run"] = True
            doc["plan"] = self.plan
        return doc


def _cached_manifest(cache: Cache, store: str, uri: VersionUri) -> Manifest | None:
    data = cache.load_manifest(store, uri)
    if data is not None:
        with contextlib.suppress(DspkgError):  # a damaged copy is just a cache miss
            return Manifest.from_json(data, obj=f"cached manifest of {uri}")
    return None


async def load_manifest(store: Store, cache: Cache, uri: VersionUri) -> Manifest:
    """The manifest of ``uri``: from the cache when this exact version was pulled before
    (versions are immutable), else from the store, then kept in the cache."""
    manifest = _cached_manifest(cache, store.url, uri)
    if manifest is not None:
        return manifest
    resolved = await Catalog(store).resolve(uri)
    key = manifest_key(resolved.dataset, resolved.version)
    # Processes pulling the same version at once download its manifest once.
    lock = cache.lock(store.url, key)
    await lock.acquire_async()
    try:
        manifest = _cached_manifest(cache, store.url, resolved)
        if manifest is not None:
            return manifest
        data = await store.get(key)
        manifest = Manifest.from_json(data, obj=store.describe(key))
        if manifest.uri != resolved:
            raise Integrity(f"manifest of {resolved} describes {manifest.uri}", obj=str(resolved))
        cache.save_manifest(store.url, resolved, data)
        return manifest
    finally:
        lock.release()


async def pull_version(
    uri: VersionUri,
    dest: Path,
    store: Store,
    cache: Cache,
    options: PullOptions = PullOptions(),
    progress: Progress | None = None,
) -> PullResult:
    progress = progress or Progress()
    started = time.monotonic()
    before = (store.stats.bytes_down, store.stats.requests)
    manifest = await load_manifest(store, cache, uri)
    with (
        cache.pin(store.url, manifest.uri),
        ThreadPoolExecutor(max_workers=options.disk_threads) as disk,
    ):
        present = set() if options.refetch else await _cached(manifest, cache, disk)
        plan = plan_fetch(manifest, lambda f: f.sha256 in present, options.tuning)
        if options.dry_run:
            return _result(
                manifest, dest, store, before, started, plan, "none", (), tuning=options.tuning
            )
        prepare_destination(dest)
        builder = TreeBuilder(cache, dest, options.link)
        builder.begin(plan_tree(manifest.files))
        try:
            fetched, fallbacks = await _fill(
                manifest, plan, store, cache, disk, builder, options, progress
            )
            builder.commit()
        except BaseException:
            builder.abort()
            raise
        cache.record_version(
            store.url,
            manifest.uri,
            files=len(manifest.files),
            nbytes=manifest.total_bytes,
            objects=(f.sha256 for f in manifest.files),
        )
        if options.max_cache_size is not None:
            prune(cache, options.max_cache_size)  # this version stays: it is pinned
    result = _result(manifest, dest, store, before, started, plan, builder.mode.value, fallbacks)
    return replace(result, files_fetched=fetched, files_from_cache=len(manifest.files) - fetched)


async def _cached(manifest: Manifest, cache: Cache, disk: Executor) -> set[str]:
    """The objects of ``manifest`` the cache holds intact, checked in the disk threads."""
    unique = list({f.sha256: f.size for f in manifest.files}.items())

    def check(part: list[tuple[str, int]]) -> list[str]:
        return [sha for sha, size in part if cache.lookup(sha, size)]

    loop = asyncio.get_running_loop()
    parts = [unique[i : i + LINK_BATCH] for i in range(0, len(unique), LINK_BATCH)]
    found = await asyncio.gather(*(loop.run_in_executor(disk, check, part) for part in parts))
    return {sha for part in found for sha in part}


async def _fill(
    manifest: Manifest,
    plan: FetchPlan,
    store: Store,
    cache: Cache,
    disk: Executor,
    builder: TreeBuilder,
    options: PullOptions,
    progress: Progress,
) -> tuple[int, tuple[str, ...]]:
    """Fetch what is missing and link every file into the staging tree, both at once.

    Cached files are linked in the disk threads while the download runs; fetched
    files are linked the moment they enter the cache. An object that vanishes
    before it is linked (a concurrent prune) is fetched again in another round.
    """
    loop = asyncio.get_running_loop()
    paths: dict[str, list[FileEntry]] = {}
    for f in manifest.files:
        paths.setdefault(f.sha256, []).append(f)

    inserted: set[str] = set()

    def link_fetched(entry: FileEntry) -> None:
        missing = builder.link(paths[entry.sha256])
        if missing:
            raise MissingObject(missing[0])
        inserted.add(entry.sha256)

    fetched = 0
    fallbacks: list[str] = []
    todo = list(manifest.files)
    for round_ in range(MAX_ROUNDS):
        planned = {f.sha256 for r in plan.ranges for f in r.files} | {f.sha256 for f in plan.blobs}
        ready = [f for f in todo if f.sha256 not in planned]
        links = [
            loop.run_in_executor(disk, builder.link, ready[i : i + LINK_BATCH])
            for i in range(0, len(ready), LINK_BATCH)
        ]
        try:
            if plan.requests:
                progress.start(f"pulling {manifest.uri}", plan.files_to_fetch, plan.bytes_to_fetch)
                fetcher = Fetcher(
                    store,
                    cache,
                    manifest,
                    disk,
                    jobs=options.jobs,
                    progress=progress,
                    on_insert=link_fetched,
                    tuning=options.tuning,
                )
                outcome = await fetcher.run(plan)
                fetched += outcome.files
                fallbacks.extend(outcome.fallbacks)
            # Files another process fetched while this one waited for it.
            others = [f for f in todo if f.sha256 in planned and f.sha256 not in inserted]
            links += [
                loop.run_in_executor(disk, builder.link, others[i : i + LINK_BATCH])
                for i in range(0, len(others), LINK_BATCH)
            ]
        finally:
            progress.done()
            missing = [f for part in await asyncio.gather(*links) for f in part]
        if not missing:
            return fetched, tuple(fallbacks)
        if round_ == MAX_ROUNDS - 1:
            raise MissingObject(missing[0])
        todo = missing
        plan = plan_fetch(manifest, _absent({f.sha256 for f in missing}), options.tuning)
    raise AssertionError("unreachable")


def _absent(gone: set[str]) -> Callable[[FileEntry], bool]:
    return lambda f: f.sha256 not in gone


def _result(
    manifest: Manifest,
    dest: Path,
    store: Store,
    before: tuple[int, int],
    started: float,
    plan: FetchPlan,
    link: str,
    fallbacks: tuple[str, ...],
    *,
    tuning: Tuning | None = None,
) -> PullResult:
    """The result of a pull; with ``tuning`` (a dry run), the plan and its estimates."""
    plan_doc = None
    dry = tuning is not None
    if tuning is not None:
        plan_doc = {
            "files_to_fetch": plan.files_to_fetch,
            "bytes_to_fetch": plan.bytes_to_fetch,
            "requests": plan.requests,
            "ranges": len(plan.ranges),
            "blobs": len(plan.blobs),
            "files_cached": plan.files_cached,
            "estimates": estimate(plan, manifest, tuning),
        }
    return PullResult(
        uri=str(manifest.uri),
        dest=str(dest),
        files=len(manifest.files),
        bytes=manifest.total_bytes,
        bytes_downloaded=store.stats.bytes_down - before[0],
        requests=store.stats.requests - before[1],
        files_from_cache=len(manifest.files) - plan.files_to_fetch,
        files_fetched=0 if dry else plan.files_to_fetch,
        seconds=time.monotonic() - started,
        link=link,
        packaged=manifest.packaged,
        fallbacks=fallbacks,
        plan=plan_doc,
    )
