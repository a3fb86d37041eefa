"""The manifest of one dataset version and its JSON form (pure).

Stored at ``datasets/<dataset>/versions/<version>.json``, written with sorted keys::

    {
      "created_at": "2026-11-25T12:00:00Z",
      "dataset": "imagenet-subset",
      "files": [
        {"offset": 67, "package": 0, "path": "cat/0001.jpg",
         "sha256": "9f86d0...", "size": 10240}
      ],
      "from": null,
      "packages": [
        {"entries": 2100,
         "key": "packages/imagenet-subset/train-v1/5f0c2a9e4b7d1c83/imagenet-subset.train-v1\
.vhpkgzip",
         "name": "imagenet-subset.train-v1.vhpkgzip", "sha256": "2c26b4...", "size": 21874990}
      ],
      "blobs": true,
      "schema_version": 1,
      "version": "train-v1"
    }

``package`` indexes ``packages`` and ``offset`` is where the file's bytes start in
that package, so any run of files is one ranged GET. Files are sorted by path.
``blobs`` says whether every packaged file is also stored on its own under ``blobs/``;
a file in no package is always a blob. ``package_max_file`` (only in versions made
with packaging) is the size at or above which files were kept out of the packages.

A manifest read from the store is untrusted: :func:`Manifest.from_json` checks
every path, size, hash, offset and package key before anything uses them.
"""

from __future__ import annotations

import functools
import gc
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from dspkg import zipformat as zf
from dspkg.errors import UnsafePackage
from dspkg.layout import package_key_problem
from dspkg.names import VersionUri, check_name
from dspkg.paths import all_paths_ok, path_problem, tree_problem

SCHEMA_VERSION = 1
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHA256_LINES = re.compile(r"(?:[0-9a-f]{64}\n)*[0-9a-f]{64}")


class FileEntry(NamedTuple):
    """One file of a version. A NamedTuple, not a dataclass: a million of them must load fast."""

    path: str
    size: int
    sha256: str
    package: int | None = None
    offset: int | None = None


@dataclass(frozen=True, slots=True)
class PackageInfo:
    name: str
    key: str
    size: int
    sha256: str
    entries: int

    def to_json(self) -> dict[str, Any]:
        return {
            "entries": self.entries,
            "key": self.key,
            "name": self.name,
            "sha256": self.sha256,
            "size": self.size,
        }


@dataclass(frozen=True)
class Manifest:
    dataset: str
    version: str
    files: tuple[FileEntry, ...]
    packages: tuple[PackageInfo, ...] = ()
    parent: str | None = None
    created_at: str = ""
    blobs: bool = True
    # Files at or above this size were kept out of the packages made for this version
    # (they are blobs); None when it was not packaged.
    package_max_file: int | None = None
    schema_version: int = SCHEMA_VERSION

    @property
    def uri(self) -> VersionUri:
        return VersionUri(self.dataset, self.version)

    @functools.cached_property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def packaged(self) -> bool:
        return bool(self.packages)

    def same_content(self, other: Manifest) -> bool:
        """Same files with the same bytes (what republishing must not change)."""
        return [f[:3] for f in self.files] == [f[:3] for f in other.files]

    def to_json(self) -> bytes:
        # Records are formatted directly (keys in sorted order, as json.dumps would put
        # them): a million dicts for json.dumps would cost seconds and hundreds of MB.
        dumps = json.dumps
        records = [
            f'{{"path":{dumps(f.path)},"sha256":"{f.sha256}","size":{f.size}}}'
            if f.package is None
            else f'{{"offset":{f.offset},"package":{f.package},"path":{dumps(f.path)},'
            f'"sha256":"{f.sha256}","size":{f.size}}}'
            for f in self.files
        ]
        head = {
            "blobs": self.blobs,
            "created_at": self.created_at,
            "dataset": self.dataset,
            "files": None,
            "from": self.parent,
            "packages": [p.to_json() for p in self.packages],
            "schema_version": self.schema_version,
            "version": self.version,
        }
        if self.package_max_file is not None:
            head["package_max_file"] = self.package_max_file
        before, _, after = json.dumps(head, sort_keys=True, separators=(",", ":")).partition(
            '"files":null'
        )
        return f'{before}"files":[{",".join(records)}]{after}'.encode()

    @classmethod
    def from_json(
        cls, data: bytes, *, obj: str, max_files: int = 10**7, trusted: bool = False
    ) -> Manifest:
        """Parse and validate a manifest from the store; raise UnsafePackage naming ``obj``.

        ``trusted`` skips validating the files: only for bytes known to be exactly
        ones validated before (the cache's own copy, whose hash it recorded).
        """
        # The collector would otherwise rescan a million fresh dicts several times.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            return _parse(data, obj=obj, max_files=max_files, trusted=trusted)
        finally:
            if gc_was_enabled:
                gc.enable()


