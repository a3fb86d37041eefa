"""Where versions live in a store, and reading and writing their records.

Layout (see docs/formats.md)::

    blobs/sha256/<hex[0:2]>/<hex[2:]>
    packages/<dataset>/<version>/<dataset>.<version>[.<i>-of-<n>].vhpkgzip
    datasets/<dataset>/versions/<version>.json      the manifest, written last, never overwritten
    datasets/<dataset>/aliases/<alias>.json         {"version": "..."}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from dspkg.errors import NotFound, UnsafePackage
from dspkg.manifest import PACKAGE_SUFFIX, Manifest, PackageInfo
from dspkg.names import VersionUri, check_name
from dspkg.store import Store

LATEST = "latest"


def blob_key(sha256: str) -> str:
    return f"blobs/sha256/{sha256[:2]}/{sha256[2:]}"


def manifest_key(dataset: str, version: str) -> str:
    return f"datasets/{dataset}/versions/{version}.json"


def alias_key(dataset: str, alias: str) -> str:
    return f"datasets/{dataset}/aliases/{alias}.json"


def package_name(dataset: str, version: str, index: int, count: int) -> str:
    """``ds.ver.vhpkgzip``, or ``ds.ver.<i>-of-<n>.vhpkgzip`` (1-based) when split."""
    if count == 1:
        return f"{dataset}.{version}{PACKAGE_SUFFIX}"
    return f"{dataset}.{version}.{index + 1}-of-{count}{PACKAGE_SUFFIX}"


def package_key(dataset: str, version: str, name: str) -> str:
    return f"packages/{dataset}/{version}/{name}"


def package_index_key(shape: str) -> str:
    # Dataset names cannot start with ".", so this never meets a dataset's packages.
    return f"packages/.index/{shape}.json"


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Catalog:
    """Reads and writes manifests and aliases in one store."""

    store: Store

    async def read_manifest(self, uri: VersionUri) -> Manifest:
        """The manifest of ``uri``; its version part may be an alias such as ``latest``."""
        resolved = await self.resolve(uri)
        return await self._read_exact(resolved)

    async def find_manifest(self, uri: VersionUri) -> Manifest | None:
        """The manifest of exactly this version, or None if there is none."""
        key = manifest_key(uri.dataset, uri.version)
        if await self.store.head(key) is None:
            return None
        return await self._read_exact(uri)

    async def _read_exact(self, uri: VersionUri) -> Manifest:
        key = manifest_key(uri.dataset, uri.version)
        if await self.store.head(key) is None:
            raise NotFound(f"dataset version {uri} not found in {self.store.url}", uri=str(uri))
        data = await self.store.get(key)
        manifest = Manifest.from_json(data, obj=self.store.describe(key))
        if (manifest.dataset, manifest.version) != (uri.dataset, uri.version):
            raise UnsafePackage(
                f"manifest {self.store.describe(key)} describes "
                f"{manifest.uri}, not {uri}; the store is inconsistent",
                obj=key,
            )
        return manifest

    async def resolve(self, uri: VersionUri) -> VersionUri:
        """A version that exists for ``uri``: the version itself, else what its alias names."""
        if await self.store.head(manifest_key(uri.dataset, uri.version)) is not None:
            return uri
        target = await self.read_alias(uri.dataset, uri.version)
        if target is None:
            versions = await self.versions(uri.dataset)
            hint = (
                f"versions: {', '.join(versions[:10])}"
                if versions
                else "the dataset has no versions"
            )
            raise NotFound(
                f"dataset version {uri} not found in {self.store.url} ({hint})", uri=str(uri)
            )
        return VersionUri(uri.dataset, target)

    async def read_alias(self, dataset: str, alias: str) -> str | None:
        key = alias_key(dataset, alias)
        if await self.store.head(key) is None:
            return None
        raw = await self.store.get(key)
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
        doc = {"updated_at": now_iso(), "version": version}
        data = json.dumps(doc, sort_keys=True).encode()
        await self.store.put(alias_key(dataset, alias), data)

    async def package_candidates(self, shape: str) -> list[tuple[str, PackageInfo]]:
        """Packages already in the store with this layout: ``(content digest, info)``."""
        key = package_index_key(shape)
        if await self.store.head(key) is None:
            return []
        try:
            doc = json.loads(await self.store.get(key))
            found = []
            for record in doc["packages"]:
                info = PackageInfo(
                    name=record["name"],
                    key=record["key"],
                    size=int(record["size"]),
                    sha256=record["sha256"],
                    entries=int(record["entries"]),
                )
                if info.key.startswith("packages/") and info.key.endswith(info.name):
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
        for info in await self.store.list(f"datasets/{dataset}/aliases/"):
            name = info.key.rpartition("/")[2].removesuffix(".json")
            target = await self.read_alias(dataset, name)
            if target is not None:
                found[name] = target
        return found

    async def datasets(self) -> list[str]:
        return await self.store.list_dirs("datasets/")

    async def versions(self, dataset: str) -> list[str]:
        infos = await self.store.list(f"datasets/{dataset}/versions/")
        names = (i.key.rpartition("/")[2] for i in infos)
        return sorted(n.removesuffix(".json") for n in names if n.endswith(".json"))
