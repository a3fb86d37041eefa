"""The record of one dataset version in memory, and its v1 JSON form (pure).

A version is files (path, size, sha256, and where each lies in a package) and packages.
In the store it takes one of two forms (docs/formats.md):

- v1, one JSON document at ``datasets/<dataset>/versions/<version>.json``, sorted keys::

    {"blobs": true, "created_at": "2026-11-25T12:00:00Z", "dataset": "imagenet-subset",
     "files": [{"offset": 67, "package": 0, "path": "cat/0001.jpg",
                "sha256": "9f86d0...", "size": 10240}],
     "from": null,
     "packages": [{"entries": 2100, "key": "packages/imagenet-subset/train-v1/5f0c2a9e4b7d1c83/\
imagenet-subset.train-v1.vhpkgzip", "name": "imagenet-subset.train-v1.vhpkgzip",
                   "sha256": "2c26b4...", "size": 21874990}],
     "schema_version": 1, "version": "train-v1"}

- v2, what dspkg writes: a small root at the same key and shards of the file records
  (:mod:`dspkg.shards`); :class:`ManifestRoot` is the root in memory.

``package`` indexes ``packages`` and ``offset`` is where the file's bytes start in
that package, so any run of files is one ranged GET. Files are sorted by path.
``blobs`` says whether every packaged file is also stored on its own under ``blobs/``;
a file in no package is always a blob. ``package_max_file`` (only in versions made
with packaging) is the size at or above which files were kept out of the packages.

A manifest read from the store is untrusted: :func:`Manifest.from_json` checks every
path, size, hash, offset and package key (:mod:`dspkg.manifest_checks`) before anything
uses them.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import json
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from dspkg import speedups
from dspkg.errors import UnsafePackage
from dspkg.layout import package_key_problem
from dspkg.manifest_checks import LayoutCheck, all_lists, check_records, tree_check
from dspkg.names import VersionUri, check_name

SCHEMA_V1 = 1
SCHEMA_V2 = 2
_SHA256 = re.compile(r"[0-9a-f]{64}")


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


@dataclass(frozen=True, slots=True)
class ShardInfo:
    """One shard of a v2 manifest, as its root lists it: ``count`` files from ``first`` to
    ``last`` (paths, inclusive) holding ``bytes`` bytes; the shard object is ``size``
    bytes at ``key`` and hashes to ``sha256``."""

    key: str
    sha256: str
    size: int
    count: int
    bytes: int
    first: str
    last: str

    def to_json(self) -> dict[str, Any]:
        return {
            "bytes": self.bytes,
            "count": self.count,
            "first": self.first,
            "key": self.key,
            "last": self.last,
            "sha256": self.sha256,
            "size": self.size,
        }

    def may_hold(self, prefix: str) -> bool:
        """Whether a path starting with ``prefix`` can lie in this shard's range."""
        return self.last >= prefix and (self.first < prefix or self.first.startswith(prefix))


def content_digest(entries: Iterable[tuple[str, int, str]]) -> str:
    """Identifies a list of files by content: SHA-256 of ``path\0size\0sha256\n`` per file,
    in order. Equal digests, equal files (what republishing must not change)."""
    h = hashlib.sha256()
    for path, size, sha in entries:
        h.update(f"{path}\0{size}\0{sha}\n".encode())
    return h.hexdigest()


@dataclass(frozen=True)
class ManifestRoot:
    """What a version is without its file records: the v2 root document, or a v1 manifest
    seen the same way (its files then ride along in ``inline`` and it has no shards).

    Consumers that need only some files load the root, then the shards whose path range
    can hold them (:meth:`shards_for`); ``show`` needs nothing more than the root.
    """

    dataset: str
    version: str
    parent: str | None
    created_at: str
    blobs: bool
    packages: tuple[PackageInfo, ...]
    package_files: tuple[int, ...]  # files of this version in each package
    files: int
    bytes: int
    digest: str | None  # content_digest of the files; None for v1, which does not record it
    shards: tuple[ShardInfo, ...]
    package_max_file: int | None = None  # as in Manifest
    schema_version: int = SCHEMA_V2
    inline: tuple[FileEntry, ...] | None = None
    # In memory only: the cache's note says this version's shards were checked together.
    validated: bool = field(default=False, compare=False)

    @property
    def uri(self) -> VersionUri:
        return VersionUri(self.dataset, self.version)

    @property
    def packaged(self) -> bool:
        return bool(self.packages)

    def shards_for(self, prefix: str) -> tuple[ShardInfo, ...]:
        """The shards that can hold paths starting with ``prefix`` ("" for all)."""
        return tuple(s for s in self.shards if s.may_hold(prefix))

    def file_digest(self) -> str:
        """The content digest, computed from the files of a v1 manifest."""
        if self.digest is not None:
            return self.digest
        assert self.inline is not None
        return content_digest(f[:3] for f in self.inline)