def _parse(data: bytes, *, obj: str, max_files: int, trusted: bool) -> Manifest:
    def bad(message: str, entry: str | None = None) -> UnsafePackage:
        return UnsafePackage(f"manifest {obj}: {message}", obj=obj, entry=entry)

    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad(f"not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise bad("not a JSON object")
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise bad(
            f"schema_version {doc.get('schema_version')!r} is not supported "
            f"(this dspkg reads {SCHEMA_VERSION}); upgrade dspkg"
        )
    try:
        dataset = check_name(doc["dataset"], what="dataset name")
        version = check_name(doc["version"], what="version")
        parent = doc.get("from")
        if parent is not None:
            parent = str(VersionUri.parse(parent))
        packages = tuple(_parse_package(p, bad) for p in doc.get("packages") or ())
        raw_files = doc["files"]
        created_at = doc.get("created_at", "")
        blobs = doc.get("blobs", True)
        max_file = doc.get("package_max_file")
    except (KeyError, TypeError) as exc:
        raise bad(f"missing or malformed field {exc}") from None
    except Exception as exc:
        if isinstance(exc, UnsafePackage):
            raise
        raise bad(str(exc)) from None
    if not isinstance(raw_files, list) or len(raw_files) > max_files:
        raise bad(f"'files' must be a list of at most {max_files} entries")
    if not isinstance(created_at, str) or not isinstance(blobs, bool):
        raise bad("malformed created_at or blobs")
    if max_file is not None and (not _is_count(max_file) or max_file == 0):
        raise bad("malformed package_max_file")
    files = _trusted_files(raw_files) if trusted else _parse_files(raw_files, packages, bad)
    return Manifest(
        dataset=dataset,
        version=version,
        files=files,
        packages=packages,
        parent=parent,
        created_at=created_at,
        blobs=blobs,
        package_max_file=max_file,
    )


def _parse_package(raw: Any, bad: Any) -> PackageInfo:
    key = raw["key"]
    name = raw["name"]
    size, sha, entries = raw["size"], raw["sha256"], raw["entries"]
    problem = package_key_problem(key, name)
    if problem:
        raise bad(f"package key {key!r} is not a package path ({problem})")
    if not _is_count(size) or not _is_count(entries) or not isinstance(sha, str):
        raise bad(f"package {name!r} has malformed size or entries")
    if not _SHA256.fullmatch(sha):
        raise bad(f"package {name!r} has a malformed sha256")
    return PackageInfo(name=name, key=key, size=size, sha256=sha, entries=entries)


def _is_count(value: Any) -> bool:
    return type(value) is int and value >= 0


def _parse_files(
    raw_files: list[Any], packages: Sequence[PackageInfo], bad: Any
) -> tuple[FileEntry, ...]:
    files = _well_formed(raw_files, packages)
    if files is None:
        files = _checked_one_by_one(raw_files, packages, bad)
    collision = tree_problem(f.path for f in files)
    if collision:
        raise bad(f"path {collision[0]!r} {collision[1]}", collision[0])
    _check_layout(files, packages, bad)
    return tuple(files)


def _trusted_files(raw_files: list[Any]) -> tuple[FileEntry, ...]:
    get = dict.get
    return tuple(
        map(
            FileEntry,
            [r["path"] for r in raw_files],
            [r["size"] for r in raw_files],
            [r["sha256"] for r in raw_files],
            [get(r, "package") for r in raw_files],
            [get(r, "offset") for r in raw_files],
        )
    )


def _well_formed(raw_files: list[Any], packages: Sequence[PackageInfo]) -> list[FileEntry] | None:
    """The files, if every record is well formed; None sends the caller to the slow loop
    that names the first bad record. Column-wise checks run in C: a million records
    take a fraction of a second instead of seconds."""
    try:
        paths = [r["path"] for r in raw_files]
        sizes = [r["size"] for r in raw_files]
        shas = [r["sha256"] for r in raw_files]
        indexes = [r.get("package") for r in raw_files]
        offsets = [r.get("offset") for r in raw_files]
    except (TypeError, KeyError, AttributeError):
        return None
    if not raw_files:
        return []
    if set(map(type, paths)) != {str} or set(map(type, sizes)) != {int} or min(sizes) < 0:
        return None
    if set(map(type, shas)) != {str} or not _SHA256_LINES.fullmatch("\n".join(shas)):
        return None
    if not all_paths_ok(paths) or paths != sorted(paths) or len(set(paths)) != len(paths):
        return None
    packaged = [i for i, index in enumerate(indexes) if index is not None]
    if len(packaged) != sum(o is not None for o in offsets):
        return None
    for i in packaged:
        index, offset = indexes[i], offsets[i]
        if type(index) is not int or not 0 <= index < len(packages) or type(offset) is not int:
            return None
        if offset < zf.LOCAL.size or offset + sizes[i] > packages[index].size:
            return None
    return list(map(FileEntry, paths, sizes, shas, indexes, offsets))


def _checked_one_by_one(
    raw_files: list[Any], packages: Sequence[PackageInfo], bad: Any
) -> list[FileEntry]:
    files: list[FileEntry] = []
    sha_match = _SHA256.fullmatch
    n_packages = len(packages)
    previous = ""
    for raw in raw_files:
        try:
            path = raw["path"]
            size = raw["size"]
            sha = raw["sha256"]
            package = raw.get("package")
            offset = raw.get("offset")
        except (TypeError, KeyError, AttributeError):
            raise bad(f"malformed file record {raw!r:.80}") from None
        problem = path_problem(path)
        if problem:
            raise bad(f"refusing path {path!r}: {problem}", str(path))
        if path <= previous:
            raise bad(f"path {path!r} is out of order or duplicated", path)
        previous = path
        if type(size) is not int or size < 0:
            raise bad(f"file {path!r} has a malformed size", path)
        if type(sha) is not str or not sha_match(sha):
            raise bad(f"file {path!r} has a malformed sha256", path)
        if package is not None or offset is not None:
            if type(package) is not int or not 0 <= package < n_packages:
                raise bad(f"file {path!r} names package {package!r}, which does not exist", path)
            if type(offset) is not int or offset < zf.LOCAL.size:
                raise bad(f"file {path!r} has a malformed offset", path)
            if offset + size > packages[package].size:
                raise bad(f"file {path!r} lies beyond the end of its package", path)
        files.append(FileEntry(path, size, sha, package, offset))
    return files


def _check_layout(files: Iterable[FileEntry], packages: Sequence[PackageInfo], bad: Any) -> None:
    """Entries of a package must not overlap: overlapping entries multiply the output."""
    by_package: dict[int, list[tuple[int, int, str]]] = {}
    for f in files:
        if f.package is not None and f.offset is not None:
            by_package.setdefault(f.package, []).append((f.offset, f.size, f.path))
    for index, spans in by_package.items():
        spans.sort()
        end = 0
        for offset, size, path in spans:
            header = zf.LOCAL.size + len(path.encode())
            if offset - header < end:
                raise bad(f"file {path!r} overlaps another entry of its package", path)
            end = offset + size
        if len(spans) > packages[index].entries:
            raise bad(f"package {packages[index].name!r} holds more files than it declares")
