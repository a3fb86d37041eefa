"""The one way a consumer gets a manifest: the cache's copy, else the store, validated once.

Versions are immutable, so a manifest validated once is kept in the cache with a note of
its hash and later loads skip validation (:meth:`Cache.load_manifest`). Aliases move, so
they are always resolved in the store. Processes loading the same version at once
download it once: the others wait for the lock and find it in the cache.
"""

from __future__ import annotations

import contextlib

from dspkg.cache import Cache
from dspkg.catalog import Catalog, parse_manifest
from dspkg.errors import DspkgError
from dspkg.layout import manifest_key
from dspkg.manifest import Manifest
from dspkg.names import VersionUri
from dspkg.store import Store


async def load_manifest(
    store: Store, cache: Cache, uri: VersionUri, *, read_only: bool = False
) -> Manifest:
    """The manifest of ``uri`` (a version or an alias such as ``latest``).

    ``read_only`` (a dry run) writes nothing to the cache: no copy, no note, no lock.
    """
    catalog = Catalog(store)
    manifest = await _load(catalog, cache, uri, read_only)
    if manifest is None:  # not a version: an alias
        resolved = await catalog.resolve_alias(uri)
        manifest = await _load(catalog, cache, resolved, read_only)
        if manifest is None:
            raise catalog.not_found(resolved)
    return manifest


async def _load(
    catalog: Catalog, cache: Cache, uri: VersionUri, read_only: bool
) -> Manifest | None:
    store = catalog.store
    manifest = cached_manifest(cache, store.url, uri, read_only=read_only)
    if manifest is not None or read_only:
        return manifest or await _fetch(catalog, cache, uri, read_only=True)
    lock = cache.lock(store.url, manifest_key(uri.dataset, uri.version))
    await lock.acquire_async()
    try:
        return cached_manifest(cache, store.url, uri) or await _fetch(catalog, cache, uri)
    finally:
        lock.release()


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
