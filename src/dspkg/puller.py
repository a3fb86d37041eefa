"""Consuming a dataset version: manifest -> what the cache lacks -> fetch -> verify -> link."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import os
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from dspkg import memory
from dspkg.cache import Cache
from dspkg.catalog import whole
from dspkg.concurrency import in_thread
from dspkg.errors import DestinationError
from dspkg.fetcher import Fetcher
from dspkg.loader import FileStream, Loaded, load_files, load_version, reload_root
from dspkg.manifest import FileEntry, Manifest, ManifestRoot
from dspkg.materialize import LinkMode, MissingObject, TreeBuilder, plan_tree, prepare_destination
from dspkg.names import VersionUri
from dspkg.progress import Progress
from dspkg.pull_plan import FetchPlan, Tuning, estimate, plan_fetch
from dspkg.store import Store
from dspkg.subset import EVERYTHING, Subset
from dspkg.upkeep import prune

# Objects can vanish between planning and linking (a concurrent prune); plan again.
MAX_ROUNDS = 3
# Files per hand-off to a disk thread when checking or linking cached files.
LINK_BATCH = 2000
# A cache is listed (rather than stat'ed object by object) while its folders hold at most
# this many names per object a pull needs: a name listed costs far less than a stat.
LIST_BUDGET = 20
# Files a pull of a whole version holds at once (about 1.5 kB each): a version of up to
# twice this many is pulled in one pass, as it always was (the 100,000-file pull stays as
# fast); a bigger one a batch at a time (whole shards, or slices of a big shard), so that
# its memory stays flat however many files it has.
BATCH_FILES = 50_000


@dataclass(frozen=True)
class PullOptions:
    link: LinkMode = LinkMode.AUTO
    disk_threads: int = 2
    dry_run: bool = False
    refetch: bool = False  # ignore what the cache holds (VH_NO_DATA_CACHE)
    max_cache_size: int | None = None  # evict down to this after pulling
    speedups: bool = True  # the compiled extractor, where it is built
    tuning: Tuning = field(default_factory=Tuning)
    batch_files: int = BATCH_FILES  # see BATCH_FILES


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
    manifest: Manifest | None = field(default=None, compare=False, repr=False)
    # What the pull took: the whole version unless a selection or shard narrowed it.
    selected_files: int = 0
    selected_bytes: int = 0

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
            "selected_files": self.selected_files,
            "selected_bytes": self.selected_bytes,
        }
        if self.fallbacks:
            doc["fallbacks"] = list(self.fallbacks)
        if self.plan is not None:
            doc["dry_run"] = True
            doc["plan"] = self.plan
        return doc


async def pull_version(
    uri: VersionUri,
    dest: Path,
    store: Store,
    cache: Cache,
    options: PullOptions = PullOptions(),
    progress: Progress | None = None,
    subset: Subset = EVERYTHING,
) -> PullResult:
    """Make ``uri`` appear in ``dest``; with ``options.dry_run``, only plan it.
    ``subset`` picks the files to take (default: all of them).

    A dry run reads the cache without opening it and writes nothing anywhere.
    """
    progress = progress or Progress()
    started = time.monotonic()
    before = (store.stats.bytes_down, store.stats.requests)
    loaded = await load_version(store, cache, uri, read_only=options.dry_run)
    root = loaded.root

    async def files_of(root: ManifestRoot) -> Manifest:
        """A subset reads only the manifest shards whose path range it may match (all of
        a v1 manifest): the result then holds those shards' files, the root the totals."""
        shards = None
        if not subset.everything:
            # One shard at least: a selection that matches nothing is named from real files.
            shards = [s for s in root.shards if subset.may_match_range(s.first, s.last)]
            shards = shards or list(root.shards[:1])
        files = await load_files(store, cache, root, shards, read_only=options.dry_run)
        return whole(root, files)

    async def refresh() -> tuple[Manifest, Manifest] | None:
        """The view and the version again, if packages were added since the cache's copy."""
        fresh = await reload_root(store, cache, root.uri, read_only=options.dry_run)
        if (
            fresh is None
            or fresh.packages == root.packages
            or fresh.file_digest() != root.file_digest()
        ):
            return None
        version = await files_of(fresh)
        return subset.view(version), version

    if (
        not options.dry_run
        and subset.everything
        and root.inline is None
        and root.files > 2 * options.batch_files
    ):
        return await _pull_in_batches(
            loaded, dest, store, cache, options, progress, before, started
        )
    version = await files_of(root)
    # From here on the manifest lists only the chosen files (its packages stay whole).
    manifest = subset.view(version)
    if options.dry_run:
        present = set() if options.refetch else _cached(manifest, cache)
        if loaded.cached and _needs_blobs(manifest, present):
            manifest, version = await refresh() or (manifest, version)
        plan = plan_fetch(manifest, lambda f: f.sha256 in present, options.tuning)
        return _result(
            manifest, dest, store, before, started, plan, tuning=options.tuning, root=root
        )
    with (
        _destination_lock(cache, dest),
        cache.pin(store.url, manifest.uri),
        ThreadPoolExecutor(max_workers=options.disk_threads) as disk,
    ):
        with _removed_on_failure(dest):
            prepare_destination(dest)
            builder = TreeBuilder(cache, dest, options.link, speedups=options.speedups)
            files = manifest.files
            try:
                # In a disk thread, settled before a cancellation goes on: it makes the
                # staging tree's folders, which the cleanup then removes.
                await in_thread(disk, lambda: builder.begin(plan_tree(files)))
                fetched, _, fallbacks, manifest, version = await _fill(
                    manifest,
                    store,
                    cache,
                    disk,
                    builder,
                    options,
                    progress,
                    version,
                    refresh if loaded.cached else None,
                )
                builder.commit()
            except BaseException:
                builder.abort()
                raise
        _record_use(cache, store.url, version, manifest, root.files)
        if options.max_cache_size is not None:
            prune(cache, options.max_cache_size)  # this version stays: it is pinned
    return _result(
        manifest,
        dest,
        store,
        before,
        started,
        None,
        builder.mode.value,
        fallbacks,
        fetched,
        root=root,
    )


