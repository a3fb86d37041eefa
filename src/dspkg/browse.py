"""What ``ls``, ``show`` and ``diff`` report: datasets, their versions, one version in detail,
and what changed between two versions."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from dspkg.catalog import Catalog
from dspkg.layout import LATEST, name_from_key, versions_prefix
from dspkg.manifest import Manifest
from dspkg.names import VersionUri
from dspkg.versiondiff import VersionDiff, diff_files


@dataclass(frozen=True)
class DatasetSummary:
    name: str
    versions: int
    latest: str | None

    def to_json(self) -> dict[str, Any]:
        return {"dataset": self.name, "versions": self.versions, "latest": self.latest}


@dataclass(frozen=True)
class VersionSummary:
    uri: str
    version: str
    created: str | None
    aliases: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "version": self.version,
            "created": self.created,
            "aliases": list(self.aliases),
        }


@dataclass(frozen=True)
class VersionDetails:
    manifest: Manifest
    aliases: tuple[str, ...]
    package_bytes: int

    def to_json(self, *, files: bool = False) -> dict[str, Any]:
        m = self.manifest
        used = files_per_package(m)
        doc: dict[str, Any] = {
            "uri": str(m.uri),
            "dataset": m.dataset,
            "version": m.version,
            "from": m.parent,
            "created_at": m.created_at,
            "files": len(m.files),
            "bytes": m.total_bytes,
            "aliases": list(self.aliases),
            "blobs": m.blobs,
            "packaged_files": sum(used),
            "package_max_file": m.package_max_file,
            "unpackaged": unpackaged(m),
            "packages": [
                {
                    "name": p.name,
                    "key": p.key,
                    "size": p.size,
                    "entries": p.entries,
                    "sha256": p.sha256,
                    "files_used": used[i],
                }
                for i, p in enumerate(m.packages)
            ],
        }
        if files:
            doc["file_list"] = [
                {
                    "path": f.path,
                    "size": f.size,
                    "sha256": f.sha256,
                    "package": m.packages[f.package].name if f.package is not None else None,
                    "offset": f.offset,
                }
                for f in m.files
            ]
        return doc


def unpackaged(manifest: Manifest) -> dict[str, dict[str, int]]:
    """The files in no package, which are blobs, by why: ``too_big`` (at or above the
    version's ``package_max_file``, kept out of its packages) and ``not_packaged`` (the
    rest: a version or parent made without packages)."""
    groups = {"too_big": {"files": 0, "bytes": 0}, "not_packaged": {"files": 0, "bytes": 0}}
    limit = manifest.package_max_file
    for f in manifest.files:
        if f.package is None:
            group = groups["too_big" if limit is not None and f.size >= limit else "not_packaged"]
            group["files"] += 1
            group["bytes"] += f.size
    return groups


def files_per_package(manifest: Manifest) -> list[int]:
    """How many of the version's files each package holds, by package index.

    A package reused from an identical earlier version may hold files of others too,
    so this can be less than its ``entries``.
    """
    used = [0] * len(manifest.packages)
    for f in manifest.files:
        if f.package is not None:
            used[f.package] += 1
    return used


async def compare_versions(catalog: Catalog, a: VersionUri, b: VersionUri) -> VersionDiff:
    """Added, removed and changed files from ``a`` to ``b`` (either may be an alias)."""
    first, second = await asyncio.gather(catalog.read_manifest(a), catalog.read_manifest(b))
    return diff_files(first.files, second.files, a=str(first.uri), b=str(second.uri))


async def list_datasets(catalog: Catalog) -> list[DatasetSummary]:
    found = []
    for name in await catalog.datasets():
        versions = await catalog.versions(name)
        latest = await catalog.read_alias(name, LATEST)
        found.append(DatasetSummary(name, len(versions), latest))
    return found


async def list_versions(catalog: Catalog, dataset: str) -> list[VersionSummary]:
    aliases: dict[str, list[str]] = {}
    for alias, version in (await catalog.aliases(dataset)).items():
        aliases.setdefault(version, []).append(alias)
    prefix = versions_prefix(dataset)
    summaries = []
    for info in await catalog.store.list(prefix):
        name = name_from_key(info.key, prefix)
        if name is None:
            continue
        created = info.modified.strftime("%Y-%m-%dT%H:%M:%SZ") if info.modified else None
        summaries.append(
            VersionSummary(
                uri=str(VersionUri(dataset, name)),
                version=name,
                created=created,
                aliases=tuple(sorted(aliases.get(name, []))),
            )
        )
    summaries.sort(key=lambda s: (s.created or "", s.version))
    return summaries


async def describe_version(catalog: Catalog, uri: VersionUri) -> VersionDetails:
    manifest = await catalog.read_manifest(uri)
    aliases = sorted(
        alias
        for alias, version in (await catalog.aliases(manifest.dataset)).items()
        if version == manifest.version
    )
    return VersionDetails(
        manifest=manifest,
        aliases=tuple(aliases),
        package_bytes=sum(p.size for p in manifest.packages),
    )
