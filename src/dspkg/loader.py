"""The one way a consumer gets a manifest: the cache's copy, else the store, validated once.

A version's root (or v1 manifest) and its shards are immutable, so the cache keeps what it
validated: a root with a note of its hash once the whole version was checked, and shards
under their own hash (a copy that still hashes to its name is one that passed). Later
loads skip what was checked. Aliases move, so they are always resolved in the store.
Processes loading the same version at once download its root once: the others wait for
the lock and find it in the cache.

Consumers that need only some files load the root (:func:`load_root`), then only the
shards that can hold them (:func:`load_files` with ``ManifestRoot.shards_for(prefix)``).

A version's files never change, but its package facts may grow: ``dspkg package`` adds
packages to a version made without them. The cache's copy then still works (its blobs
stay), and a pull about to fetch files in no package reads the store's root again first
(:func:`reload_root`), so it uses the new packages.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from itertools import chain
from typing import NamedTuple

from dspkg.cache import Cache
from dspkg.catalog import (
    Catalog,
    chosen_shards,
    decode_in_thread,
    load_joined,
    load_shards,
    parse_root,
    whole,
)
from dspkg.errors import DspkgError
from dspkg.layout import manifest_key
from dspkg.manifest import (
    FileEntry,
    Manifest,
    ManifestRoot,
    ShardInfo,
    collector_paused,
    make_entries,
)
from dspkg.names import VersionUri
from dspkg.shards import JoinStream, Records, decode_shard, join_shards, shard_batches
from dspkg.store import Store


async def load_manifest(
    store: Store, cache: Cache, uri: VersionUri, *, read_only: bool = False
) -> Manifest:
    """The manifest of ``uri`` (a version or an alias such as ``latest``), every file.

    ``read_only`` (a dry run) writes nothing to the cache: no copy, no note, no lock.
    """
    root = await load_root(store, cache, uri, read_only=read_only)
    return whole(root, await load_files(store, cache, root, read_only=read_only))


class Loaded(NamedTuple):
    root: ManifestRoot
    cached: bool  # the cache's copy: packages added since are not in it


async def load_root(
    store: Store, cache: Cache, uri: VersionUri, *, read_only: bool = False
) -> ManifestRoot:
    """The root of ``uri`` (a version or an alias); a v1 manifest comes with its files."""
    return (await load_version(store, cache, uri, read_only=read_only)).root


async def load_version(
    store: Store, cache: Cache, uri: VersionUri, *, read_only: bool = False
) -> Loaded:
    """:func:`load_root`, saying whether the root is the cache's copy."""
    catalog = Catalog(store)
    loaded = await _load(catalog, cache, uri, read_only)
    if loaded is None:  # not a version: an alias
        resolved = await catalog.resolve_alias(uri)
        loaded = await _load(catalog, cache, resolved, read_only)
        if loaded is None:
            raise catalog.not_found(resolved)
    return loaded


async def reload_root(
    store: Store, cache: Cache, uri: VersionUri, *, read_only: bool = False
) -> ManifestRoot | None:
    """The store's root of exactly ``uri`` now (one request), validated and kept in the
    cache in place of the older copy (unless ``read_only``); None if it is gone."""
    return await _fetch(Catalog(store), cache, uri, read_only=read_only)


async def load_files(
    store: Store,
    cache: Cache,
    root: ManifestRoot,
    shards: Sequence[ShardInfo] | None = None,
    *,
    read_only: bool = False,
) -> tuple[FileEntry, ...]:
    """The files of ``shards`` of ``root`` (all when None), checked together.

    A v1 manifest has no shards: all its files are returned, for the caller to select.
    """
    if root.inline is not None:
        return root.inline
    chosen = chosen_shards(root, shards)
    obj = store.describe(manifest_key(root.dataset, root.version))
    load = shard_loader(store, cache, root, read_only=read_only)
    files = await load_joined(root, chosen, load, obj=obj, checked=root.validated)
    if chosen == root.shards and not root.validated and not read_only:
        _note_checked(cache, store.url, root)
    return files


