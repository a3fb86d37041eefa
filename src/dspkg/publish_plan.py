"""What publishing a version will do, computed as data before any upload (pure).

A version's files are its parent's (unless ``start_fresh``), minus ``exclude``,
plus the files of this run; a new path replaces the parent's file of the same path.
Files taken from the parent keep pointing into the parent's packages, so a child
version uploads packages of only its own new files. New files are split into
packages of at most ``package_size`` bytes, on entry boundaries, in path order.
Files at or above ``package_max_file`` stay out of the packages: one such file gains
nothing from a package (it is one request either way), and as a blob it is pulled
with parallel ranged GETs.
"""

from __future__ import annotations

import hashlib
import itertools
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from dspkg import zipformat as zf
from dspkg.errors import InvalidArgument
from dspkg.layout import package_key, package_name
from dspkg.manifest import FileEntry, Manifest, PackageInfo
from dspkg.metadata import VersionRequest
from dspkg.names import VersionUri
from dspkg.sizes import format_size, parse_size
from dspkg.sources import LocalFile, LocalFiles

# Files at or above this size are stored as blobs, not packaged (--package-max-file).
PACKAGE_MAX_FILE = 10_000_000
# No object store holds an object above 5 TiB (S3's limit, the largest of them).
_LARGEST_OBJECT = 5 << 40
# Under this many files, a package saves too few requests to matter.
FEW_FILES = 1_000


def package_max_file(value: int | str) -> int:
    """``--package-max-file``, checked: InvalidArgument for 0, negative or absurd sizes."""
    size = parse_size(value)
    if size == 0:
        raise InvalidArgument(
            f"--package-max-file {value!r}: 0 would keep every file out of the packages; "
            "use --no-packaging for that, or a size such as 10MB"
        )
    if size > _LARGEST_OBJECT:
        raise InvalidArgument(
            f"--package-max-file {value!r} is larger than any object a store holds "
            f"({format_size(_LARGEST_OBJECT)}); use a size such as 10MB"
        )
    return size


@dataclass(frozen=True)
class PackagePlan:
    name: str
    key: str
    files: Sequence[LocalFile]  # a view of the version's LocalFiles when planned from them

    @property
    def estimated_size(self) -> int:
        return package_bytes(self.files)


@dataclass(frozen=True)
class VersionPlan:
    request: VersionRequest
    parent: Manifest | None
    inherited: tuple[FileEntry, ...]
    local: LocalFiles
    packages: tuple[PackagePlan, ...]
    unmatched_excludes: tuple[str, ...]
    package_max_file: int | None = None  # when packaging: bigger files stay blobs

    @property
    def too_big(self) -> tuple[LocalFile, ...]:
        """Files of this run kept out of its packages for their size."""
        if self.package_max_file is None:
            return ()
        limit = self.package_max_file
        return tuple(self.local.where(size >= limit for size in self.local.sizes()))

    @property
    def loose(self) -> LocalFiles:
        """Files of this run in none of its packages: all of them without packages."""
        if not self.packages:
            return self.local
        limit = self.package_max_file
        assert limit is not None
        return self.local.where(size >= limit for size in self.local.sizes())

    @property
    def files(self) -> int:
        return len(self.inherited) + len(self.local)

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.inherited) + self.local.bytes


def _columns(files: Sequence[LocalFile]) -> tuple[Iterable[str], Iterable[int]]:
    """Paths and sizes of ``files``, straight from the columns of :class:`LocalFiles`."""
    if isinstance(files, LocalFiles):
        return files.rels(), files.sizes()
    return [f.rel for f in files], [f.size for f in files]


def package_bytes(files: Sequence[LocalFile]) -> int:
    """The exact size of the package :class:`~dspkg.zipwriter.PackageWriter` makes of ``files``."""
    rels, sizes = _columns(files)
    names = array("q", map(len, map(str.encode, rels)))
    data = array("q", sizes)
    plain = zf.plain_package_size(len(data), sum(names), sum(data), max(data, default=0))
    if plain is not None:
        return plain
    return zf.package_size(zip(names, data, strict=True))


def split_packages(files: Sequence[LocalFile], package_size: int) -> list[Sequence[LocalFile]]:
    """Consecutive runs of ``files`` (sorted) whose packages stay within ``package_size``
    (slices of ``files``: views, for :class:`LocalFiles`).

    A file bigger than the limit gets a package of its own.
    """
    if not files:
        return []
    # The per-entry bound is its name twice, its data and a constant; a run ends where
    # the running sum of bounds passes the limit (found by bisection, not file by file).
    rels, sizes = _columns(files)
    fixed = zf.entry_cost_max(0, 0)
    costs = map(
        lambda name, size: fixed + 2 * len(name.encode()) + size,
        rels,
        sizes,
    )
    ends = array("q", itertools.accumulate(costs))
    room = package_size - zf.END_RECORDS_MAX
    groups: list[Sequence[LocalFile]] = []
    start, spent = 0, 0
    while start < len(files):
        stop = max(start + 1, bisect_right(ends, spent + room, start))
        groups.append(files[start:stop])
        spent = ends[stop - 1]
        start = stop
    return groups


def packable(files: LocalFiles, max_file: int) -> LocalFiles:
    """The files small enough for a package (below ``max_file``); the others stay blobs."""
    return files.where(size < max_file for size in files.sizes())


