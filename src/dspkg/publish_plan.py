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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter

from dspkg import zipformat as zf
from dspkg.errors import InvalidArgument
from dspkg.layout import package_key, package_name
from dspkg.manifest import FileEntry, Manifest, PackageInfo
from dspkg.metadata import VersionRequest
from dspkg.names import VersionUri
from dspkg.sizes import format_size, parse_size
from dspkg.sources import LocalFile
from dspkg.zipwriter import PackageWriter

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
    files: tuple[LocalFile, ...]

    @property
    def estimated_size(self) -> int:
        return package_bytes(self.files)


@dataclass(frozen=True)
class VersionPlan:
    request: VersionRequest
    parent: Manifest | None
    inherited: tuple[FileEntry, ...]
    local: tuple[LocalFile, ...]
    packages: tuple[PackagePlan, ...]
    unmatched_excludes: tuple[str, ...]
    package_max_file: int | None = None  # when packaging: bigger files stay blobs

    @property
    def too_big(self) -> tuple[LocalFile, ...]:
        """Files of this run kept out of its packages for their size."""
        if self.package_max_file is None:
            return ()
        return tuple(f for f in self.local if f.size >= self.package_max_file)

    @property
    def files(self) -> int:
        return len(self.inherited) + len(self.local)

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.inherited) + sum(f.size for f in self.local)


def package_bytes(files: Sequence[LocalFile]) -> int:
    """The exact size of the package :class:`~dspkg.zipwriter.PackageWriter` makes of ``files``."""
    return zf.package_size((len(f.rel.encode()), f.size) for f in files)


def split_packages(files: Sequence[LocalFile], package_size: int) -> list[list[LocalFile]]:
    """Consecutive runs of ``files`` (sorted) whose packages stay within ``package_size``.

    A file bigger than the limit gets a package of its own.
    """
    # The per-entry bound is its name twice, its data and a constant: all in one package
    # when their sum fits (the common case: no loop in Python).
    fixed = zf.entry_cost_max(0, 0)
    names = sum(len(f.rel.encode()) for f in files)
    if zf.END_RECORDS_MAX + fixed * len(files) + 2 * names + sum(f.size for f in files) <= (
        package_size
    ):
        return [list(files)] if files else []
    groups: list[list[LocalFile]] = []
    current: list[LocalFile] = []
    used = zf.END_RECORDS_MAX
    for f in files:
        cost = zf.entry_cost_max(len(f.rel.encode()), f.size)
        if current and used + cost > package_size:
            groups.append(current)
            current, used = [], zf.END_RECORDS_MAX
        current.append(f)
        used += cost
    if current:
        groups.append(current)
    return groups


def packable(files: Sequence[LocalFile], max_file: int) -> list[LocalFile]:
    """The files small enough for a package (below ``max_file``); the others stay blobs."""
    return [f for f in files if f.size < max_file]


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
    small = packable(files, max_file)
    groups = split_packages(small, package_size)
    packages = [
        TaskPlan(tuple(group), package_name(uri.dataset, uri.version, i, len(groups)))
        for i, group in enumerate(groups)
    ]
    big = [f for f in files if f.size >= max_file]
    blobs = [TaskPlan(tuple(run), None) for run in split_runs(big, task_files, task_bytes)]
    return packages + blobs


def version_paths(request: VersionRequest, parent_paths: Sequence[str]) -> list[str]:
    """Every path of the version ``request`` asks for, given its parent's paths."""
    own = set(request.files)
    if request.start_fresh:
        return sorted(own)
    excluded = set(request.exclude)
    return sorted(own | {p for p in parent_paths if p not in excluded})


def plan_version(
    request: VersionRequest,
    parent: Manifest | None,
    local: Mapping[str, LocalFile],
    *,
    packaging: bool,
    package_size: int,
    attempt: str,
    max_file: int = PACKAGE_MAX_FILE,
    names: Callable[[int, int], str] | None = None,
) -> VersionPlan:
    """``attempt`` names this publish's packages apart from any other's (see layout);
    files of ``max_file`` bytes or more stay out of the packages; ``names(i, n)`` names
    package ``i`` of ``n`` (default ``ds.ver[.i-of-n].vhpkgzip``)."""
    own = tuple(local[rel] for rel in sorted(request.files))
    own_paths = {f.rel for f in own}
    inherited: list[FileEntry] = []
    unmatched: tuple[str, ...] = ()
    if parent is not None and not request.start_fresh:
        excluded = set(request.exclude)
        parent_paths = {f.path for f in parent.files}
        unmatched = tuple(sorted(excluded - parent_paths))
        inherited = [f for f in parent.files if f.path not in excluded and f.path not in own_paths]
    packed = packable(own, max_file) if packaging else []
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
        PackagePlan(name, package_key(uri.dataset, uri.version, attempt, name), tuple(group))
        for name, group in ((name_of(i, len(groups)), group) for i, group in enumerate(groups))
    )


def shape_digest(files: Sequence[LocalFile]) -> str:
    """Identifies a package's layout (paths and sizes) before any file is read."""
    text = "".join([f"{f.rel}\0{f.size}\n" for f in files])
    return hashlib.sha256(text.encode()).hexdigest()


def layout_offsets(files: Sequence[tuple[str, int, int]]) -> dict[str, int]:
    """Where each file's data starts in the package of ``(path, size, crc32)``, in order."""
    writer = PackageWriter()
    offsets = {}
    for path, size, crc in files:
        writer.add(path, size, crc)
        offsets[path] = writer.last.data_offset
    return offsets


@dataclass(frozen=True)
class BuiltPackage:
    info: PackageInfo
    offsets: Mapping[str, int]


def assemble_manifest(
    plan: VersionPlan,
    hashes: Mapping[str, tuple[int, str]],
    built: Sequence[BuiltPackage],
    *,
    created_at: str,
    blobs: bool,
) -> Manifest:
    """The manifest of a planned version once its files are hashed and packages built.

    ``hashes`` maps each local path to ``(size, sha256)``; ``blobs`` says whether
    this run stored every packaged local file on its own too (files in no package
    always are).
    """
    packages: list[PackageInfo] = []
    index_of: dict[str, int] = {}

    def package_index(info: PackageInfo) -> int:
        if info.key not in index_of:
            index_of[info.key] = len(packages)
            packages.append(info)
        return index_of[info.key]

    files: list[FileEntry] = []
    parent = plan.parent
    for f in plan.inherited:
        if parent is not None and f.package is not None:
            files.append(f._replace(package=package_index(parent.packages[f.package])))
        else:
            files.append(f)
    offsets: dict[str, tuple[int, int]] = {}
    for package in built:
        index = package_index(package.info)
        for rel, offset in package.offsets.items():
            offsets[rel] = (index, offset)
    for local in plan.local:
        size, sha = hashes[local.rel]
        where = offsets.get(local.rel)
        if where is None:
            files.append(FileEntry(local.rel, size, sha))
        else:
            files.append(FileEntry(local.rel, size, sha, where[0], where[1]))
    files.sort(key=itemgetter(0))  # by path
    inherited_blobs = parent is None or parent.blobs or not plan.inherited
    return Manifest(
        dataset=plan.request.uri.dataset,
        version=plan.request.uri.version,
        files=tuple(files),
        packages=tuple(packages),
        parent=str(parent.uri) if parent is not None else None,
        created_at=created_at,
        blobs=blobs and inherited_blobs,
        package_max_file=plan.package_max_file,
    )