def join_files(
    store: Store,
    cache: Cache,
    root: ManifestRoot,
    shards: Sequence[ShardInfo],
    records: Sequence[Records],
    *,
    entries: Sequence[tuple[FileEntry, ...]] | None = None,
    read_only: bool = False,
) -> tuple[FileEntry, ...]:
    """The files of ``shards`` (in the root's order, each with its ``records``, loaded by
    :func:`shard_loader`; ``entries``: made of them already), checked together; all of
    them: the version noted checked. What :func:`load_files` does once the shards are in,
    for a caller that loads them itself (a mount, a shard at a time)."""
    obj = store.describe(manifest_key(root.dataset, root.version))
    files = join_shards(root, shards, records, obj=obj, checked=root.validated, entries=entries)
    if tuple(shards) == root.shards and not root.validated and not read_only:
        _note_checked(cache, store.url, root)
    return files


def shard_loader(
    store: Store, cache: Cache, root: ManifestRoot, *, read_only: bool = False
) -> Callable[[ShardInfo], Awaitable[Records]]:
    """Loads one shard of ``root``: the cache's copy, else the store's (then kept), each
    checked on its own (see :func:`~dspkg.shards.decode_shard`)."""
    catalog = Catalog(store)

    async def load(shard: ShardInfo) -> Records:
        name = shard.key.rpartition("/")[2]
        kept = cache.load_shard(store.url, root.dataset, name)
        if kept is not None:
            with contextlib.suppress(DspkgError):  # a damaged copy is a miss
                return await decode_in_thread(kept, shard, obj=f"cached shard {name}", trusted=True)
        data = await catalog.shard_bytes(root, shard)
        records = await decode_in_thread(data, shard, obj=store.describe(shard.key), trusted=False)
        if not read_only:
            cache.save_shard(store.url, root.dataset, name, data)
        return records

    return load


class FileStream:
    """A version's files a batch of whole shards at a time, in path order: what a pull of
    a whole version holds at once is one batch, never the version.

    :meth:`check` first reads every shard once and checks them as :func:`load_files`
    would (each shard, then across shards in bounded memory, see
    :class:`~dspkg.shards.JoinStream`), keeping them in the cache and noting the version
    checked: a damaged or hostile manifest fails before anything is fetched or written,
    as in a pull that loads it whole. :meth:`load` then reads each batch again (the
    cache's checked copies) and hands out its files at most ``batch_files`` at a time.
    """

    def __init__(self, store: Store, cache: Cache, root: ManifestRoot, *, batch_files: int):
        if root.inline is not None:
            raise ValueError("a v1 manifest has no shards to stream")
        self.store = store
        self.cache = cache
        self.root = root
        self.batch_files = batch_files
        self.batches = shard_batches(root.shards, batch_files)
        self._load = shard_loader(store, cache, root)

    async def check(self) -> None:
        """Read and check every shard, a batch at a time (nothing when the cache's note
        says the version was checked); then note it checked."""
        if self.root.validated:
            return
        join = JoinStream(
            self.root, obj=self.store.describe(manifest_key(self.root.dataset, self.root.version))
        )
        for batch in self.batches:
            join.add(batch, await load_shards(batch, self._load))
        suspects = join.suspects()
        if suspects:  # a damaged version: read its paths again to name the pair
            paths: list[str] = []
            for batch in self.batches:
                records = await load_shards(batch, self._load)
                paths.extend(chain.from_iterable(r.paths for r in records))
            join.name_collision(paths, suspects)
        _note_checked(self.cache, self.store.url, self.root)

    async def parts(self) -> AsyncIterator[tuple[FileEntry, ...]]:
        """The version's files in path order, at most ``batch_files`` at a time, after
        :meth:`check`: a batch of small shards together, a big shard in slices (its
        records, as columns, take a fraction of what its file entries would)."""
        size = self.batch_files
        for batch in self.batches:
            records = await load_shards(batch, self._load)
            if len(batch) == 1 and batch[0].count > size:
                (columns,) = records
                del records
                for start in range(0, batch[0].count, size):
                    with collector_paused():
                        yield make_entries(*(c[start : start + size] for c in columns))
                continue
            with collector_paused():
                files = tuple(chain.from_iterable(make_entries(*r) for r in records))
            del records
            yield files


