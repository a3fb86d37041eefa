"""Reading and writing a store's records: manifests, aliases and the package index.

Keys come from :mod:`dspkg.layout`. Every record read from the store is untrusted and
validated here, so callers get a :class:`Manifest` (or :class:`ManifestRoot`) that is
what it claims to be or one of our errors. Manifests are read in both forms (v1, v2)
and written as v2: shards first, the root last with a conditional create.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from dspkg.concurrency import BoundedTasks
from dspkg.errors import NotFound, UnsafePackage
from dspkg.layout import (
    DATASETS_PREFIX,
    alias_key,
    aliases_prefix,
    manifest_key,
    name_from_key,
    package_index_key,
    package_key_problem,
    versions_prefix,
)
from dspkg.manifest import (
    FileEntry,
    Manifest,
    ManifestRoot,
    PackageInfo,
    ShardInfo,
    collector_paused,
    make_entries,
)
from dspkg.names import VersionUri, check_name
from dspkg.shards import (
    Records,
    decode_shard,
    encode_manifest,
    encode_root,
    join_shards,
    parse_stored,
)
from dspkg.store import Revision, Store

# Shard requests in flight while loading a version.
SHARD_REQUESTS = 8

ALIAS_SCHEMA_VERSION = 1


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_root(data: bytes, uri: VersionUri, *, obj: str, trusted: bool = False) -> ManifestRoot:
    """The manifest (v1) or root (v2) of exactly ``uri`` from ``data``; UnsafePackage if
    it is not valid or describes another version (the store is inconsistent or tampered
    with). ``trusted``: bytes validated before (skips checking a v1 manifest's files)."""
    root = parse_stored(data, obj=obj, trusted=trusted)
    if root.uri != uri:
        raise UnsafePackage(
            f"manifest {obj} describes {root.uri}, not {uri}; the store is inconsistent",
            obj=obj,
        )
    return root


def whole(root: ManifestRoot, files: tuple[FileEntry, ...]) -> Manifest:
    """The version of ``root`` with all its ``files``."""
    return Manifest(
        dataset=root.dataset,
        version=root.version,
        files=files,
        packages=root.packages,
        parent=root.parent,
        created_at=root.created_at,
        blobs=root.blobs,
        package_max_file=root.package_max_file,
    )


def chosen_shards(root: ManifestRoot, shards: Sequence[ShardInfo] | None) -> tuple[ShardInfo, ...]:
    """``shards`` (all when None) in the root's order, each one the root lists."""
    if shards is None:
        return root.shards
    wanted = set(shards)
    return tuple(s for s in root.shards if s in wanted)


async def load_shards(
    shards: Sequence[ShardInfo], load: Callable[[ShardInfo], Awaitable[Records]]
) -> list[Records]:
    """``load`` every shard, several at once, in order."""
    results: dict[ShardInfo, Records] = {}

    async def one(shard: ShardInfo) -> None:
        results[shard] = await load(shard)

    async with BoundedTasks(SHARD_REQUESTS) as tasks:
        for shard in shards:
            await tasks.spawn(one(shard))
    return [results[s] for s in shards]


async def load_joined(
    root: ManifestRoot,
    shards: Sequence[ShardInfo],
    load: Callable[[ShardInfo], Awaitable[Records]],
    *,
    obj: str,
    checked: bool = False,
) -> tuple[FileEntry, ...]:
    """``load`` every one of ``shards`` (of ``root``), then their files checked together
    (:func:`~dspkg.shards.join_shards`)."""
    entries: dict[ShardInfo, tuple[FileEntry, ...]] = {}

    async def load_and_build(shard: ShardInfo) -> Records:
        records = await load(shard)
        # Built here as each shard arrives, while others still inflate in threads, not
        # after the last one: the checks across shards need only the columns.
        entries[shard] = make_entries(*records)
        return records

    # Paused from the first shard to the last: a collection in between would walk the
    # columns of every shard decoded so far (millions of references, each time).
    with collector_paused():
        records = await load_shards(shards, load_and_build)
        built = [entries.pop(s) for s in shards]
        files = join_shards(root, shards, records, obj=obj, checked=checked, entries=built)
        del records, built
    return files


async def decode_in_thread(data: bytes, info: ShardInfo, *, obj: str, trusted: bool) -> Records:
    """Hashing and inflating release the GIL: shards decode alongside each other."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        None, functools.partial(decode_shard, data, info, obj=obj, trusted=trusted)
    )


@dataclass(frozen=True)
class Catalog:
    """Reads and writes manifests and aliases in one store."""

    store: Store

    async def read_manifest(self, uri: VersionUri) -> Manifest:
        """The manifest of ``uri`` with every file; its version part may be an alias."""
        root = await self.read_root(uri)
        return whole(root, await self.read_files(root))

    async def find_manifest(self, uri: VersionUri) -> Manifest | None:
        """The manifest of exactly this version, or None if there is none."""
        root = await self.find_root(uri)
        if root is None:
            return None
        return whole(root, await self.read_files(root))

    async def read_root(self, uri: VersionUri) -> ManifestRoot:
        """The root of ``uri`` (a version or an alias such as ``latest``)."""
        root = await self.find_root(uri)
        if root is None:
            uri = await self.resolve_alias(uri)
            root = await self.find_root(uri)
            if root is None:
                raise self.not_found(uri)
        return root

    async def find_root(self, uri: VersionUri) -> ManifestRoot | None:
        """The root of exactly this version (one request), or None if there is none."""
        data = await self.manifest_bytes(uri)
        if data is None:
            return None
        return parse_root(data, uri, obj=self._describe(uri))

    async def read_files(
        self, root: ManifestRoot, shards: Sequence[ShardInfo] | None = None
    ) -> tuple[FileEntry, ...]:
        """The files of ``shards`` (all when None) of ``root``, from the store, checked."""
        if root.inline is not None:
            return root.inline
        chosen = chosen_shards(root, shards)

        async def load(shard: ShardInfo) -> Records:
            data = await self.shard_bytes(root, shard)
            return await decode_in_thread(
                data, shard, obj=self.store.describe(shard.key), trusted=False
            )

        return await load_joined(root, chosen, load, obj=self._describe(root.uri))

    def _describe(self, uri: VersionUri) -> str:
        return self.store.describe(manifest_key(uri.dataset, uri.version))

    async def manifest_for_update(self, uri: VersionUri) -> tuple[Manifest, Revision]:
        """The manifest of ``uri`` (an alias resolved) and the revision of the record that
        was read, for :meth:`replace_manifest`."""
        key = manifest_key(uri.dataset, uri.version)
        found = await self.store.get_revision(key)
        if found is None:
            uri = await self.resolve_alias(uri)
            key = manifest_key(uri.dataset, uri.version)
            found = await self.store.get_revision(key)
            if found is None:
                raise self.not_found(uri)
        data, revision = found
        root = parse_root(data, uri, obj=self.store.describe(key))
        return whole(root, await self.read_files(root)), revision

    async def replace_manifest(self, manifest: Manifest, revision: Revision) -> bool:
        """Write a version's record anew, only if it is still at ``revision``: False (and
        nothing written) when another process changed it since. Only package facts may
        change this way (``dspkg package``): files, identity and URI never do. This is the
        one place that knows the record's form. New shards go first, as in
        :meth:`write_manifest`; those of a lost race are left to ``dspkg gc``."""
        root, shards = encode_manifest(manifest)
        await self.write_shards(shards)
        key = manifest_key(manifest.dataset, manifest.version)
        return await self.store.replace(key, encode_root(root), revision)

    async def manifest_bytes(self, uri: VersionUri) -> bytes | None:
        """The stored manifest of exactly ``uri`` (one request), or None."""
        return await self.store.get_optional(manifest_key(uri.dataset, uri.version))

    async def resolve_alias(self, uri: VersionUri) -> VersionUri:
        """The version ``uri``'s alias names; NotFound, with the versions there are, if none."""
        target = await self.read_alias(uri.dataset, uri.version)
        if target is None:
            raise await self._not_found_with_hint(uri)
        return VersionUri(uri.dataset, target)

    def not_found(self, uri: VersionUri) -> NotFound:
        return NotFound(f"dataset version {uri} not found in {self.store.url}", uri=str(uri))

    async def _not_found_with_hint(self, uri: VersionUri) -> NotFound:
        versions = await self.versions(uri.dataset)
        hint = (
            f"versions: {', '.join(versions[:10])}" if versions else "the dataset has no versions"
        )
        return NotFound(
            f"dataset version {uri} not found in {self.store.url} ({hint})", uri=str(uri)
        )

    async def read_alias(self, dataset: str, alias: str) -> str | None:
        key = alias_key(dataset, alias)
        raw = await self.store.get_optional(key)
        if raw is None:
            return None
        try:
            doc = json.loads(raw)
            return check_name(doc["version"], what="version")
        except Exception:
            raise UnsafePackage(
                f'alias {self.store.describe(key)} is malformed; expected {{"version": "..."}}',
                obj=key,
            ) from None

    async def shard_bytes(self, root: ManifestRoot, shard: ShardInfo) -> bytes:
        data = await self.store.get_optional(shard.key)
        if data is None:
            raise UnsafePackage(
                f"manifest shard {self.store.describe(shard.key)} of {root.uri} is missing "
                "from the store; the version is damaged, publish it again under a new name",
                obj=shard.key,
            )
        return data

    async def write_manifest(self, manifest: Manifest) -> bool:
        """Create the manifest (v2); False when the version already exists (never
        overwritten). The shards go first: a root never names a shard not yet there."""
        root, shards = encode_manifest(manifest)
        await self.write_shards(shards)
        key = manifest_key(manifest.dataset, manifest.version)
        return await self.store.put(key, encode_root(root), create=True)

    async def create_root(self, root: ManifestRoot) -> bool:
        """Create the version of ``root`` whose shards are stored already (a publish
        stores them as it goes); False when the version exists (never overwritten)."""
        key = manifest_key(root.dataset, root.version)
        return await self.store.put(key, encode_root(root), create=True)

    async def write_shards(self, shards: Sequence[tuple[ShardInfo, bytes]]) -> None:
        """Shards are named by their content: one already there is the same, kept."""
        async with BoundedTasks(SHARD_REQUESTS) as tasks:
            for info, data in shards:
                await tasks.spawn(self.store.put(info.key, data, create=True))

    async def set_alias(self, dataset: str, alias: str, version: str) -> None:
        doc = {"schema_version": ALIAS_SCHEMA_VERSION, "updated_at": now_iso(), "version": version}
        data = json.dumps(doc, sort_keys=True).encode()
        await self.store.put(alias_key(dataset, alias), data)

    async def package_candidates(self, shape: str) -> list[tuple[str, PackageInfo]]:
        """Packages already in the store with this layout: ``(content digest, info)``."""
        raw = await self.store.get_optional(package_index_key(shape))
        if raw is None:
            return []
        try:
            doc = json.loads(raw)
            found = []
            for record in doc["packages"]:
                info = PackageInfo(
                    name=record["name"],
                    key=record["key"],
                    size=int(record["size"]),
                    sha256=record["sha256"],
                    entries=int(record["entries"]),
                )
                # A reused package must be one a pull accepts: the same key rule.
                if package_key_problem(info.key, info.name) is None:
                    found.append((str(record["digest"]), info))
        except (ValueError, KeyError, TypeError):
            return []  # a damaged index only costs a re-upload
        return found

    async def remember_package(self, shape: str, digest: str, info: PackageInfo) -> None:
        """Record an uploaded package so an identical one is never uploaded again."""
        known = await self.package_candidates(shape)
        if any(d == digest for d, _ in known):
            return
        records = [{"digest": d, **i.to_json()} for d, i in known]
        records.append({"digest": digest, **info.to_json()})
        doc = {"packages": records, "schema_version": 1}
        await self.store.put(package_index_key(shape), json.dumps(doc, sort_keys=True).encode())

    async def aliases(self, dataset: str) -> dict[str, str]:
        """Every alias of ``dataset`` and the version it names."""
        found: dict[str, str] = {}
        prefix = aliases_prefix(dataset)
        for info in await self.store.list(prefix):
            name = name_from_key(info.key, prefix)
            target = None if name is None else await self.read_alias(dataset, name)
            if name is not None and target is not None:
                found[name] = target
        return found

    async def datasets(self) -> list[str]:
        return await self.store.list_dirs(DATASETS_PREFIX)

    async def versions(self, dataset: str) -> list[str]:
        prefix = versions_prefix(dataset)
        names = (name_from_key(i.key, prefix) for i in await self.store.list(prefix))
        return sorted(n for n in names if n is not None)
