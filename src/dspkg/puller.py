"""Consuming a dataset version: manifest -> what the cache lacks -> fetch -> verify -> link."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dspkg.cache import Cache
from dspkg.catalog import Catalog, manifest_key
from dspkg.errors import DspkgError, Integrity
from dspkg.fetcher import Fetcher
from dspkg.manifest import Manifest
from dspkg.materialize import LinkMode, MissingObject, materialize, plan_tree, prepare_destination
from dspkg.names import VersionUri
from dspkg.progress import Progress
from dspkg.pull_plan import FetchPlan, Tuning, estimate, plan_fetch
from dspkg.store import Store

# Objects can vanish between planning and linking (a concurrent prune); plan again.
MAX_ROUNDS = 3


@dataclass(frozen=True)
class PullOptions:
    link: LinkMode = LinkMode.AUTO
    jobs: int = 16
    dry_run: bool = False
    refetch: bool = False  # ignore what the cache holds (VH_NO_DATA_CACHE)
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


async def load_manifest(store: Store, cache: Cache, uri: VersionUri) -> Manifest:
    """The manifest of ``uri``: from the cache when this exact version was pulled before
    (versions are immutable), else from the store, then kept in the cache."""
    cached = cache.load_manifest(store.url, uri)
    if cached is not None:
        with contextlib.suppress(DspkgError):  # a damaged copy is just a cache miss
            return Manifest.from_json(cached, obj=f"cached manifest of {uri}")
    catalog = Catalog(store)
    resolved = await catalog.resolve(uri)
    cached = cache.load_manifest(store.url, resolved) if resolved != uri else None
    if cached is not None:
        return Manifest.from_json(cached, obj=f"cached manifest of {resolved}")
    key = manifest_key(resolved.dataset, resolved.version)
    data = await store.get(key)
    manifest = Manifest.from_json(data, obj=store.describe(key))
    if manifest.uri != resolved:
        raise Integrity(f"manifest of {resolved} describes {manifest.uri}", obj=str(resolved))
    cache.save_manifest(store.url, resolved, data)
    return manifest


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

    def cached(f: Any) -> bool:
        return not options.refetch and cache.lookup(f.sha256, f.size)

    plan = plan_fetch(manifest, cached, options.tuning)
    if options.dry_run:
        return _result(
            manifest,
            dest,
            store,
            before,
            started,
            plan,
            "none",
            (),
            dry=True,
            tuning=options.tuning,
        )
    prepare_destination(dest)
    fetched = 0
    fallbacks: list[str] = []
    tree = plan_tree(manifest.files)
    for round_ in range(MAX_ROUNDS):
        if round_:
            plan = plan_fetch(manifest, lambda f: cache.lookup(f.sha256, f.size), options.tuning)
        if plan.requests:
            progress.start(f"pulling {manifest.uri}", plan.files_to_fetch, plan.bytes_to_fetch)
            try:
                fetcher = Fetcher(store, cache, manifest, jobs=options.jobs, progress=progress)
                outcome = await fetcher.run(plan)
            finally:
                progress.done()
            fetched += outcome.files
            fallbacks.extend(outcome.fallbacks)
        try:
            used = materialize(tree, cache, dest, options.link)
            break
        except MissingObject:
            if round_ == MAX_ROUNDS - 1:
                raise
    cache.record_version(
        store.url,
        manifest.uri,
        files=len(manifest.files),
        nbytes=manifest.total_bytes,
        objects=(f.sha256 for f in manifest.files),
    )
    result = _result(manifest, dest, store, before, started, plan, used.value, tuple(fallbacks))
    return replace(result, files_fetched=fetched, files_from_cache=len(manifest.files) - fetched)


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
    dry: bool = False,
    tuning: Tuning | None = None,
) -> PullResult:
    plan_doc = None
    if dry:
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
