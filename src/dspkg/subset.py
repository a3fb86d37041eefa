"""The part of a version a pull takes: a selection, then this rank's shard of it (pure)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from dspkg.errors import SelectionError
from dspkg.manifest import FileEntry, Manifest
from dspkg.selection import Selection
from dspkg.sharding import Shard


@dataclass(frozen=True)
class Subset:
    """Which files of a version to take; the default takes them all."""

    selection: Selection = field(default_factory=Selection)
    shard: Shard | None = None

    @property
    def everything(self) -> bool:
        return self.selection.everything and self.shard is None

    def pick(self, manifest: Manifest) -> tuple[FileEntry, ...]:
        """The chosen files, in manifest order; raises :class:`SelectionError` when a
        pattern or listed path matches nothing or the result is empty (unless the
        selection allows it)."""
        where = str(manifest.uri)
        files = self.selection.apply(manifest.files, where=where)
        if self.shard is None:
            return files
        mine = self.shard.take(files)
        if not mine and files and not self.selection.allow_empty:
            raise SelectionError(
                f"shard {self.shard} of {where} holds no file: {len(files):,} file(s) cannot "
                f"feed {self.shard.world} ranks; use fewer ranks, or give --allow-empty",
                items=(),
            )
        return mine

    def may_match_range(self, first: str, last: str) -> bool:
        """Whether a manifest part holding paths ``first`` to ``last`` may hold a chosen
        file. A shard splits the selection's files, so only the selection decides: a
        reader must load every part that the selection may match, then shard."""
        return self.selection.may_match_range(first, last)

    def view(self, manifest: Manifest) -> Manifest:
        """``manifest`` narrowed to the chosen files (packages unchanged)."""
        if self.everything:
            return manifest
        return dataclasses.replace(manifest, files=self.pick(manifest))


EVERYTHING = Subset()


@dataclass(frozen=True)
class Selected:
    """What :func:`dspkg.select` returns: the chosen files of a version."""

    uri: str  # the version (an alias resolved)
    files: tuple[FileEntry, ...]
    version_files: int
    version_bytes: int

    @classmethod
    def of(cls, manifest: Manifest, subset: Subset) -> Selected:
        files = subset.pick(manifest)
        return cls(str(manifest.uri), files, len(manifest.files), manifest.total_bytes)

    @property
    def paths(self) -> list[str]:
        return [f.path for f in self.files]

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files)

    def __len__(self) -> int:
        return len(self.files)

    def to_json(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "files": self.version_files,
            "bytes": self.version_bytes,
            "selected_files": len(self.files),
            "selected_bytes": self.bytes,
            "paths": self.paths,
        }
