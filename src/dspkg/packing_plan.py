"""What packaging an existing version does (``dspkg package``), as data (pure).

The files to package are the version's files in no package that are smaller than
``package_max_file``; files already in a package (its own, or its parent's) stay where
they are, and bigger files stay blobs. They are split into packages as a publish would
split them, read from their blobs: the :class:`~dspkg.sources.LocalFile` of each holds
its blob's key as the place to read it from.

The version after is the same version — the same files in the same order, the same
name, parent and creation time — with the new packages appended to its packages (the
indexes of the old ones unchanged) and each packaged file pointing into its package.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from dspkg.layout import blob_key
from dspkg.manifest import FileEntry, Manifest
from dspkg.publish_plan import BuiltPackage, PackagePlan, data_offsets, plan_packages
from dspkg.sources import LocalFile


@dataclass(frozen=True)
class PackingPlan:
    manifest: Manifest
    packages: tuple[PackagePlan, ...]
    too_big: tuple[FileEntry, ...]  # in no package, and staying so
    packaged_before: int  # files already in a package
    max_file: int

    @property
    def files(self) -> int:
        return sum(len(p.files) for p in self.packages)

    @property
    def bytes(self) -> int:
        return sum(f.size for p in self.packages for f in p.files)

    def to_json(self) -> dict[str, object]:
        return {
            "files_to_package": self.files,
            "bytes_to_package": self.bytes,
            "packages": [
                {"name": p.name, "key": p.key, "files": len(p.files), "size": p.estimated_size}
                for p in self.packages
            ],
            "files_packaged_before": self.packaged_before,
            "files_too_big": len(self.too_big),
            "bytes_too_big": sum(f.size for f in self.too_big),
            "package_max_file": self.max_file,
        }


def plan_packing(
    manifest: Manifest, *, package_size: int, max_file: int, attempt: str
) -> PackingPlan:
    """The packages that ``manifest``'s unpackaged files get, under ``attempt``'s keys."""
    loose = [f for f in manifest.files if f.package is None]
    small = [LocalFile(f.path, blob_key(f.sha256), f.size) for f in loose if f.size < max_file]
    return PackingPlan(
        manifest=manifest,
        packages=plan_packages(manifest.uri, small, package_size, attempt),
        too_big=tuple(f for f in loose if f.size >= max_file),
        packaged_before=len(manifest.files) - len(loose),
        max_file=max_file,
    )


def with_packages(plan: PackingPlan, built: Sequence[BuiltPackage]) -> Manifest:
    """The version of ``plan`` with the packages ``built`` (of ``plan.packages``) added
    and their files pointing into them."""
    manifest = plan.manifest
    first = len(manifest.packages)
    where = {
        f.rel: (first + index, offset)
        for index, (package, _) in enumerate(zip(plan.packages, built, strict=True))
        for f, offset in zip(
            package.files, data_offsets((f.rel, f.size) for f in package.files), strict=True
        )
    }
    files = tuple(
        f._replace(package=where[f.path][0], offset=where[f.path][1]) if f.path in where else f
        for f in manifest.files
    )
    return dataclasses.replace(
        manifest,
        files=files,
        packages=(*manifest.packages, *(p.info for p in built)),
        package_max_file=plan.max_file,
    )