class _Refreshed(Exception):
    """The store's root has packages the cache's copy lacked: pull with it instead."""

    def __init__(self, root: ManifestRoot) -> None:
        super().__init__(str(root.uri))
        self.root = root


async def _pull_in_batches(
    loaded: Loaded,
    dest: Path,
    store: Store,
    cache: Cache,
    options: PullOptions,
    progress: Progress,
    before: tuple[int, int],
    started: float,
) -> PullResult:
    """A whole version of many files, a batch at a time (see ``BATCH_FILES``): load the
    batch, link what the cache holds, fetch the rest (ranges of the packages the
    batch uses), next batch; the staging tree in DEST grows until the end, when it is
    moved into place as in a pull in one pass. Memory holds one batch's files, never the
    version's; an object shared by files of several batches is fetched by the first and
    linked from the cache by the others.

    A root from the cache that lacks packages added since (``dspkg package``) is read
    again when a batch would fetch files from their blobs; the pull then starts over with
    the store's root, and files already in the tree are skipped.
    """
    root = loaded.root
    refreshable = loaded.cached

    async def refresh() -> tuple[Manifest, Manifest] | None:
        nonlocal refreshable
        if not refreshable:
            return None
        refreshable = False
        fresh = await reload_root(store, cache, root.uri)
        if (
            fresh is None
            or fresh.packages == root.packages
            or fresh.file_digest() != root.file_digest()
        ):
            return None
        raise _Refreshed(fresh)

    # Under refetch, objects written after this moment are this pull's own: files of
    # later batches link them.
    since = _file_clock(cache) if options.refetch else None
    stream = FileStream(store, cache, root, batch_files=options.batch_files)
    await stream.check()  # a damaged manifest fails here, before DEST is touched
    with (
        _destination_lock(cache, dest),
        cache.pin(store.url, root.uri),
        ThreadPoolExecutor(max_workers=options.disk_threads) as disk,
    ):
        with _removed_on_failure(dest):  # a later batch may fail after DEST was made
            prepare_destination(dest)
            builder = TreeBuilder(cache, dest, options.link, speedups=options.speedups)
            builder.begin()
            try:
                while True:
                    progress.start(f"pulling {root.uri}", root.files, root.bytes)
                    try:
                        totals = await _fill_batches(
                            stream, store, cache, disk, builder, options, progress, refresh, since
                        )
                        break
                    except _Refreshed as fresh:
                        root = fresh.root
                        stream = FileStream(store, cache, root, batch_files=options.batch_files)
                        await stream.check()
                    finally:
                        progress.done()
                builder.commit()
            except BaseException:
                builder.abort()
                raise
        if options.max_cache_size is not None:
            prune(cache, options.max_cache_size)  # this version stays: it is pinned
    fetched, fallbacks = totals
    return PullResult(
        uri=str(root.uri),
        dest=str(dest),
        files=root.files,
        bytes=root.bytes,
        bytes_downloaded=store.stats.bytes_down - before[0],
        requests=store.stats.requests - before[1],
        files_from_cache=root.files - fetched,
        files_fetched=fetched,
        seconds=time.monotonic() - started,
        link=builder.mode.value,
        packaged=root.packaged,
        fallbacks=fallbacks,
        manifest=None,  # never held whole
        selected_files=root.files,
        selected_bytes=root.bytes,
    )


