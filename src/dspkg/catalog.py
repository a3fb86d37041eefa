"""Reading and writing a store's records: manifests, aliases and the package index.

Keys come from :mod:`dspkg.layout`. Every record read from the store is untrusted and
validated here, so callers get a :class:`Manifest` that is what it claims to be or one
of our errors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

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
from dspkg.manifest import Manifest, PackageInfo
from dspkg.names import VersionUri, check_name
from dspkg.store import Revision, Store

ALIAS_SCHEMA_VERSION = 1


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_manifest(data: bytes, uri: VersionUri, *, obj: str, trusted: bool = False) -> Manifest:
    """The manifest of exactly ``uri`` from ``data``; UnsafePackage if it is not valid or
    describes another version (the store is inconsistent or tampered with)."""
    manifest = Manifest.from_json(data, obj=obj, trusted=trusted)
    if manifest.uri != uri:
        raise UnsafePackage(
            f"manifest {obj} describes {manifest.uri}, not {uri}; the store is inconsistent",
            obj=obj,
        )
    return manifest


@dataclass(frozen=True)
class Catalog:
    """Reads and writes manifests and aliases in one store."""

    store: Store

    async def read_manifest(self, uri: VersionUri) -> Manifest:
        """The manifest of ``uri``; its version part may be an alias such as ``latest``."""
        data = await self.manifest_bytes(uri)
        if data is None:
            uri = await self.resolve_alias(uri)
            data = await self.manifest_bytes(uri)
            if data is None:
                raise self.not_found(uri)
        return parse_manifest(
            data, uri, obj=self.store.describe(manifest_key(uri.dataset, uri.version))
        )

    async def find_manifest(self, uri: VersionUri) -> Manifest | None:
        """The manifest of exactly this version, or None if there is none."""
        data = await self.manifest_bytes(uri)
        if data is None:
            return None
        return parse_manifest(
            data, uri, obj=self.store.describe(manifest_key(uri.dataset, uri.version))
        )

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
        return parse_manifest(data, uri, obj=self.store.describe(key)), revision

    async def replace_manifest(self, manifest: Manifest, revision: Revision) -> bool:
        """Write a version's record anew, only if it is still at ``revision``: False (and
        nothing written) when another process changed it since. Only package facts may
        change this way (``dspkg package``): files, identity and URI never do. This is the
        one place that knows the record's form."""
        key = manifest_key(manifest.dataset, manifest.version)
        return await self.store.replace(key, manifest.to_json(), revision)

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

    async def write_manifest(self, manifest: Manifest) -> bool:
        """Create the manifest; False when the version already exists (never overwritten)."""
        key = manifest_key(manifest.dataset, manifest.version)
        return await self.store.put(key, manifest.to_json(), create=True)

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
