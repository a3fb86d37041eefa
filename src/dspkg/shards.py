"""Manifest v2: a small root document and immutable shards of the file records (pure).

The root sits at the manifest key and holds what a version is without its files:
names, lineage, packages (with how many of the version's files each holds), totals,
the content digest, and the list of shards, sorted, each with its path range::

    {"blobs": true, "bytes": 9, "created_at": "...", "dataset": "pets", "digest": "ab12...",
     "files": 2, "from": null,
     "packages": [{"entries": 2, "files": 2, "key": "packages/pets/v1/3f9a.../pets.v1.vhpkgzip",
                   "name": "pets.v1.vhpkgzip", "sha256": "b894...", "size": 219}],
     "schema_version": 2,
     "shards": [{"bytes": 9, "count": 2, "first": "cat/1.jpg", "key":
                 "datasets/pets/shards/5d1e....json.gz", "last": "dog/1.jpg",
                 "sha256": "5d1e...", "size": 190}],
     "version": "v1"}

A shard is gzip'd JSON holding its records as columns, sorted by path::

    {"offset": [39, 82], "package": [0, 0], "path": ["cat/1.jpg", "dog/1.jpg"],
     "schema_version": 2, "sha256": ["404c...", "6049..."], "size": [4, 5]}

Columns, not one object per file: a JSON reader builds lists of strings and integers in C
(``json.loads``, or the compiled reader of exactly this shape in ``_columns.c``), and every
check runs over a whole column (:mod:`dspkg.manifest_checks`, in C where it is built), so a
million records load and validate in well under two seconds where per-file objects took
four and a half (docs/formats.md has the measurements). Shards are named by the SHA-256
of their bytes and written before the root; the root, written last with a conditional
create, is still the one commit point.

Writers cut shards where the content says (a shard ends after a path whose CRC-32 is 0
modulo 65,536, once it holds 25,000 records, and always at 100,000), so a child version
that changes a few files shares the other shards with its parent.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import struct
import zlib
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any, NamedTuple

from dspkg import speedups
from dspkg.layout import shard_key
from dspkg.manifest import (
    SCHEMA_V1,
    SCHEMA_V2,
    FileEntry,
    Manifest,
    ManifestRoot,
    PackageInfo,
    ShardInfo,
    bad_manifest,
    collector_paused,
    is_count,
    make_entries,
    parse_facts,
    parse_json_object,
    schema_of,
)
from dspkg.manifest_checks import CollisionCheck, LayoutCheck, check_records, tree_check
from dspkg.paths import path_problem

READ_MAX_SHARD_FILES = 1_000_000  # what a reader accepts in one shard
MAX_FILES = 10**9  # what a reader accepts in one version
# Decompressed bytes a reader accepts per record a shard declares: the longest path
# (4096 bytes, escaped up to six times over) and the other columns. A shard that
# inflates beyond what its records could take is refused, not decompressed.
_MAX_JSON_PER_FILE = 6 * 4096 + 200
# Measured on 1,000,000 records: level 1 is within 4% of level 6's size at a fifth of
# the time (docs/formats.md).
_GZIP_LEVEL = 1
# gzip's member header for our level and no time (what gzip.compress writes before the
# data; it depends on neither), and how many values a shard encodes at a time.
_GZIP_HEADER = gzip.compress(b"", compresslevel=_GZIP_LEVEL, mtime=0)[:10]
_ENCODE_STEP = 8192
_SHA256 = re.compile(r"[0-9a-f]{64}")
_COLUMNS = ("path", "size", "sha256", "package", "offset")


@dataclass(frozen=True)
class ShardLimits:
    """Where a writer cuts: after a path whose CRC-32 has ``cut_mask`` bits all zero, once
    a shard holds ``min_files`` records, and always at ``max_files``."""

    min_files: int = 25_000
    max_files: int = 100_000
    cut_mask: int = 0xFFFF


WRITER_LIMITS = ShardLimits()


class Records(NamedTuple):
    """One shard's records as columns (what a shard holds, in the order of FileEntry)."""

    paths: list[Any]
    sizes: list[Any]
    shas: list[Any]
    indexes: list[Any]
    offsets: list[Any]