@dataclass(frozen=True)
class Manifest:
    """A version with every file record loaded."""

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

    @property
    def uri(self) -> VersionUri:
        return VersionUri(self.dataset, self.version)

    @functools.cached_property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @functools.cached_property
    def digest(self) -> str:
        return content_digest(f[:3] for f in self.files)

    @property
    def packaged(self) -> bool:
        return bool(self.packages)

    def same_content(self, other: Manifest | ManifestRoot) -> bool:
        """Same files with the same bytes (what republishing must not change)."""
        if isinstance(other, ManifestRoot):
            return other.file_digest() == self.digest
        return [f[:3] for f in self.files] == [f[:3] for f in other.files]

    def package_files(self) -> tuple[int, ...]:
        used = [0] * len(self.packages)
        for f in self.files:
            if f.package is not None:
                used[f.package] += 1
        return tuple(used)

    def root(self) -> ManifestRoot:
        """This version seen as a root whose files ride along (no shards)."""
        return ManifestRoot(
            dataset=self.dataset,
            version=self.version,
            parent=self.parent,
            created_at=self.created_at,
            blobs=self.blobs,
            packages=self.packages,
            package_files=self.package_files(),
            files=len(self.files),
            bytes=self.total_bytes,
            digest=None,
            shards=(),
            package_max_file=self.package_max_file,
            schema_version=SCHEMA_V1,
            inline=self.files,
        )

    def to_json(self) -> bytes:
        """The v1 form (readers accept it; dspkg writes v2, see :mod:`dspkg.shards`)."""
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
            "schema_version": SCHEMA_V1,
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
        """Parse and validate a v1 manifest from the store; raise UnsafePackage naming ``obj``.

        ``trusted`` skips validating the files: only for bytes known to be exactly
        ones validated before (the cache's own copy, whose hash it recorded).
        """
        with collector_paused():
            return _parse_v1(data, obj=obj, max_files=max_files, trusted=trusted)


# tuple.__new__ straight from C: four times faster than FileEntry(...) per record.
_NEW_ENTRY: Any = functools.partial(tuple.__new__, FileEntry)


def make_entries(
    paths: list[Any], sizes: list[Any], shas: list[Any], indexes: list[Any], offsets: list[Any]
) -> tuple[FileEntry, ...]:
    """File entries from checked columns."""
    compiled = speedups.compiled_checks()
    if compiled is not None and all_lists(paths, sizes, shas, indexes, offsets):
        # Built in C and untracked by the cycle collector (they hold no containers): a
        # million tracked tuples would cost the next collection a walk over every one.
        entries: tuple[FileEntry, ...] = compiled.file_entries(
            FileEntry, paths, sizes, shas, indexes, offsets
        )
        return entries
    return tuple(map(_NEW_ENTRY, zip(paths, sizes, shas, indexes, offsets, strict=True)))


class _Pause:
    """How many threads pause the collector now, and whether it ran before the first."""

    lock = threading.Lock()
    holders = 0
    was_enabled = False


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """The collector would otherwise rescan a million fresh objects several times.

    Shards decode in several threads at once: the collector runs again when the last of
    them is done, not when the first is (which would let it walk the columns the others
    are still building, measured at a tenth of a second per collection).
    """
    with _Pause.lock:
        if _Pause.holders == 0:
            _Pause.was_enabled = gc.isenabled()
            gc.disable()
        _Pause.holders += 1
    try:
        yield
    finally:
        with _Pause.lock:
            _Pause.holders -= 1
            if _Pause.holders == 0 and _Pause.was_enabled:
                gc.enable()


def bad_manifest(obj: str) -> Any:
    """The error maker for the manifest (or shard) ``obj``: ``bad(message, entry)``."""

    def bad(message: str, entry: str | None = None) -> UnsafePackage:
        return UnsafePackage(f"manifest {obj}: {message}", obj=obj, entry=entry)

    return bad


