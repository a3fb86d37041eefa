"""The records of a version being published, in path order as they become known (pure).

A version's manifest lists its files sorted by path: those it inherits from its parent
(pointing into the parent's packages) and those of this run. A publish learns the
latter as it reads them, a package at a time, in path order; :class:`VersionRecords`
merges them with the inherited ones as they come and cuts the result into manifest
shards (:class:`~dspkg.shards.ShardWriter`, the cuts of a whole manifest), so a
publish holds one shard of records, never the version's. The caller stores each shard
as it is finished and, at the end, creates the root (:meth:`VersionRecords.root`).

Files of this run in no package come in path order too when nothing is packaged. When
packages are built, such files (too big to package) are read first, before the
packages, and handed in with :meth:`VersionRecords.add_early`: they are few (each is
at least ``package_max_file`` bytes), and each waits for its place in the order.

What comes out is what :func:`dspkg.shards.encode_manifest` makes of the whole
manifest: the same shards, byte for byte, and the same root (tests hold the two to it).
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterable, Iterator

from dspkg.manifest import FileEntry, ManifestRoot, PackageInfo, ShardInfo
from dspkg.publish_plan import VersionPlan
from dspkg.shards import WRITER_LIMITS, ShardLimits, ShardWriter

Shard = tuple[ShardInfo, bytes]


class SortedMerge:
    """Entries of two sorted sources, handed out in path order as a third source (fed
    in order, one at a time) moves on: before each of its entries, every entry of the
    others that comes before it."""

    def __init__(self, first: Iterable[FileEntry], second: Iterable[FileEntry] = ()) -> None:
        self._first = iter(first)
        self._head: FileEntry | None = next(self._first, None)
        self._second: deque[FileEntry] = deque(second)

    def push(self, entry: FileEntry) -> None:
        """Append ``entry`` to the second source (after its last entry, in order)."""
        if self._second and entry.path <= self._second[-1].path:
            raise ValueError(f"entries out of order: {entry.path!r}")
        self._second.append(entry)

    def before(self, path: str | None) -> Iterator[FileEntry]:
        """The entries of both sources before ``path`` (None: every one left), in order."""
        second = self._second
        while True:
            head = self._head
            if second and (head is None or second[0].path < head.path):
                if path is not None and second[0].path >= path:
                    return
                yield second.popleft()
            elif head is not None:
                if path is not None and head.path >= path:
                    return
                self._head = next(self._first, None)
                yield head
            else:
                return


class MergedDigest:
    """:func:`dspkg.manifest.content_digest` of ``inherited`` (sorted) merged with files
    :meth:`add`-ed in path order, one entry at a time: what republishing compares
    without holding the files."""

    def __init__(self, inherited: Iterable[FileEntry] = ()) -> None:
        self._sha = hashlib.sha256()
        self._merge = SortedMerge(inherited)

    def _update(self, path: str, size: int, sha256: str) -> None:
        self._sha.update(f"{path}\0{size}\0{sha256}\n".encode())

    def add(self, path: str, size: int, sha256: str) -> None:
        for f in self._merge.before(path):
            self._update(f.path, f.size, f.sha256)
        self._update(path, size, sha256)

    def hexdigest(self) -> str:
        """The digest of everything (call once every file was added)."""
        for f in self._merge.before(None):
            self._update(f.path, f.size, f.sha256)
        return self._sha.hexdigest()


class VersionRecords:
    """The manifest of ``plan`` as its files are read: :meth:`add` each file of this run
    in path order (with its package index and data offset when packaged) and store the
    shards it returns; :meth:`finish`, then :meth:`root`.

    ``blobs``: whether this run stores every packaged file as a blob too. Packages are
    numbered as a whole manifest numbers them: the parent's packages that inherited files
    use, in the order those files first use them, then each package of this run as
    :meth:`package` announces it.
    """

    def __init__(
        self, plan: VersionPlan, *, blobs: bool, limits: ShardLimits = WRITER_LIMITS
    ) -> None:
        self._plan = plan
        self._packages: list[PackageInfo | None] = []
        self._index_of: dict[str, int] = {}
        parent = plan.parent
        renumber: dict[int, int] = {}
        if parent is not None:
            for f in plan.inherited:
                if f.package is not None and f.package not in renumber:
                    info = parent.packages[f.package]
                    renumber[f.package] = self._number(info.key)
                    self._packages[renumber[f.package]] = info
        inherited = (
            f if f.package is None else f._replace(package=renumber[f.package])
            for f in plan.inherited
        )
        self._merge = SortedMerge(inherited)
        self._writer = ShardWriter(plan.request.uri.dataset, limits=limits)
        self._blobs = blobs and (parent is None or parent.blobs or not plan.inherited)
        self._last: str | None = None
        self._finished = False

    def _number(self, key: str) -> int:
        if key not in self._index_of:
            self._index_of[key] = len(self._packages)
            self._packages.append(None)
        return self._index_of[key]

    def package(self, key: str) -> int:
        """The index of the package stored at ``key`` (one built or reused by this run),
        numbered on first mention: announce packages in the plan's order."""
        return self._number(key)

    def package_done(self, index: int, info: PackageInfo) -> None:
        """What the package of ``index`` turned out to be (its size and hash)."""
        self._packages[index] = info

    def add_early(self, entry: FileEntry) -> None:
        """A file of this run read before the packages (in no package; in path order)."""
        self._merge.push(entry)

    def add(self, entry: FileEntry) -> list[Shard]:
        """The next file of this run in path order; returns the shards it completes."""
        if self._finished:
            raise ValueError("the records are finished")
        if self._last is not None and entry.path <= self._last:
            raise ValueError(f"files out of order: {entry.path!r} after {self._last!r}")
        self._last = entry.path
        done = self._take(self._merge.before(entry.path))
        shard = self._writer.add(entry)
        if shard is not None:
            done.append(shard)
        return done

    def finish(self) -> list[Shard]:
        """Every record left (inherited or read early), and the last shard."""
        self._finished = True
        done = self._take(self._merge.before(None))
        last = self._writer.flush()
        if last is not None:
            done.append(last)
        return done

    def _take(self, entries: Iterable[FileEntry]) -> list[Shard]:
        return [shard for shard in map(self._writer.add, entries) if shard is not None]

    @property
    def shards(self) -> tuple[ShardInfo, ...]:
        """The shards finished so far."""
        return tuple(self._writer.shards)

    def root(self, *, created_at: str) -> ManifestRoot:
        """The version's root, once :meth:`finish` returned the last shard."""
        if not self._finished:
            raise ValueError("finish the records first")
        missing = [i for i, info in enumerate(self._packages) if info is None]
        if missing:
            raise ValueError(f"package {missing[0]} was announced but never done")
        plan = self._plan
        packages = tuple(p for p in self._packages if p is not None)
        return self._writer.root(
            version=plan.request.uri.version,
            packages=packages,
            parent=str(plan.parent.uri) if plan.parent is not None else None,
            created_at=created_at,
            blobs=self._blobs,
            package_max_file=plan.package_max_file,
        )
