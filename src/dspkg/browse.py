"""What ``ls``, ``show`` and ``diff`` report: datasets, their versions, one version in detail,
and what changed between two versions."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import Any

from dspkg.catalog import Catalog, whole
from dspkg.errors import InvalidArgument
from dspkg.layout import LATEST, name_from_key, versions_prefix
from dspkg.manifest import FileEntry, Manifest, ManifestRoot
from dspkg.names import VersionUri
from dspkg.versiondiff import DiffCounts, VersionDiff, diff_files


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
    """One version: its root, and its files when they were asked for."""

    root: ManifestRoot
    aliases: tuple[str, ...]
    package_bytes: int
    files: tuple[FileEntry, ...] | None = None

    @property
    def manifest(self) -> Manifest:
        if self.files is None:
            raise InvalidArgument(f"the files of {self.root.uri} were not loaded; ask for them")
        return whole(self.root, self.files)

    def unpackaged(self) -> dict[str, dict[str, int]]:
        """:func:`unpackaged`, from the root alone when it can tell."""
        m = self.root
        if self.files is not None:
            return unpackaged(self.manifest)
        if sum(m.package_files) == m.files:
            return _groups(0, 0, 0, 0)
        if not m.packaged:
            return _groups(0, 0, m.files, m.bytes)
        raise InvalidArgument(f"the files of {m.uri} were not loaded; ask for them")

    def to_json(self, *, files: bool = False) -> dict[str, Any]:
        m = self.root
        doc: dict[str, Any] = {
            "uri": str(m.uri),
            "dataset": m.dataset,
            "version": m.version,
            "from": m.parent,
            "created_at": m.created_at,
            "files": m.files,
            "bytes": m.bytes,
            "aliases": list(self.aliases),
            "blobs": m.blobs,
            "manifest": {"schema_version": m.schema_version, "shards": len(m.shards)},
            "packaged_files": sum(m.package_files),
            "package_max_file": m.package_max_file,
            "unpackaged": self.unpackaged(),
            "packages": [
                {
                    "name": p.name,
                    "key": p.key,
                    "size": p.size,
                    "entries": p.entries,
                    "sha256": p.sha256,
                    "files_used": m.package_files[i],
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
                for f in self.manifest.files
            ]
        return doc


def unpackaged(manifest: Manifest) -> dict[str, dict[str, int]]:
    """The files in no package, which are blobs, by why: ``too_big`` (at or above the
    version's ``package_max_file``, kept out of its packages) and ``not_packaged`` (the
    rest: a version or parent made without packages)."""
    groups = _groups(0, 0, 0, 0)
    limit = manifest.package_max_file
    for f in manifest.files:
        if f.package is None:
            group = groups["too_big" if limit is not None and f.size >= limit else "not_packaged"]
            group["files"] += 1
            group["bytes"] += f.size
    return groups


def _groups(big: int, big_bytes: int, rest: int, rest_bytes: int) -> dict[str, dict[str, int]]:
    return {
        "too_big": {"files": big, "bytes": big_bytes},
        "not_packaged": {"files": rest, "bytes": rest_bytes},
    }


def files_per_package(manifest: Manifest) -> list[int]:
    """How many of the version's files each package holds, by package index.

    A package reused from an identical earlier version may hold files of others too,
    so this can be less than its ``entries``.
    """
    return list(manifest.package_files())


async def compare_versions(catalog: Catalog, a: VersionUri, b: VersionUri) -> VersionDiff:
    """Added, removed and changed files from ``a`` to ``b`` (either may be an alias).

    A shard both versions share (same SHA-256) covers the same files in both: its range is
    unchanged and never read, so a child that changed a few files loads a few shards.
    """
    first, second = await asyncio.gather(catalog.read_root(a), catalog.read_root(b))
    common = {s.sha256 for s in first.shards} & {s.sha256 for s in second.shards}
    files_a, files_b = await asyncio.gather(
        catalog.read_files(first, [s for s in first.shards if s.sha256 not in common]),
        catalog.read_files(second, [s for s in second.shards if s.sha256 not in common]),
    )
    diff = diff_files(files_a, files_b, a=str(first.uri), b=str(second.uri))
    shared = [s for s in first.shards if s.sha256 in common]
    if not shared:
        return diff
    unchanged = DiffCounts(
        diff.unchanged.files + sum(s.count for s in shared),
        diff.unchanged.bytes + sum(s.bytes for s in shared),
    )
    return replace(diff, unchanged=unchanged)


async def list_datasets(catalog: Catalog) -> list[DatasetSummary]:
    found = []
    for name in await catalog.datasets():
        versions = await catalog.versions(name)
        if not versions:  # only staged parts or leftovers: nothing to show yet
            continue
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


async def describe_version(
    catalog: Catalog, uri: VersionUri, *, files: bool = True
) -> VersionDetails:
    """One version; without ``files`` only its root is read (one request for v2), unless
    some of its files are packaged and some not: saying which and why needs them."""
    root = await catalog.read_root(uri)
    files = files or (root.packaged and sum(root.package_files) < root.files)
    aliases = sorted(
        alias
        for alias, version in (await catalog.aliases(root.dataset)).items()
        if version == root.version
    )
    return VersionDetails(
        root=root,
        aliases=tuple(aliases),
        package_bytes=sum(p.size for p in root.packages),
        files=await catalog.read_files(root) if files else None,
    )