def parse_json_object(data: bytes, bad: Any) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad(f"not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise bad("not a JSON object")
    return doc


def schema_of(doc: dict[str, Any], bad: Any) -> int:
    """The document's schema version, if this dspkg reads it."""
    version = doc.get("schema_version")
    if type(version) is not int or version not in (SCHEMA_V1, SCHEMA_V2):
        raise bad(
            f"schema_version {version!r} is not supported "
            f"(this dspkg reads {SCHEMA_V1} and {SCHEMA_V2}); upgrade dspkg"
        )
    return version


@dataclass(frozen=True)
class VersionFacts:
    """The fields v1 manifests and v2 roots share, validated."""

    dataset: str
    version: str
    parent: str | None
    created_at: str
    blobs: bool
    packages: tuple[PackageInfo, ...]
    package_max_file: int | None


def parse_facts(doc: dict[str, Any], bad: Any) -> VersionFacts:
    try:
        dataset = check_name(doc["dataset"], what="dataset name")
        version = check_name(doc["version"], what="version")
        parent = doc.get("from")
        if parent is not None:
            parent = str(VersionUri.parse(parent))
        packages = tuple(parse_package(p, bad) for p in doc.get("packages") or ())
        created_at = doc.get("created_at", "")
        blobs = doc.get("blobs", True)
        max_file = doc.get("package_max_file")
    except (KeyError, TypeError) as exc:
        raise bad(f"missing or malformed field {exc}") from None
    except UnsafePackage:
        raise
    except Exception as exc:
        raise bad(str(exc)) from None
    if not isinstance(created_at, str) or not isinstance(blobs, bool):
        raise bad("malformed created_at or blobs")
    if max_file is not None and (not is_count(max_file) or max_file == 0):
        raise bad("malformed package_max_file")
    return VersionFacts(dataset, version, parent, created_at, blobs, packages, max_file)


def _parse_v1(data: bytes, *, obj: str, max_files: int, trusted: bool) -> Manifest:
    bad = bad_manifest(obj)
    doc = parse_json_object(data, bad)
    if schema_of(doc, bad) != SCHEMA_V1:
        raise bad("is a v2 root, not a v1 manifest")
    facts = parse_facts(doc, bad)
    raw_files = doc.get("files")
    if not isinstance(raw_files, list) or len(raw_files) > max_files:
        raise bad(f"'files' must be a list of at most {max_files} entries")
    columns = _columns(raw_files, bad)
    if not trusted:
        check_records(*columns, bad)
        paths, sizes, _, indexes, offsets = columns
        tree_check(paths, bad)
        LayoutCheck(facts.packages, bad).add(paths, sizes, indexes, offsets)
    return Manifest(
        dataset=facts.dataset,
        version=facts.version,
        files=make_entries(*columns),
        packages=facts.packages,
        parent=facts.parent,
        created_at=facts.created_at,
        blobs=facts.blobs,
        package_max_file=facts.package_max_file,
    )


Columns = tuple[list[Any], list[Any], list[Any], list[Any], list[Any]]


def _columns(raw_files: list[Any], bad: Any) -> Columns:
    """The v1 records as columns: paths, sizes, hashes, package indexes, offsets."""
    try:
        get = dict.get
        return (
            [r["path"] for r in raw_files],
            [r["size"] for r in raw_files],
            [r["sha256"] for r in raw_files],
            [get(r, "package") for r in raw_files],
            [get(r, "offset") for r in raw_files],
        )
    except (TypeError, KeyError, AttributeError):
        for r in raw_files:
            if not isinstance(r, dict) or not {"path", "size", "sha256"} <= r.keys():
                raise bad(f"malformed file record {r!r:.80}") from None
        raise bad("malformed file records") from None


def parse_package(raw: Any, bad: Any) -> PackageInfo:
    key = raw["key"]
    name = raw["name"]
    size, sha, entries = raw["size"], raw["sha256"], raw["entries"]
    problem = package_key_problem(key, name)
    if problem:
        raise bad(f"package key {key!r} is not a package path ({problem})")
    if not is_count(size) or not is_count(entries) or not isinstance(sha, str):
        raise bad(f"package {name!r} has malformed size or entries")
    if not _SHA256.fullmatch(sha):
        raise bad(f"package {name!r} has a malformed sha256")
    return PackageInfo(name=name, key=key, size=size, sha256=sha, entries=entries)


def is_count(value: Any) -> bool:
    return type(value) is int and value >= 0