def _note_checked(cache: Cache, store: str, root: ManifestRoot) -> None:
    """Note the cached root as checked with all its shards, if it is the one just checked."""
    found = cache.load_manifest(store, root.uri)
    if found is None:
        return
    with contextlib.suppress(DspkgError):
        if parse_root(found[0], root.uri, obj="cached root") == root:
            cache.note_manifest_checked(store, root.uri, found[0])


async def _load(catalog: Catalog, cache: Cache, uri: VersionUri, read_only: bool) -> Loaded | None:
    store = catalog.store
    root = cached_root(cache, store.url, uri, read_only=read_only)
    if root is not None:
        return Loaded(root, cached=True)
    if read_only:
        return _fresh(await _fetch(catalog, cache, uri, read_only=True))
    lock = cache.lock(store.url, manifest_key(uri.dataset, uri.version))
    await lock.acquire_async()
    try:
        root = cached_root(cache, store.url, uri)
        if root is not None:  # another process fetched it meanwhile
            return Loaded(root, cached=False)
        return _fresh(await _fetch(catalog, cache, uri))
    finally:
        lock.release()


def cached_root(
    cache: Cache, store: str, uri: VersionUri, *, read_only: bool = False
) -> ManifestRoot | None:
    """The cache's copy of exactly ``uri``'s root, or None (a damaged copy is a miss)."""
    found = cache.load_manifest(store, uri)
    if found is None:
        return None
    data, noted = found
    with contextlib.suppress(DspkgError, KeyError, TypeError):
        root = parse_root(data, uri, obj=f"cached manifest of {uri}", trusted=noted)
        if root.inline is not None:  # v1: parsing checked every file
            if not noted and not read_only:
                cache.save_manifest(store, uri, data)  # note it: no checks next time
            return root
        return dataclasses.replace(root, validated=noted)
    return None


def _fresh(root: ManifestRoot | None) -> Loaded | None:
    return None if root is None else Loaded(root, cached=False)


def cached_manifest(
    cache: Cache, store: str, uri: VersionUri, *, read_only: bool = False
) -> Manifest | None:
    """The cache's copy of exactly ``uri``'s whole manifest (its root and every shard),
    with no store; None when any of it is missing or damaged."""
    root = cached_root(cache, store, uri, read_only=read_only)
    if root is None:
        return None
    if root.inline is not None:
        return whole(root, root.inline)
    records: list[Records] = []
    for shard in root.shards:
        name = shard.key.rpartition("/")[2]
        data = cache.load_shard(store, root.dataset, name)
        if data is None:
            return None
        try:
            records.append(decode_shard(data, shard, obj=f"cached shard {name}", trusted=True))
        except DspkgError:
            return None
    obj = f"cached manifest of {uri}"
    with contextlib.suppress(DspkgError):
        return whole(root, join_shards(root, root.shards, records, obj=obj, checked=root.validated))
    return None


def cached_files(cache: Cache, store: str, uri: VersionUri) -> tuple[FileEntry, ...]:
    """The files of ``uri`` the cache knows (its manifest and the shards it holds), read
    only, with no store: what a pull in progress may be using."""
    root = cached_root(cache, store, uri, read_only=True)
    if root is None:
        return ()
    if root.inline is not None:
        return root.inline
    files: list[FileEntry] = []
    for shard in root.shards:
        name = shard.key.rpartition("/")[2]
        data = cache.load_shard(store, root.dataset, name)
        if data is None:
            continue
        with contextlib.suppress(DspkgError):
            records = decode_shard(data, shard, obj=name, trusted=True)
            files.extend(join_shards(root, [shard], [records], obj=name, checked=True))
    return tuple(files)


async def _fetch(
    catalog: Catalog, cache: Cache, uri: VersionUri, *, read_only: bool = False
) -> ManifestRoot | None:
    """From the store (one request), validated, and kept in the cache."""
    data = await catalog.manifest_bytes(uri)
    if data is None:
        return None
    key = manifest_key(uri.dataset, uri.version)
    root = parse_root(data, uri, obj=catalog.store.describe(key))
    if not read_only:
        # A v1 manifest was checked whole; a v2 root is noted once its shards are.
        cache.save_manifest(catalog.store.url, uri, data, checked=root.inline is not None)
    return root