# --- writing ------------------------------------------------------------------------


def shard_bounds(paths: Sequence[str], limits: ShardLimits = ShardLimits()) -> list[int]:
    """Where a writer cuts sorted records into shards: the end index of each shard."""
    crcs = list(map(zlib.crc32, map(str.encode, paths)))
    bounds: list[int] = []
    start = 0
    while start < len(paths):
        end = min(start + limits.max_files, len(paths))
        for i in range(start + limits.min_files - 1, end):
            if not crcs[i] & limits.cut_mask:
                end = i + 1
                break
        bounds.append(end)
        start = end
    return bounds


def encode_shard(files: Sequence[FileEntry]) -> bytes:
    """The stored bytes of one shard (deterministic: the same records, the same bytes)."""
    doc = {
        "offset": [f.offset for f in files],
        "package": [f.package for f in files],
        "path": [f.path for f in files],
        "schema_version": SCHEMA_V2,
        "sha256": [f.sha256 for f in files],
        "size": [f.size for f in files],
    }
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return gzip.compress(text.encode(), compresslevel=_GZIP_LEVEL, mtime=0)


def shard_of(dataset: str, files: Sequence[FileEntry]) -> tuple[ShardInfo, bytes]:
    columns = ShardColumns()
    for f in files:
        columns.add(f)
    return columns.shard(dataset)