async def _fill_batches(
    stream: FileStream,
    store: Store,
    cache: Cache,
    disk: Executor,
    builder: TreeBuilder,
    options: PullOptions,
    progress: Progress,
    refresh: Callable[[], Awaitable[tuple[Manifest, Manifest] | None]],
    since: float | None,
) -> tuple[int, tuple[str, ...]]:
    """Every batch of ``stream`` (checked) into the builder's tree; the version's use
    recorded. Returns the files fetched and the fallbacks taken."""
    root = stream.root
    fetched = 0
    fallbacks: list[str] = []
    warned: set[str] = set()  # a refused package spans batches: one warning
    # The cache's record of the version lists its objects: streamed to a temp file as
    # batches go, written once all are in (unless a record exists, which is touched).
    listing = None if cache.holds_record(store.url, root.uri) else cache.temp_path()
    try:
        with contextlib.ExitStack() as stack:
            objects = stack.enter_context(open(listing, "w")) if listing else None
            async for files in stream.parts():
                shas, files_fetched, taken = await _fill_batch(
                    root,
                    files,
                    store,
                    cache,
                    disk,
                    builder,
                    options,
                    progress,
                    refresh,
                    since,
                    warned,
                )
                del files
                fetched += files_fetched
                fallbacks.extend(f for f in taken if f not in fallbacks)
                if objects is not None:
                    objects.write("".join(f"{sha}\n" for sha in shas))
                del shas  # before the next batch loads: one batch in memory at a time
                memory.trim()
        objects_listed = _lines(listing) if listing else iter(())
        cache.record_version(
            store.url,
            root.uri,
            files=root.files,
            nbytes=root.bytes,
            objects=objects_listed,
            sort=False,
        )
    finally:
        if listing is not None:
            listing.unlink(missing_ok=True)
    return fetched, tuple(fallbacks)


async def _fill_batch(
    root: ManifestRoot,
    files: tuple[FileEntry, ...],
    store: Store,
    cache: Cache,
    disk: Executor,
    builder: TreeBuilder,
    options: PullOptions,
    progress: Progress,
    refresh: Callable[[], Awaitable[tuple[Manifest, Manifest] | None]],
    since: float | None,
    warned: set[str],
) -> tuple[list[str], int, tuple[str, ...]]:
    """One batch into the tree; returns its objects (each once), the files fetched and
    the fallbacks taken. Nothing of the batch but its objects outlives the call."""
    manifest = whole(root, files)
    builder.add(plan_tree(files))
    try:
        filled = await _fill(
            manifest,
            store,
            cache,
            disk,
            builder,
            options,
            progress,
            refresh=refresh,
            phases=False,
            since=since,
            warned=warned,
        )
    finally:
        builder.forget()
    progress.advance(len(files) - filled.files, manifest.total_bytes - filled.bytes)
    return list(dict.fromkeys(f.sha256 for f in files)), filled.files, filled.fallbacks


def _file_clock(cache: Cache) -> float:
    """Now, as the file system stamps files in the cache (its clock is coarser than
    ``time.time()`` and may lag it): the mtime of a file written and removed."""
    probe = cache.temp_path()
    probe.write_bytes(b"")
    try:
        return probe.stat().st_mtime
    finally:
        probe.unlink()


def _lines(path: Path) -> Iterator[str]:
    with open(path) as lines:
        for line in lines:
            yield line.rstrip("\n")