def split_runs(files: Sequence[LocalFile], max_files: int, max_bytes: int) -> list[list[LocalFile]]:
    """Consecutive runs of ``files`` of at most ``max_files`` files and ``max_bytes`` bytes
    (a file bigger than ``max_bytes`` alone): the work of one task that uploads blobs."""
    runs: list[list[LocalFile]] = []
    size = 0
    for f in files:
        if not runs or len(runs[-1]) >= max_files or (runs[-1] and size + f.size > max_bytes):
            runs.append([])
            size = 0
        runs[-1].append(f)
        size += f.size
    return runs


@dataclass(frozen=True)
class TaskPlan:
    """The files one task of a distributed publish stages as one part: the package
    ``package`` of a single publish, or (``package`` None) files uploaded as blobs."""

    files: tuple[LocalFile, ...]
    package: str | None


def plan_tasks(
    uri: VersionUri,
    files: Sequence[LocalFile],
    *,
    packaging: bool,
    package_size: int,
    max_file: int,
    task_files: int,
    task_bytes: int,
) -> list[TaskPlan]:
    """The tasks that publish ``files`` (sorted) as version ``uri`` in parts that commit to
    what a single publish makes (:func:`plan_version`): one task per package it builds,
    under the same name and with the same files; its files of ``max_file`` bytes or more
    (kept out of the packages) in tasks of at most ``task_files`` files and ``task_bytes``
    bytes; without packaging, every file in such tasks."""
    if not packaging:
        return [TaskPlan(tuple(run), None) for run in split_runs(files, task_files, task_bytes)]
    small = [f for f in files if f.size < max_file]
    groups = split_packages(small, package_size)
    packages = [
        TaskPlan(tuple(group), package_name(uri.dataset, uri.version, i, len(groups)))
        for i, group in enumerate(groups)
    ]
    big = [f for f in files if f.size >= max_file]
    blobs = [TaskPlan(tuple(run), None) for run in split_runs(big, task_files, task_bytes)]
    return packages + blobs


def version_paths(request: VersionRequest, parent_paths: Sequence[str]) -> Sequence[str]:
    """Every path of the version ``request`` asks for, given its parent's paths."""
    own = request.files
    if request.start_fresh or not parent_paths:
        if all(map(str.__lt__, own, itertools.islice(own, 1, None))):
            return own  # sorted and each once already (what requests hold)
        return sorted(set(own))
    excluded = set(request.exclude)
    return sorted(set(own) | {p for p in parent_paths if p not in excluded})


def plan_version(
    request: VersionRequest,
    parent: Manifest | None,
    own: LocalFiles,
    *,
    packaging: bool,
    package_size: int,
    attempt: str,
    max_file: int = PACKAGE_MAX_FILE,
    names: Callable[[int, int], str] | None = None,
) -> VersionPlan:
    """The plan of ``request`` given its ``parent`` and ``own``, the files of this run
    that it takes. ``attempt`` names this publish's packages apart from any other's (see
    layout); files of ``max_file`` bytes or more stay out of the packages; ``names(i, n)``
    names package ``i`` of ``n`` (default ``ds.ver[.i-of-n].vhpkgzip``)."""
    inherited: list[FileEntry] = []
    unmatched: tuple[str, ...] = ()
    if parent is not None and not request.start_fresh:
        excluded = set(request.exclude)
        own_paths = set(own.rels())
        parent_paths = {f.path for f in parent.files}
        unmatched = tuple(sorted(excluded - parent_paths))
        del parent_paths
        inherited = [f for f in parent.files if f.path not in excluded and f.path not in own_paths]
    packed = packable(own, max_file) if packaging else LocalFiles([], array("q"))
    return VersionPlan(
        request=request,
        parent=parent,
        inherited=tuple(inherited),
        local=own,
        packages=plan_packages(request.uri, packed, package_size, attempt, names),
        unmatched_excludes=unmatched,
        package_max_file=max_file if packaging and own else None,
    )


def plan_packages(
    uri: VersionUri,
    files: Sequence[LocalFile],
    package_size: int,
    attempt: str,
    names: Callable[[int, int], str] | None = None,
) -> tuple[PackagePlan, ...]:
    """The packages of ``files`` (sorted) for version ``uri``, under ``attempt``'s keys;
    ``names(i, n)`` names package ``i`` of ``n``."""
    groups = split_packages(files, package_size)
    name_of = names or (lambda i, n: package_name(uri.dataset, uri.version, i, n))
    return tuple(
        PackagePlan(name, package_key(uri.dataset, uri.version, attempt, name), group)
        for name, group in ((name_of(i, len(groups)), group) for i, group in enumerate(groups))
    )


def shape_digest(files: Sequence[LocalFile]) -> str:
    """Identifies a package's layout (paths and sizes) before any file is read."""
    sha = hashlib.sha256()
    rels, sizes = _columns(files)
    lines = map("{}\0{}\n".format, rels, sizes)
    # A piece of the text at a time: the same digest as the whole text at once.
    while piece := "".join(itertools.islice(lines, 65536)):
        sha.update(piece.encode())
    return sha.hexdigest()


def data_offsets(files: Iterable[tuple[str, int]]) -> Iterator[int]:
    """Where the data of each file of ``(path, size)`` starts in the package made of them,
    in order (the writer's layout: a local header, the name, a ZIP64 field past 4 GiB)."""
    position = 0
    for path, size in files:
        position += zf.local_header_size(path.encode(), size)
        yield position
        position += size


@dataclass(frozen=True)
class BuiltPackage:
    info: PackageInfo