class ShardColumns:
    """One shard's records as they are gathered: columns in arrays (a path, 32 bytes of
    hash and three numbers a record, where a record object with its hash as text took
    about 250 bytes), encoded into exactly what :func:`encode_shard` makes of them."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self._sizes = array("q")
        self._shas = bytearray()
        self._packages = array("q")  # -1: in no package
        self._offsets = array("q")

    def __len__(self) -> int:
        return len(self.paths)

    def add(self, entry: FileEntry) -> None:
        sha = bytes.fromhex(entry.sha256)
        if len(sha) != 32 or sha.hex() != entry.sha256:
            raise ValueError(f"not a SHA-256 in lowercase hex: {entry.sha256!r}")
        self.paths.append(entry.path)
        self._sizes.append(entry.size)
        self._shas += sha
        self._packages.append(-1 if entry.package is None else entry.package)
        self._offsets.append(-1 if entry.offset is None else entry.offset)

    def encode(self) -> bytes:
        """The stored bytes: :func:`encode_shard`'s JSON (keys sorted) gzip'd, written a
        few thousand values at a time (deflate's output does not depend on how its input
        is cut, so this is the same gzip member as one call on the whole text, without
        the whole text and its bytes in memory at once)."""
        deflater = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, -15)  # raw: our own wrapper
        crc = size = 0
        out = [_GZIP_HEADER]
        for piece in self._json():
            data = piece.encode()
            crc = zlib.crc32(data, crc)
            size += len(data)
            out.append(deflater.compress(data))
        out.append(deflater.flush())
        out.append(struct.pack("<LL", crc, size & 0xFFFFFFFF))
        return b"".join(out)

    def _json(self) -> Iterator[str]:
        n = len(self.paths)

        def column(render: Callable[[int, int], str]) -> Iterator[str]:
            yield "["
            for start in range(0, n, _ENCODE_STEP):
                yield ("," if start else "") + render(start, min(start + _ENCODE_STEP, n))
            yield "]"

        def numbers(values: array[int]) -> Callable[[int, int], str]:
            # Counts are never negative: -1 is the missing value, JSON's null.
            return lambda a, b: ",".join(map(str, values[a:b])).replace("-1", "null")

        def paths(a: int, b: int) -> str:
            return json.dumps(self.paths[a:b], separators=(",", ":"), ensure_ascii=False)[1:-1]

        def shas(a: int, b: int) -> str:
            return '"' + self._shas[32 * a : 32 * b].hex(",", 32).replace(",", '","') + '"'

        yield '{"offset":'
        yield from column(numbers(self._offsets))
        yield ',"package":'
        yield from column(numbers(self._packages))
        yield ',"path":'
        yield from column(paths)
        yield f',"schema_version":{SCHEMA_V2},"sha256":'
        yield from column(shas)
        yield ',"size":'
        yield from column(numbers(self._sizes))
        yield "}"

    def shard(self, dataset: str) -> tuple[ShardInfo, bytes]:
        """The shard of these records, stored bytes and what its root says of it."""
        data = self.encode()
        sha = hashlib.sha256(data).hexdigest()
        info = ShardInfo(
            key=shard_key(dataset, sha),
            sha256=sha,
            size=len(data),
            count=len(self.paths),
            bytes=sum(self._sizes),
            first=self.paths[0],
            last=self.paths[-1],
        )
        return info, data


class ShardWriter:
    """Cuts files fed in path order into shards as they come (the same cuts as
    :func:`shard_bounds`), and sums up what the root says of them: a version of any size
    is written holding one shard of records at a time."""

    def __init__(self, dataset: str, packages: int = 0, limits: ShardLimits = ShardLimits()):
        self.dataset = dataset
        self.limits = limits
        self.shards: list[ShardInfo] = []
        self.files = 0
        self.bytes = 0
        self.package_files = [0] * packages
        self._digest = hashlib.sha256()
        self._current = ShardColumns()
        self._last = ""

    def add(self, entry: FileEntry) -> tuple[ShardInfo, bytes] | None:
        """Take the next file; return a finished shard to store, if this one ends it."""
        if self.files and entry.path <= self._last:
            raise ValueError(f"files out of order: {entry.path!r} after {self._last!r}")
        self._last = entry.path
        self.files += 1
        self.bytes += entry.size
        if entry.package is not None:
            if entry.package >= len(self.package_files):
                self.package_files.extend([0] * (entry.package + 1 - len(self.package_files)))
            self.package_files[entry.package] += 1
        self._digest.update(f"{entry.path}\0{entry.size}\0{entry.sha256}\n".encode())
        self._current.add(entry)
        count = len(self._current)
        cut = not zlib.crc32(entry.path.encode()) & self.limits.cut_mask
        if count >= self.limits.max_files or (count >= self.limits.min_files and cut):
            return self.flush()
        return None

    def flush(self) -> tuple[ShardInfo, bytes] | None:
        """The shard in progress, finished (call once more after the last file)."""
        if not self._current:
            return None
        info, data = self._current.shard(self.dataset)
        self._current = ShardColumns()
        self.shards.append(info)
        return info, data

    @property
    def digest(self) -> str:
        return self._digest.hexdigest()

    def root(
        self,
        *,
        version: str,
        packages: Sequence[PackageInfo],
        parent: str | None,
        created_at: str,
        blobs: bool,
        package_max_file: int | None = None,
    ) -> ManifestRoot:
        """The root over every shard written (after the last :meth:`flush`)."""
        assert not self._current, "flush the last shard first"
        used = self.package_files + [0] * (len(packages) - len(self.package_files))
        return ManifestRoot(
            dataset=self.dataset,
            version=version,
            parent=parent,
            created_at=created_at,
            blobs=blobs,
            packages=tuple(packages),
            package_files=tuple(used[: len(packages)]),
            files=self.files,
            bytes=self.bytes,
            digest=self.digest,
            shards=tuple(self.shards),
            package_max_file=package_max_file,
        )


def encode_manifest(
    manifest: Manifest, limits: ShardLimits = ShardLimits()
) -> tuple[ManifestRoot, list[tuple[ShardInfo, bytes]]]:
    """The v2 form of ``manifest``: its root and its shards (write the shards first)."""
    writer = ShardWriter(manifest.dataset, len(manifest.packages), limits)
    shards = [s for s in map(writer.add, manifest.files) if s is not None]
    last = writer.flush()
    if last is not None:
        shards.append(last)
    root = writer.root(
        version=manifest.version,
        packages=manifest.packages,
        parent=manifest.parent,
        created_at=manifest.created_at,
        blobs=manifest.blobs,
        package_max_file=manifest.package_max_file,
    )
    return root, shards


def encode_root(root: ManifestRoot) -> bytes:
    doc = {
        "blobs": root.blobs,
        "bytes": root.bytes,
        "created_at": root.created_at,
        "dataset": root.dataset,
        "digest": root.digest,
        "files": root.files,
        "from": root.parent,
        "packages": [
            {**p.to_json(), "files": n}
            for p, n in zip(root.packages, root.package_files, strict=True)
        ],
        "schema_version": SCHEMA_V2,
        "shards": [s.to_json() for s in root.shards],
        "version": root.version,
    }
    if root.package_max_file is not None:
        doc["package_max_file"] = root.package_max_file
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# --- reading ------------------------------------------------------------------------


def parse_stored(data: bytes, *, obj: str, trusted: bool = False) -> ManifestRoot:
    """A manifest as stored at a version's key, v1 or v2, as a root; UnsafePackage
    naming ``obj`` if it is not valid. A v1 manifest comes with its files (``inline``)."""
    bad = bad_manifest(obj)
    with collector_paused():
        doc = parse_json_object(data, bad)
        if schema_of(doc, bad) == SCHEMA_V1:
            return Manifest.from_json(data, obj=obj, trusted=trusted).root()
        return parse_root_doc(doc, bad)


def parse_root_doc(doc: dict[str, Any], bad: Any) -> ManifestRoot:
    """A v2 root (or part record) from its parsed JSON, validated."""
    facts = parse_facts(doc, bad)
    files: Any = doc.get("files")
    nbytes: Any = doc.get("bytes")
    digest: Any = doc.get("digest")
    if not is_count(files) or files > MAX_FILES or not is_count(nbytes):
        raise bad(f"'files' and 'bytes' must be counts, at most {MAX_FILES} files")
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
        raise bad("malformed digest")
    try:
        package_files = tuple(p["files"] for p in doc["packages"] or ())
    except (KeyError, TypeError):
        raise bad("every package must say how many of the version's files it holds") from None
    for info, used in zip(facts.packages, package_files, strict=True):
        if not is_count(used) or used > info.entries:
            raise bad(f"package {info.name!r} claims a malformed number of files")
    raw_shards = doc.get("shards")
    if not isinstance(raw_shards, list):
        raise bad("'shards' must be a list")
    shards = tuple(_parse_shard_info(raw, facts.dataset, bad) for raw in raw_shards)
    previous = ""
    for shard in shards:
        if shard.first <= previous and previous:
            raise bad(
                f"shard {shard.key} starts at {shard.first!r}, not after the previous shard's "
                f"last path {previous!r}: shards must be sorted and must not overlap",
                shard.first,
            )
        previous = shard.last
    if sum(s.count for s in shards) != files or sum(s.bytes for s in shards) != nbytes:
        raise bad("its shards do not add up to its 'files' and 'bytes'")
    if sum(package_files) > files:
        raise bad("its packages claim more files than it has")
    return ManifestRoot(
        dataset=facts.dataset,
        version=facts.version,
        parent=facts.parent,
        created_at=facts.created_at,
        blobs=facts.blobs,
        packages=facts.packages,
        package_files=package_files,
        files=files,
        bytes=nbytes,
        digest=digest,
        shards=shards,
        package_max_file=facts.package_max_file,
    )


def _parse_shard_info(raw: Any, dataset: str, bad: Any) -> ShardInfo:
    try:
        info = ShardInfo(
            key=raw["key"],
            sha256=raw["sha256"],
            size=raw["size"],
            count=raw["count"],
            bytes=raw["bytes"],
            first=raw["first"],
            last=raw["last"],
        )
    except (KeyError, TypeError):
        raise bad(f"malformed shard record {raw!r:.80}") from None
    if not isinstance(info.sha256, str) or not _SHA256.fullmatch(info.sha256):
        raise bad(f"shard {info.key!r} has a malformed sha256")
    # The key follows from the hash: a root cannot point at any other object.
    if info.key != shard_key(dataset, info.sha256):
        raise bad(f"shard key {info.key!r} is not {shard_key(dataset, info.sha256)!r}")
    if not all(map(is_count, (info.size, info.count, info.bytes))):
        raise bad(f"shard {info.key} has a malformed size, count or bytes")
    if not 1 <= info.count <= READ_MAX_SHARD_FILES:
        raise bad(f"shard {info.key} must hold 1 to {READ_MAX_SHARD_FILES:,} files")
    for path in (info.first, info.last):
        problem = path_problem(path)
        if problem:
            raise bad(f"shard {info.key} has a bad path range {path!r}: {problem}", str(path))
    if info.first > info.last or (info.first == info.last and info.count > 1):
        raise bad(f"shard {info.key} has an empty or reversed path range")
    return info


def shard_names(data: bytes) -> set[str]:
    """The object names of the shards a stored root lists (nothing for v1 or bad bytes);
    not a validation: only what the cache may keep."""
    try:
        doc = json.loads(data)
        return {str(s["key"]).rpartition("/")[2] for s in doc.get("shards") or ()}
    except (ValueError, TypeError, KeyError, AttributeError):
        return set()


def decode_shard(data: bytes, info: ShardInfo, *, obj: str, trusted: bool = False) -> Records:
    """The records of one shard, checked against what its root says of it (hash, count,
    range, bytes) and, unless ``trusted`` (the cache's own copy), record by record."""
    bad = bad_manifest(obj)
    if len(data) != info.size or hashlib.sha256(data).hexdigest() != info.sha256:
        raise bad(
            f"is not the shard its root lists ({len(data)} bytes, sha256 differs from "
            f"{info.sha256[:12]}...); the store is damaged or was tampered with"
        )
    with collector_paused():
        doc = _parse_columns(_gunzip(data, info.count * _MAX_JSON_PER_FILE, bad), bad)
        if doc.get("schema_version") != SCHEMA_V2:
            raise bad(f"shard schema_version {doc.get('schema_version')!r} is not supported")
        columns: list[Any] = [doc.get(name) for name in _COLUMNS]
        records = Records(*columns)
        if not all(isinstance(c, list) and len(c) == info.count for c in records):
            raise bad(f"every column must be a list of the {info.count} records it declares")
        if not trusted:
            check_records(*records, bad)
    if records.paths[0] != info.first or records.paths[-1] != info.last:
        raise bad(f"holds paths outside the range {info.first!r} to {info.last!r} of its root")
    if sum(records.sizes) != info.bytes:
        raise bad("holds a different number of bytes than its root says")
    return records


def _parse_columns(text: bytes, bad: Any) -> dict[str, Any]:
    """The shard's JSON object: read by the compiled reader of exactly this shape where it
    is built (the same result as json.loads, at about half the time), else by json.loads,
    which also reads every other shape of JSON and names what is wrong with bad JSON."""
    compiled = speedups.compiled_checks()
    doc = None if compiled is None else compiled.loads_columns(text)
    return parse_json_object(text, bad) if doc is None else doc


def _gunzip(data: bytes, limit: int, bad: Any) -> bytes:
    inflater = zlib.decompressobj(wbits=31)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise bad(f"is not valid gzip ({exc})") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise bad(f"inflates beyond {limit:,} bytes, more than its records can take")
    if not inflater.eof or inflater.unused_data:
        raise bad("is truncated or has trailing data")
    return out


def join_shards(
    root: ManifestRoot,
    shards: Sequence[ShardInfo],
    records: Sequence[Records],
    *,
    obj: str,
    checked: bool = False,
    entries: Sequence[tuple[FileEntry, ...]] | None = None,
) -> tuple[FileEntry, ...]:
    """The files of ``shards`` (in the root's order), checked together: entries inside
    their packages without overlaps, and no two paths colliding, across shards. Unless
    ``checked``: this whole version was validated before (the cache's note). ``entries``:
    each shard's records already made into file entries (a loader makes them while other
    shards still inflate)."""
    bad = bad_manifest(obj)
    with collector_paused():
        if not checked:
            tree_check(list(chain.from_iterable(r.paths for r in records)), bad)
            layout = LayoutCheck(root.packages, bad)
            for r in records:
                layout.add(r.paths, r.sizes, r.indexes, r.offsets)
            if tuple(shards) == root.shards and tuple(layout.used) != root.package_files:
                raise bad("its shards put a different number of files in its packages")
        if entries is None:
            entries = [make_entries(*r) for r in records]
        return tuple(chain.from_iterable(entries))


class JoinStream:
    """:func:`join_shards`'s checks for a version read a batch of shards at a time, in the
    root's order, in bounded memory (a pull that never holds every file checks its
    version this way before it pulls).

    Each batch is checked as :func:`join_shards` checks it; across batches, the package
    layout carries one number per package (:class:`LayoutCheck`), and paths that collide
    across batches are found from 8 bytes per path (:class:`CollisionCheck`):
    :meth:`suspects` after the last batch.
    """

    def __init__(self, root: ManifestRoot, *, obj: str) -> None:
        self.root = root
        self._bad = bad_manifest(obj)
        self._layout = LayoutCheck(root.packages, self._bad)
        self._collisions = CollisionCheck()
        self._shards = 0

    def add(self, shards: Sequence[ShardInfo], records: Sequence[Records]) -> None:
        """Check the records of the next ``shards`` (those after the last batch)."""
        expected = self.root.shards[self._shards : self._shards + len(shards)]
        if tuple(shards) != expected:
            raise ValueError("shards must be added in the root's order, each once")
        self._shards += len(shards)
        with collector_paused():
            paths = list(chain.from_iterable(r.paths for r in records))
            tree_check(paths, self._bad)
            for r in records:
                self._layout.add(r.paths, r.sizes, r.indexes, r.offsets)
            self._collisions.add(paths)

    def suspects(self) -> frozenset[int]:
        """After the last batch: raise if the packages hold other counts of files than the
        root says; return the hashes of paths that may collide across batches."""
        if self._shards != len(self.root.shards):
            raise ValueError("suspects are known once every shard was added")
        if tuple(self._layout.used) != self.root.package_files:
            raise self._bad("its shards put a different number of files in its packages")
        return self._collisions.suspects()

    def name_collision(self, paths: Iterable[str], suspects: frozenset[int]) -> None:
        """Raise for the collision among ``paths`` (every shard's, again) that
        :meth:`suspects` hinted at; nothing when the hashes merely matched."""
        found = CollisionCheck.collision_among(paths, suspects)
        if found is not None:
            raise self._bad(f"path {found[0]!r} {found[1]}", found[0])


def shard_batches(shards: Sequence[ShardInfo], files: int) -> list[tuple[ShardInfo, ...]]:
    """``shards`` in runs of consecutive shards holding at most ``files`` files together
    (a bigger shard alone): what a pull that never holds every file loads at once."""
    batches: list[tuple[ShardInfo, ...]] = []
    run: list[ShardInfo] = []
    count = 0
    for shard in shards:
        if run and count + shard.count > files:
            batches.append(tuple(run))
            run, count = [], 0
        run.append(shard)
        count += shard.count
    if run:
        batches.append(tuple(run))
    return batches
