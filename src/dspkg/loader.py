"""The one way a consumer gets a manifest: the cache's copy, else the store, validated once.

A version's files never change, so a manifest validated once is kept in the cache with a
note of its hash and later loads skip validation (:meth:`Cache.load_manifest`). Its
package facts may grow, though: ``dspkg package`` adds packages to a version made
without them. The cache's copy then still works (its blobs stay), and a pull that is
about to fetch files in no package reads the store's record again first
(:func:`reload_manifest`), so it uses the new packages. Aliases move, so they are
always resolved in the store. Processes loading the same version at once download it
once: the others wait for the lock and find it in the cache.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

from dspkg.cache import Cache
from dspkg.catalog import Catalog, parse_manifest
from dspkg.errors import DspkgError
from dspkg.layout import manifest_key
from dspkg.manifest import Manifest
from dspkg.names import VersionUri
from dspkg.store import Store


class Loaded(NamedTuple):
    manifest: Manifest
    cached: bool  # the cache's copy: packages added since are not in it


async def load_manifest(
    store: Store, cache: Cache, uri: VersionUri, *, read_only: bool = False
) -> Manifest:
    """The manifest of ``uri`` (a version or an alias such as ``latest``).

    ``read_only`` (a dry run) writes nothing to the cache: no copy, no note, no lock.
    """
    return (await load_version(store, cache, uri, read_only=read_only)).manifest


async def load_version(
    store: Store, cache: Cache, uri: VersionUri, *, read_only: bool = False
) -> Loaded:
    """:func:`load_manifest`, saying whether the manifest is the cache's copy."""
    catalog = Catalog(store)
    loaded = await _load(catalog, cache, uri, read_only)
    if loaded is None:  # not a version: an alias
        resolved = await catalog.resolve_alias(uri)
        loaded = await _load(catalog, cache, resolved, read_only)
        if loaded is None:
            raise catalog.not_found(resolved)
    return loaded


async def reload_manifest(
    store: Store, cache: Cache, uri: VersionUri, *, read_only: bool = False
) -> Manifest | None:
    """The store's record of exactly ``uri`` now (one request), validated and kept in the
    cache in place of the older copy (unless ``read_only``); None if it is gone."""
    return await _fetch(Catalog(store), cache, uri, read_only=read_only)


async def _load(catalog: Catalog, cache: Cache, uri: VersionUri, read_only: bool) -> Loaded | None:
    store = catalog.store
    manifest = cached_manifest(cache, store.url, uri, read_only=read_only)
    if manifest is not None:
        return Loaded(manifest, cached=True)
    if read_only:
        return _fresh(await _fetch(catalog, cache, uri, read_only=True))
    lock = cache.lock(store.url, manifest_key(uri.dataset, uri.version))
    await lock.acquire_async()
    try:
        manifest = cached_manifest(cache, store.url, uri)
        if manifest is not None:  # another process fetched it meanwhile
            return Loaded(manifest, cached=False)
        return _fresh(await _fetch(catalog, cache, uri))
    finally:
        lock.release()


def _fresh(manifest: Manifest | None) -> Loaded | None:
    return None if manifest is None else Loaded(manifest, cached=False)


def cached_manifest(
    cache: Cache, store: str, uri: VersionUri, *, read_only: bool = False
) -> Manifest | None:
    """The cache's copy of exactly ``uri``'s manifest, or None (a damaged copy is a miss)."""
    found = cache.load_manifest(store, uri)
    if found is None:
        return None
    data, trusted = found
    with contextlib.suppress(DspkgError, KeyError, TypeError):
        manifest = parse_manifest(data, uri, obj=f"cached manifest of {uri}", trusted=trusted)
        if not trusted and not read_only:
            cache.save_manifest(store, uri, data)  # note it: no checks next time
        return manifest
    return None


async def _fetch(
    catalog: Catalog, cache: Cache, uri: VersionUri, *, read_only: bool = False
) -> Manifest | None:
    """From the store (one request), validated, and kept in the cache."""
    data = await catalog.manifest_bytes(uri)
    if data is None:
        return None
    key = manifest_key(uri.dataset, uri.version)
    manifest = parse_manifest(data, uri, obj=catalog.store.describe(key))
    if not read_only:
        cache.save_manifest(catalog.store.url, uri, data)
    return manifest
