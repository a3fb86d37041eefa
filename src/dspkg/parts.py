"""Parts of a version, staged until one commit merges them (pure).

A part is what one publisher contributes to a version: its files, in packages and blobs
it uploaded, described by a part record at ``datasets/<dataset>/staging/<version>/<part>.json``
that has the form of a v2 root (its own shards, named by content as usual) plus what the
part asks of the version::

    {"aliases": [], "blobs": true, "bytes": 9, "created_at": "...", "dataset": "pets",
     "digest": "ab12...", "exclude": [], "files": 2, "from": null, "packages": [...],
     "part": "worker-3", "schema_version": 2, "shards": [...], "start_fresh": false,
     "version": "v1"}

Nothing reads a staging area but ``dspkg commit``: a part that never commits leaves no
version, and ``dspkg gc`` removes it after the grace period. :class:`Merge` decides, path
by path, what the committed version holds: the parts' files (the same path in two parts
must have the same bytes), then the parent's files that no part replaces or excludes;
packages are numbered in the order the merged files first use them, so the committed
version's shards are the ones a single publish of the same files writes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from dspkg.errors import InvalidMetadata, UnsafePackage
from dspkg.manifest import FileEntry, ManifestRoot, PackageInfo, bad_manifest, parse_json_object
from dspkg.names import check_name
from dspkg.paths import path_problem
from dspkg.shards import encode_root, parse_root_doc


@dataclass(frozen=True)
class Part:
    """A staged part: its files (as a root over its own shards) and what it asks of the
    version it joins."""

    name: str
    root: ManifestRoot
    exclude: tuple[str, ...] = ()
    start_fresh: bool = False
    aliases: tuple[str, ...] = ()

    def to_json(self) -> bytes:
        doc = json.loads(encode_root(self.root))
        doc.update(
            aliases=sorted(self.aliases),
            exclude=sorted(self.exclude),
            part=self.name,
            start_fresh=self.start_fresh,
        )
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def parse_part(data: bytes, *, obj: str) -> Part:
    """A part record from the store (untrusted, like any root); UnsafePackage naming ``obj``."""
    bad = bad_manifest(obj)
    doc = parse_json_object(data, bad)
    root = parse_root_doc(doc, bad)
    try:
        name = check_name(doc["part"], what="part name")
        exclude = tuple(doc.get("exclude") or ())
        aliases = tuple(check_name(a, what="alias") for a in doc.get("aliases") or ())
        start_fresh = doc.get("start_fresh", False)
    except (KeyError, TypeError) as exc:
        raise bad(f"missing or malformed field {exc}") from None
    except UnsafePackage:
        raise
    except Exception as exc:
        raise bad(str(exc)) from None
    if not isinstance(start_fresh, bool) or any(path_problem(p) for p in exclude):
        raise bad("malformed start_fresh or exclude")
    return Part(name, root, exclude, start_fresh, aliases)


@dataclass(frozen=True)
class Lineage:
    """What the parts of one version ask of it together."""

    parent: str | None
    start_fresh: bool
    exclude: frozenset[str]
    aliases: tuple[str, ...]
    blobs: bool


def agree(uri: str, parts: Sequence[Part]) -> Lineage:
    """The parts' common lineage; InvalidMetadata naming two parts that disagree."""
    first = parts[0]
    for part in parts[1:]:
        for what, mine, theirs in (
            ("from", first.root.parent, part.root.parent),
            ("start_fresh", first.start_fresh, part.start_fresh),
        ):
            if mine != theirs:
                raise InvalidMetadata(
                    f"parts {first.name!r} and {part.name!r} of {uri} disagree on {what!r} "
                    f"({mine!r} and {theirs!r}); stage them again with the same metadata",
                    path=uri,
                )
    return Lineage(
        parent=first.root.parent,
        start_fresh=first.start_fresh,
        exclude=frozenset(p for part in parts for p in part.exclude),
        aliases=tuple(sorted({a for part in parts for a in part.aliases})),
        blobs=all(part.root.blobs for part in parts),
    )


class PartConflict(InvalidMetadata):
    """The same path with different bytes in two parts."""


@dataclass(frozen=True)
class Candidate:
    """One source's file at a path: ``source`` is a part's name, or None for the parent."""

    source: str | None
    entry: FileEntry
    package: PackageInfo | None


class Merge:
    """Decides the committed version's files, path by path, and numbers its packages."""

    def __init__(self, uri: str, exclude: frozenset[str] = frozenset()) -> None:
        self.uri = uri
        self.exclude = exclude
        self.excluded: set[str] = set()  # excludes that matched a parent file
        self.packages: list[PackageInfo] = []
        self._index: dict[str, int] = {}

    def pick(self, candidates: Sequence[Candidate]) -> FileEntry | None:
        """The file at one path, from its candidates (parts first, by name, then the
        parent); None when only the parent has it and it is excluded."""
        parts = sorted((c for c in candidates if c.source is not None), key=_by_source)
        if parts:
            chosen = parts[0]
            for other in parts[1:]:
                if other.entry[1:3] != chosen.entry[1:3]:
                    raise PartConflict(
                        f"{self.uri}: {chosen.entry.path!r} differs between parts "
                        f"{chosen.source!r} ({chosen.entry.size} bytes, sha256 "
                        f"{chosen.entry.sha256[:12]}) and {other.source!r} ({other.entry.size} "
                        f"bytes, sha256 {other.entry.sha256[:12]}); keep one of them and stage "
                        "the other part again",
                        path=self.uri,
                    )
        else:
            chosen = candidates[0]
            if chosen.entry.path in self.exclude:
                self.excluded.add(chosen.entry.path)
                return None
        if chosen.package is None:
            return chosen.entry._replace(package=None, offset=None)
        return chosen.entry._replace(package=self._number(chosen.package))

    def _number(self, package: PackageInfo) -> int:
        if package.key not in self._index:
            self._index[package.key] = len(self.packages)
            self.packages.append(package)
        return self._index[package.key]


def _by_source(candidate: Candidate) -> str:
    return candidate.source or ""