def _record_use(
    cache: Cache, store: str, version: Manifest, taken: Manifest, version_files: int
) -> None:
    """Note the use of ``version`` for LRU eviction. A subset pull records only the
    objects it linked, merged with what earlier subsets recorded, and never claims the
    whole version: eviction would otherwise count the rest as held. (``version`` may hold
    only the shards a subset read; ``version_files`` counts them all.)"""
    if taken is version:
        # In the manifest's order, each once: readers take the set, and sorting a
        # million names would cost a second after the last byte has landed.
        cache.record_version(
            store,
            version.uri,
            files=len(version.files),
            nbytes=version.total_bytes,
            objects=dict.fromkeys(f.sha256 for f in version.files),
            sort=False,
        )
        return

    def tally(objects: set[str]) -> tuple[int, int, bool]:
        held = [f for f in version.files if f.sha256 in objects]
        return len(held), sum(f.size for f in held), len(held) == version_files

    cache.record_part(store, version.uri, objects=(f.sha256 for f in taken.files), tally=tally)


@contextlib.contextmanager
def _removed_on_failure(dest: Path) -> Iterator[None]:
    """A DEST that the pull made is removed again when the pull fails (empty by then:
    the tree is staged beside it)."""
    created = not dest.exists()
    try:
        yield
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                dest.rmdir()
        raise


@contextlib.contextmanager
def _destination_lock(cache: Cache, dest: Path) -> Iterator[None]:
    """One pull at a time into a DEST, which must not lie inside the cache."""
    real = Path(os.path.realpath(dest))
    if real.is_relative_to(os.path.realpath(cache.root)):
        raise DestinationError(
            f"destination {dest} is inside the cache directory {cache.root}; "
            "pull into a directory outside it",
            path=str(dest),
        )
    lock = cache.lock("destination", str(real))
    if not lock.try_acquire():
        raise DestinationError(
            f"another dspkg pull is writing into {dest} right now; wait for it to finish "
            "or pull into another directory",
            path=str(dest),
        )
    try:
        yield
    finally:
        lock.release()


def _cached(manifest: Manifest, cache: Cache) -> set[str]:
    """The objects of ``manifest`` the cache holds intact (one ``stat`` each; read only)."""
    unique = {f.sha256: f.size for f in manifest.files}
    return {sha for sha, size in unique.items() if cache.lookup(sha, size, read_only=True)}


async def _fill(
    manifest: Manifest,
    store: Store,
    cache: Cache,
    disk: Executor,
    builder: TreeBuilder,
    options: PullOptions,
    progress: Progress,
    version: Manifest | None = None,
    refresh: Callable[[], Awaitable[tuple[Manifest, Manifest] | None]] | None = None,
    *,
    phases: bool = True,
    since: float | None = None,
    warned: set[str] | None = None,
) -> _Filled:
    """Link every cached file into the staging tree, then fetch the rest into both.

    Checking and linking cached files is one pass in the disk threads (a warm pull is
    just that pass); the builder is the fetcher's sink, so fetched files land in the
    tree and the cache the moment they are verified. An object that vanishes before it
    is linked (a concurrent prune) is fetched again. ``version`` is the whole manifest
    when ``manifest`` lists a subset: the fetcher checks a package's directory against
    all its files. ``refresh`` reads the manifest again when files the cache lacks are in
    no package (the cache's copy may predate packages that ``dspkg package`` added).
    ``phases``: each round of fetching is a progress phase of its own (else the caller's
    phase goes on). ``since``: with refetch, objects the cache got since then are linked
    (a batched pull's own, see :meth:`TreeBuilder.link_cached`).
    Returns the files and bytes fetched, the fallbacks, and the manifest and version it used.
    """
    loop = asyncio.get_running_loop()
    warned = set() if warned is None else warned
    # The builder's grouping of the same files (built as it planned the tree): a second
    # one costs about a second a million files, on the way to the first request.
    paths: Mapping[str, list[FileEntry]] = builder.groups

    async def link_cached(shas: list[str], since: float | None = None) -> set[str]:
        """Link the files of every intact cached object, in the disk threads; return
        the objects still to fetch."""
        groups = [paths[sha] for sha in shas]
        parts = [groups[i : i + LINK_BATCH] for i in range(0, len(groups), LINK_BATCH)]
        link = functools.partial(builder.link_cached, since=since)
        done = await asyncio.gather(*(loop.run_in_executor(disk, link, part) for part in parts))
        return {sha for part in done for sha in part}

    looked = time.time()  # when the cache was looked at, for the fetcher's second look
    if options.refetch and since is None:
        missing = set(paths)
    else:
        # Only objects whose names are in the cache can be linked: one listing of each
        # folder instead of a failing stat per object (an empty cache costs nothing).
        named = await loop.run_in_executor(
            disk, functools.partial(cache.named, paths, budget=LIST_BUDGET * len(paths))
        )
        if named is None:
            missing = await link_cached(list(paths), since)
        elif named:
            candidates = [s for s in paths if s in named]
            missing = set(paths).difference(candidates) | await link_cached(candidates, since)
        else:  # nothing of it in the cache (a cold pull): nothing to link
            missing = set(paths)
    if refresh is not None and _needs_blobs(manifest, {*paths} - missing):
        updated = await refresh()
        if updated is not None:
            manifest, version = updated
            regrouped: dict[str, list[FileEntry]] = {}
            for f in manifest.files:
                regrouped.setdefault(f.sha256, []).append(f)
            paths = regrouped
    fetched = fetched_bytes = 0
    fallbacks: list[str] = []
    for _ in range(MAX_ROUNDS):
        if not missing:
            return _Filled(fetched, fetched_bytes, tuple(fallbacks), manifest, version or manifest)
        plan = await loop.run_in_executor(  # in a thread, as the tree's plan
            disk, functools.partial(plan_fetch, manifest, _absent(missing), options.tuning)
        )
        if phases:
            progress.start(f"pulling {manifest.uri}", plan.files_to_fetch, plan.bytes_to_fetch)
        try:
            fetcher = Fetcher(
                store,
                cache,
                version or manifest,
                disk,
                tuning=options.tuning,
                progress=progress,
                sink=builder,
                speedups=options.speedups,
                # Under refetch, no second look: it would take the cache's older objects.
                planned_at=math.inf if options.refetch else looked,
                warned=warned,
            )
            outcome = await fetcher.run(plan)
        finally:
            if phases:
                progress.done()
        fetched += outcome.files
        fetched_bytes += outcome.bytes
        fallbacks.extend(outcome.fallbacks)
        # Objects another process fetched while this one waited for it, or that vanished.
        looked = time.time()
        missing = await link_cached([sha for sha in missing if sha not in builder.placed_objects])
    raise MissingObject(paths[next(iter(missing))][0])


class _Filled(NamedTuple):
    files: int  # fetched
    bytes: int
    fallbacks: tuple[str, ...]
    manifest: Manifest  # the one filled (read again when packages were added)
    version: Manifest


def _needs_blobs(manifest: Manifest, present: set[str]) -> bool:
    """Whether some file to fetch is in no package (so would come from its blob)."""
    return any(f.package is None and f.sha256 not in present for f in manifest.files)


def _absent(gone: set[str]) -> Callable[[FileEntry], bool]:
    return lambda f: f.sha256 not in gone


def _result(
    manifest: Manifest,
    dest: Path,
    store: Store,
    before: tuple[int, int],
    started: float,
    plan: FetchPlan | None,
    link: str = "none",
    fallbacks: tuple[str, ...] = (),
    fetched: int = 0,
    *,
    tuning: Tuning | None = None,
    root: ManifestRoot | None = None,
) -> PullResult:
    """The result of a pull; with a ``plan`` (a dry run), the plan and its estimates."""
    plan_doc = None
    if plan is not None:
        plan_doc = {
            "files_to_fetch": plan.files_to_fetch,
            "bytes_to_fetch": plan.bytes_to_fetch,
            "requests": plan.requests,
            "ranges": len(plan.ranges),
            "blobs": len(plan.blobs),
            "files_cached": plan.files_cached,
            "estimates": estimate(plan, manifest, tuning or Tuning()),
        }
    return PullResult(
        uri=str(manifest.uri),
        dest=str(dest),
        files=root.files if root is not None else len(manifest.files),
        bytes=root.bytes if root is not None else manifest.total_bytes,
        bytes_downloaded=store.stats.bytes_down - before[0],
        requests=store.stats.requests - before[1],
        files_from_cache=len(manifest.files) - (plan.files_to_fetch if plan else fetched),
        files_fetched=fetched,
        seconds=time.monotonic() - started,
        link=link,
        packaged=manifest.packaged,
        fallbacks=fallbacks,
        plan=plan_doc,
        manifest=manifest,
        selected_files=len(manifest.files),
        selected_bytes=manifest.total_bytes,
    )
