"""Producing dataset versions from a directory of outputs.

validate everything (metadata, files, names, parents, existing versions) -> plan ->
read each file once, hashing it -> blobs the store lacks and packages, streamed ->
manifest last, with a conditional create -> aliases. Nothing is uploaded before
validation passes, and a version exists whole (its manifest) or not at all.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import heapq
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dspkg import memory
from dspkg.catalog import Catalog, now_iso, whole
from dspkg.collector import DEFAULT_GRACE
from dspkg.committer import read_part
from dspkg.concurrency import BoundedTasks
from dspkg.dirversion import DirectoryVersion, matching, read_directory, version_request
from dspkg.errors import (
    AlreadyExists,
    DspkgError,
    InvalidArgument,
    InvalidMetadata,
    NotFound,
    StoreError,
)
from dspkg.layout import LATEST, blob_key, new_attempt, part_key, part_package_name
from dspkg.manifest import FileEntry, Manifest, ManifestRoot, PackageInfo
from dspkg.metadata import Outputs, VersionRequest, read_outputs
from dspkg.names import VersionUri
from dspkg.packager import log_few_files, log_upload_done, log_upload_start, upload_package
from dspkg.parts import Part
from dspkg.paths import tree_problem
from dspkg.progress import Progress
from dspkg.publish_plan import (
    PACKAGE_MAX_FILE,
    PackagePlan,
    VersionPlan,
    data_offsets,
    plan_version,
    shape_digest,
    version_paths,
)
from dspkg.publish_records import MergedDigest, Shard, VersionRecords
from dspkg.shards import WRITER_LIMITS, ShardLimits
from dspkg.sizes import format_size
from dspkg.sources import FileReader, LocalFile, LocalFiles, ReadFile
from dspkg.store import Store


@dataclass(frozen=True)
class PublishOptions:
    """How to publish. ``packaging``: None follows each version's metadata and ``gate``
    (``VH_ENABLE_DATASET_VERSION_PACKAGING``); True packages every version; False none."""

    packaging: bool | None = None
    gate: bool = False
    packages_only: bool = False  # files in no package (too big) are still blobs
    package_size: int = 1 << 30
    package_max_file: int = PACKAGE_MAX_FILE
    jobs: int = 32
    read_threads: int = 4
    speedups: bool = True  # the compiled reader of small files (DSPKG_SPEEDUPS=0: Python)
    shard_limits: ShardLimits = WRITER_LIMITS  # where the manifest's shards are cut


@dataclass(frozen=True)
class PackageSummary:
    name: str
    key: str
    size: int
    entries: int
    uploaded: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "key": self.key,
            "size": self.size,
            "entries": self.entries,
            "uploaded": self.uploaded,
        }


@dataclass(frozen=True)
class VersionResult:
    """A version published, or (``part``) this run's part of it staged: ``created`` then
    says whether the part was staged now rather than found staged already."""

    uri: str
    files: int
    bytes: int
    created: bool
    parent: str | None
    packages: tuple[PackageSummary, ...]
    aliases: tuple[str, ...]
    part: str | None = None

    def to_json(self) -> dict[str, Any]:
        doc = {
            "uri": self.uri,
            "files": self.files,
            "bytes": self.bytes,
            "created": self.created,
            "from": self.parent,
            "packages": [p.to_json() for p in self.packages],
            "aliases": list(self.aliases),
        }
        if self.part is not None:
            doc["part"] = self.part
        return doc


@dataclass(frozen=True)
class PublishResult:
    versions: tuple[VersionResult, ...]
    files: int
    bytes: int
    bytes_uploaded: int
    requests: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "versions": [v.to_json() for v in self.versions],
            "files": self.files,
            "bytes": self.bytes,
            "bytes_uploaded": self.bytes_uploaded,
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
        }


# Blobs of its own a publish remembers having put (a duplicate further back is put
# again; the store keeps the first): bounded, where a set of every file grew by about
# 150 bytes a file.
RECENT_BLOBS = 65_536


class _KnownBlobs:
    """Blobs a publish need not put: its parents' (when they have them), and the last
    ``recent`` it put itself."""

    def __init__(self, recent: int = RECENT_BLOBS) -> None:
        self._parents: set[str] = set()
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._limit = recent

    def add_parent(self, parent: Manifest) -> None:
        self._parents.update(f.sha256 for f in parent.files if parent.blobs or f.package is None)

    def fresh(self, sha256: str) -> bool:
        """Whether the blob ``sha256`` is to be put (and it is remembered as put)."""
        if sha256 in self._parents or sha256 in self._recent:
            return False
        self._recent[sha256] = None
        if len(self._recent) > self._limit:
            self._recent.popitem(last=False)
        return True


@dataclass
class _Session:
    """What one publish shares across its versions: the store, the blobs known to be
    there, and the packages it uploaded that no manifest names yet (only these may be
    deleted when it fails: their keys hold this publish's own ``attempt``)."""

    store: Store
    catalog: Catalog
    options: PublishOptions
    progress: Progress
    reader: FileReader
    attempt: str = field(default_factory=new_attempt)
    known_blobs: _KnownBlobs = field(default_factory=_KnownBlobs)
    uploaded_packages: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)


async def publish_directory(
    root: Path,
    store: Store,
    options: PublishOptions = PublishOptions(),
    progress: Progress | None = None,
    *,
    part: str | None = None,
) -> PublishResult:
    """Publish every dataset version the metadata in ``root`` asks for; with ``part``,
    stage these files as that part of each version, for ``dspkg commit`` to merge."""
    progress = progress or Progress()
    started = time.monotonic()
    requests = store.stats.requests
    outputs = read_outputs(root)
    if not outputs.versions:
        progress.warn(f"no file in {outputs.root} names a dataset version; nothing to publish")
    return await _publish(outputs, store, options, progress, (started, requests), part=part)


async def publish_tree(
    root: Path,
    target: DirectoryVersion,
    store: Store,
    options: PublishOptions = PublishOptions(),
    progress: Progress | None = None,
) -> PublishResult:
    """Publish the files of ``root`` as the version ``target`` names (no metadata)."""
    progress = progress or Progress()
    started = time.monotonic()
    requests = store.stats.requests
    outputs, used = read_directory(root, target)
    parent: Manifest | None = None
    if target.parent is not None:
        try:
            parent = await Catalog(store).read_manifest(target.parent)
        except NotFound:
            raise InvalidMetadata(
                f"--from {target.parent} does not exist in {store.url}; publish it first "
                "or fix --from",
                path=str(outputs.root),
            ) from None
    request, excluded = version_request(
        target,
        outputs,
        parent.uri if parent is not None else None,
        [f.path for f in parent.files] if parent is not None else [],
    )
    for glob in target.exclude:
        if glob.text not in used and not matching(excluded, [glob]):
            progress.warn(f"{target.uri}: --exclude {glob.text!r} matches no file")
    return await _publish(
        dataclasses.replace(outputs, versions=(request,)),
        store,
        options,
        progress,
        (started, requests),
    )


async def _publish(
    outputs: Outputs,
    store: Store,
    options: PublishOptions,
    progress: Progress,
    since: tuple[float, int],
    *,
    part: str | None = None,
) -> PublishResult:
    """``since``: when the publish started and the store's request count then."""
    started, requests_before = since
    bytes_before = store.stats.bytes_up
    requests = in_dependency_order(outputs.versions)
    local = {req.uri: outputs.local(req) for req in requests}
    files, nbytes = _totals(list(local.values()))
    catalog = Catalog(store)
    with ThreadPoolExecutor(max_workers=options.read_threads) as executor:
        run = _Session(
            store, catalog, options, progress, FileReader(executor, speedups=options.speedups)
        )
        packaging = {req.uri: packaging_of(req, options, progress) for req in requests}
        results: list[VersionResult] = []
        try:
            if part is not None:
                for req in requests:
                    names = _part_names(req.uri, part)
                    results.append(
                        await _stage(run, req, local[req.uri], packaging[req.uri], part, names)
                    )
            else:
                await _publish_versions(run, requests, local, packaging, results)
        except BaseException:
            await _discard_packages(run)
            raise
    return PublishResult(
        versions=tuple(results),
        files=files,
        bytes=nbytes,
        bytes_uploaded=store.stats.bytes_up - bytes_before,
        requests=store.stats.requests - requests_before,
        seconds=time.monotonic() - started,
    )


def _totals(versions: Sequence[LocalFiles]) -> tuple[int, int]:
    """Files and bytes of the versions together (a file in two of them counts once)."""
    if len(versions) == 1:
        return len(versions[0]), versions[0].bytes
    files = nbytes = 0
    last = None
    for rel, size in heapq.merge(*(zip(v.rels(), v.sizes(), strict=True) for v in versions)):
        if rel != last:
            files += 1
            nbytes += size
            last = rel
    return files, nbytes


async def _publish_versions(
    run: _Session,
    requests: Sequence[VersionRequest],
    local: dict[VersionUri, LocalFiles],
    packaging: dict[VersionUri, bool],
    results: list[VersionResult],
) -> None:
    parents, existing = await _validate(run, requests)
    published: set[VersionUri] = set()
    for req in requests:
        parent = await _parent_manifest(run, req, parents, published, existing)
        plan = plan_version(
            req,
            parent,
            local[req.uri],
            packaging=packaging[req.uri],
            package_size=run.options.package_size,
            attempt=run.attempt,
            max_file=run.options.package_max_file,
        )
        for path in plan.unmatched_excludes:
            run.progress.warn(f"{req.uri}: excluded path {path!r} is not in {req.parent}")
        if req.uri in existing:
            results.append(await _confirm_same(run, plan, existing[req.uri]))
            continue
        root, uploaded = await _build(run, plan)
        results.append(await _commit_version(run, plan, root, uploaded))
        published.add(req.uri)
        memory.trim()  # what the version's packages and shards took, back to the system


def _part_names(uri: VersionUri, part: str) -> Callable[[int, int], str]:
    return lambda i, n: part_package_name(uri.dataset, uri.version, part, i, n)


async def stage_files(
    store: Store,
    request: VersionRequest,
    files: Sequence[LocalFile],
    part: str,
    options: PublishOptions,
    *,
    package_name: str | None = None,
    progress: Progress | None = None,
) -> VersionResult:
    """Stage ``files`` (no metadata needed) as part ``part`` of ``request.uri``.

    ``package_name``: the files make exactly one package of this name (what a task of
    :mod:`dspkg.distributed` builds: the package a single publish would have there).
    """
    local = LocalFiles.of(sorted(files))
    names = None if package_name is None else _one_package(package_name)
    with ThreadPoolExecutor(max_workers=options.read_threads) as executor:
        run = _Session(
            store,
            Catalog(store),
            options,
            progress or Progress(),
            FileReader(executor, speedups=options.speedups),
        )
        try:
            return await _stage(run, request, local, bool(options.packaging), part, names)
        except BaseException:
            await _discard_packages(run)
            raise


def _one_package(name: str) -> Callable[[int, int], str]:
    def names(index: int, count: int) -> str:
        if count != 1:
            raise InvalidArgument(f"the files of package {name} do not fit in one package")
        return name

    return names


async def _stage(
    run: _Session,
    req: VersionRequest,
    local: LocalFiles,
    packaging: bool,
    name: str,
    names: Callable[[int, int], str] | None,
) -> VersionResult:
    """Stage this run's files of ``req`` as part ``name``: packages and blobs uploaded,
    then the part record created (conditional); the same part again is a no-op."""
    uri = req.uri
    if await run.catalog.find_root(uri) is not None:
        raise AlreadyExists(
            f"{uri} is already committed; parts can only be staged for a version that does "
            "not exist yet, publish under a new version name",
            uri=str(uri),
        )
    plan = plan_version(
        req,
        None,  # the parent's files join at commit
        local,
        packaging=packaging,
        package_size=run.options.package_size,
        attempt=run.attempt,
        max_file=run.options.package_max_file,
        names=names,
    )
    staged = await read_part(run.catalog, uri, name)
    if staged is not None:
        return await _confirm_same_part(run, plan, staged)
    root, uploaded = await _build(run, plan)  # its shards stored as they were finished
    part = Part(
        name,
        replace(root, parent=str(req.parent) if req.parent else None),
        exclude=req.exclude,
        start_fresh=req.start_fresh,
        aliases=req.aliases,
    )
    await _outlived_the_grace(run, root)
    key = part_key(uri.dataset, uri.version, name)
    if not await run.store.put(key, part.to_json(), create=True):
        other = await read_part(run.catalog, uri, name)
        await _discard_packages(run)  # this run's copies: the staged part names its own
        if other is None or other.root.digest != root.digest:
            raise _part_differs(uri, name)
        return _result(other.root, created=False, uploaded=set(), aliases=(), part=name)
    run.uploaded_packages.clear()  # a part record names them now
    for done in root.packages:
        if done.key in uploaded:
            await run.catalog.remember_package(*uploaded[done.key], done)
    run.progress.log(f"staged part {name!r} of {uri}; run 'dspkg commit {uri}' once all are")
    return _result(part.root, created=True, uploaded=set(uploaded), aliases=(), part=name)


async def _local_digest(run: _Session, plan: VersionPlan, inherited: Iterable[FileEntry]) -> str:
    """The content digest of ``plan``'s version, its local files read (and hashed) again."""
    digest = MergedDigest(inherited)
    async for read in run.reader.read_all(plan.local, keep_data=False):
        digest.add(read.file.rel, read.file.size, read.sha256)
    return digest.hexdigest()


async def _confirm_same_part(run: _Session, plan: VersionPlan, staged: Part) -> VersionResult:
    if await _local_digest(run, plan, ()) != staged.root.digest:
        raise _part_differs(plan.request.uri, staged.name)
    run.progress.log(f"part {staged.name!r} of {plan.request.uri} is staged already; nothing to do")
    return _result(staged.root, created=False, uploaded=set(), aliases=(), part=staged.name)


def _part_differs(uri: VersionUri, name: str) -> AlreadyExists:
    return AlreadyExists(
        f"part {name!r} of {uri} is already staged with different content; stage these "
        "files under another part name",
        uri=str(uri),
    )


def in_dependency_order(requests: Sequence[VersionRequest]) -> list[VersionRequest]:
    """Parents published in the same run come before their children."""
    by_uri = {r.uri: r for r in requests}
    ordered: list[VersionRequest] = []
    state: dict[VersionUri, str] = {}

    def visit(req: VersionRequest) -> None:
        if state.get(req.uri) == "done":
            return
        if state.get(req.uri) == "visiting":
            raise InvalidMetadata(f"{req.uri} is built from itself through 'from'", path=req.source)
        state[req.uri] = "visiting"
        if req.parent is not None and req.parent in by_uri:
            visit(by_uri[req.parent])
        state[req.uri] = "done"
        ordered.append(req)

    for req in requests:
        visit(req)
    return ordered


async def _validate(
    run: _Session, requests: Sequence[VersionRequest]
) -> tuple[dict[VersionUri, Manifest], dict[VersionUri, ManifestRoot]]:
    """Parents outside this run, and versions that already exist (their roots: enough to
    compare content); nothing is uploaded."""
    in_run = {r.uri for r in requests}
    parents: dict[VersionUri, Manifest] = {}
    existing: dict[VersionUri, ManifestRoot] = {}
    paths: dict[VersionUri, Sequence[str]] = {}
    for req in requests:
        if req.parent is not None and req.parent not in in_run and req.parent not in parents:
            try:
                parents[req.parent] = await run.catalog.read_manifest(req.parent)
            except NotFound:
                raise InvalidMetadata(
                    f"{req.uri} is built from {req.parent}, which does not exist in "
                    f"{run.store.url}; publish it first or fix 'from'",
                    path=req.source,
                ) from None
        parent_paths: Sequence[str] = []
        if req.parent in paths:
            parent_paths = paths[req.parent]
        elif req.parent in parents:
            parent_paths = [f.path for f in parents[req.parent].files]
        paths[req.uri] = version_paths(req, parent_paths)
        collision = tree_problem(paths[req.uri])
        if collision:
            raise InvalidMetadata(
                f"{req.uri}: file {collision[0]!r} {collision[1]}; rename one of them",
                path=req.source,
            )
        found = await run.catalog.find_root(req.uri)
        if found is not None:
            existing[req.uri] = found
    return parents, existing


async def _parent_manifest(
    run: _Session,
    req: VersionRequest,
    parents: dict[VersionUri, Manifest],
    published: set[VersionUri],
    existing: dict[VersionUri, ManifestRoot],
) -> Manifest | None:
    """The parent of ``req``: from the store before this run, published by it (read back:
    a publish keeps no version's files), or republished unchanged in it."""
    if req.parent is None:
        return None
    found = parents.get(req.parent)
    if found is None and req.parent in published:
        found = await run.catalog.read_manifest(req.parent)
    elif found is None and req.parent in existing:
        found = whole(existing[req.parent], await run.catalog.read_files(existing[req.parent]))
    if found is not None:
        parents[req.parent] = found
    return found


def packaging_of(req: VersionRequest, options: PublishOptions, progress: Progress) -> bool:
    """Whether ``req`` is packaged: the options, else its metadata and the gate."""
    if options.packages_only or options.packaging is True:
        return True
    if options.packaging is False:
        return False
    if req.packaging and not options.gate:
        progress.warn(
            f"{req.uri} asks for packaging, but VH_ENABLE_DATASET_VERSION_PACKAGING is not set; "
            "creating it without packages (set it to 1 or pass --packaging)"
        )
        return False
    return req.packaging


async def _confirm_same(run: _Session, plan: VersionPlan, existing: ManifestRoot) -> VersionResult:
    """Republishing: identical content is a no-op, anything else an error. The digests
    compare the content without loading the existing version's files."""
    if await _local_digest(run, plan, plan.inherited) != existing.file_digest():
        uri = plan.request.uri
        raise AlreadyExists(
            f"{uri} already exists with different content; versions are immutable, "
            "publish under a new version name",
            uri=str(uri),
        )
    run.progress.log(f"{plan.request.uri} already exists with the same content; nothing to do")
    if plan.packages and sum(existing.package_files) < existing.files:
        files_now = await run.catalog.read_files(existing)
        if any(f.package is None and f.size < run.options.package_max_file for f in files_now):
            run.progress.log(
                f"{plan.request.uri} has files in no package: dspkg package {plan.request.uri} "
                "adds packages to it"
            )
    # Aliases asked for by name move to it all the same (`latest` only moves on creation):
    # publishing the same files under a new alias is how a version gets one.
    req = plan.request
    for alias in req.aliases:
        await run.catalog.set_alias(req.uri.dataset, alias, req.uri.version)
    return _result(existing, created=False, uploaded=set(), aliases=req.aliases)


async def _build(
    run: _Session, plan: VersionPlan
) -> tuple[ManifestRoot, dict[str, tuple[str, str]]]:
    """Read every new file once: its blob and its package go up together, and its record
    joins the manifest's shards, each stored once finished. Returns the version's root
    (to create) and, for the packages uploaded here, what the reuse index records."""
    if plan.parent is not None:
        run.known_blobs.add_parent(plan.parent)
    _say_where_files_go(run, plan)
    # Without blobs (--packages-only), a file in no package still needs its blob.
    every_blob = not run.options.packages_only
    records = VersionRecords(plan, blobs=every_blob, limits=run.options.shard_limits)
    run.progress.start(f"publishing {plan.request.uri}", len(plan.local), plan.local.bytes)
    try:
        async with BoundedTasks(run.options.jobs) as blobs:

            async def put_blob(read: ReadFile, wanted: bool) -> None:
                if wanted and run.known_blobs.fresh(read.sha256):
                    await blobs.spawn(_put_blob(run, read))
                run.progress.advance(1, read.file.size)

            loose = plan.loose
            if plan.packages:
                # Files in no package are few (too big to package): read first, each
                # record waits for its place among the packaged files.
                async for read in run.reader.read_all(loose):
                    await put_blob(read, True)
                    records.add_early(FileEntry(read.file.rel, read.file.size, read.sha256))
                uploaded = await _upload_packages(run, plan, records, put_blob, every_blob)
            else:
                uploaded = {}
                async for read in run.reader.read_all(loose):
                    await put_blob(read, True)
                    entry = FileEntry(read.file.rel, read.file.size, read.sha256)
                    await _store_shards(run, records.add(entry))
            await _store_shards(run, records.finish())
    finally:
        run.progress.done()
    return records.root(created_at=now_iso()), uploaded


async def _store_shards(run: _Session, shards: Sequence[Shard]) -> None:
    """Shards are stored as soon as they are finished: named by their content, and named
    by no root until the version's is created, they are no version yet."""
    if shards:
        await run.catalog.write_shards(shards)


def _say_where_files_go(run: _Session, plan: VersionPlan) -> None:
    """One line each: files kept out of the packages for their size, and a version too
    small to gain much from packages."""
    uri = plan.request.uri
    big = plan.too_big
    if big and plan.package_max_file is not None:
        nbytes = format_size(sum(f.size for f in big))
        run.progress.log(
            f"{uri}: {len(big):,} file{'s' if len(big) != 1 else ''} of "
            f"{format_size(plan.package_max_file)} or more ({nbytes}) "
            "stored as blobs, not packaged (--package-max-file)"
        )
    if plan.packages:
        log_few_files(run.progress, uri, plan.files)


async def _upload_packages(
    run: _Session,
    plan: VersionPlan,
    records: VersionRecords,
    put_blob: Callable[[ReadFile, bool], Awaitable[None]],
    every_blob: bool,
) -> dict[str, tuple[str, str]]:
    """Every package of the plan, reused when an identical one is in the store, else
    streamed up as its files are read; each file's record goes to ``records`` as it is
    packaged. Returns, for the packages uploaded here, ``key -> (shape, content digest)``
    for the reuse index."""
    uploaded: dict[str, tuple[str, str]] = {}
    count = len(plan.packages)
    for index, package in enumerate(plan.packages, start=1):
        prefix = f"(dataset version package {index}/{count})"
        done = await _package(run, package, prefix, records, put_blob, every_blob)
        if done is not None:
            uploaded[package.key] = done
        memory.trim()  # a package's directory and buffers, back to the system
    return uploaded


async def _package(
    run: _Session,
    package: PackagePlan,
    prefix: str,
    records: VersionRecords,
    put_blob: Callable[[ReadFile, bool], Awaitable[None]],
    every_blob: bool,
) -> tuple[str, str] | None:
    """One package, reused or uploaded; for one uploaded, ``(shape, content digest)``."""
    shape = shape_digest(package.files)
    content = hashlib.sha256()  # the package's content digest, file by file
    reused = await _reusable(run, package, shape)
    number = records.package(package.key if reused is None else reused[0].key)

    async def on_file(read: ReadFile, offset: int) -> None:
        rel, size, sha = read.file.rel, read.file.size, read.sha256
        content.update(f"{rel}\0{size}\0{sha}\n".encode())
        await put_blob(read, every_blob)
        await _store_shards(run, records.add(FileEntry(rel, size, sha, number, offset)))

    if reused is not None:
        info, shas = reused
        run.progress.log(f"{prefix} {package.name} is identical to {info.key}; not uploading it")
        await _replay(run, package, shas, every_blob, on_file)
        records.package_done(number, info)
        return None
    log_upload_start(run.progress, prefix, run.store, package.name, package.estimated_size)
    run.uploaded_packages.append(package.key)
    done = await upload_package(
        run.store,
        package,
        run.reader,
        on_file=on_file,
        concurrency=max(2, min(run.options.jobs, 8)),
        keep_data=every_blob,  # only blobs need a file's bytes
    )
    records.package_done(number, done.info)
    log_upload_done(run.progress, prefix, package.key)
    return shape, content.hexdigest()


async def _commit_version(
    run: _Session, plan: VersionPlan, root: ManifestRoot, uploaded: dict[str, tuple[str, str]]
) -> VersionResult:
    """Create the root (the one commit point), then note the packages and move aliases."""
    req = plan.request
    await _outlived_the_grace(run, root)
    if not await run.catalog.create_root(root):
        # Another publisher created it meanwhile; same content is fine, and then the
        # packages this one uploaded are named by nothing: remove them.
        other = await run.catalog.find_root(req.uri)
        if other is None or other.file_digest() != root.digest:
            raise AlreadyExists(
                f"{req.uri} was created by another publisher with different content "
                "while this one ran; publish under a new version name",
                uri=str(req.uri),
            )
        await _discard_packages(run)
        return _result(other, created=False, uploaded=set(), aliases=())
    run.uploaded_packages.clear()  # referenced by a root now: never discard them
    aliases = (LATEST, *req.aliases)
    # Independent objects: the reuse index and the aliases go up side by side (a round
    # trip each saved on a distant store).
    async with BoundedTasks(8) as notes:
        for done in root.packages:
            if done.key in uploaded:
                await notes.spawn(run.catalog.remember_package(*uploaded[done.key], done))
        for alias in aliases:
            await notes.spawn(run.catalog.set_alias(req.uri.dataset, alias, req.uri.version))
    return _result(root, created=True, uploaded=set(uploaded), aliases=aliases)


async def _outlived_the_grace(run: _Session, root: ManifestRoot) -> None:
    """``dspkg gc`` never removes objects younger than its grace period (24 hours by
    default); a publish that ran longer checks its packages and the shards of ``root``
    are still there before a root names them."""
    if time.monotonic() - run.started <= DEFAULT_GRACE:
        return
    run.progress.warn(
        "this publish ran longer than dspkg gc's default grace period (24h); checking that "
        "its packages are still in the store"
    )
    for key in [*run.uploaded_packages, *(s.key for s in root.shards)]:
        if await run.store.head(key) is None:
            raise StoreError(
                f"{run.store.describe(key)} vanished while this publish ran (dspkg gc with a "
                "shorter grace?); nothing was published, run it again",
                key=key,
            )


async def _reusable(
    run: _Session, package: PackagePlan, shape: str
) -> tuple[PackageInfo, bytes] | None:
    """An identical package already in the store, found by layout, then confirmed by
    hashing this package's files: its record and the files' SHA-256 (32 bytes each, in
    order); None (without reading anything) when there is none."""
    candidates = await run.catalog.package_candidates(shape)
    if not candidates:
        return None
    digest = MergedDigest()
    shas = bytearray()
    async for read in run.reader.read_all(package.files, keep_data=False):
        digest.add(read.file.rel, read.file.size, read.sha256)
        shas += bytes.fromhex(read.sha256)
    content = digest.hexdigest()
    for known, info in candidates:
        head = await run.store.head(info.key) if known == content else None
        if head is not None and head.size == info.size:
            return info, bytes(shas)
    return None


async def _replay(
    run: _Session,
    package: PackagePlan,
    shas: bytes,
    every_blob: bool,
    on_file: Callable[[ReadFile, int], Awaitable[None]],
) -> None:
    """Each file of a reused package, as if packaged now (at its place in the package
    found): read again when blobs need their bytes, else from the hashes taken."""
    offsets = data_offsets((f.rel, f.size) for f in package.files)
    if every_blob:
        async for read in run.reader.read_all(package.files):
            await on_file(read, next(offsets))
        return
    for i, f in enumerate(package.files):
        await on_file(ReadFile(f, shas[32 * i : 32 * i + 32].hex(), 0, None), next(offsets))


async def _put_blob(run: _Session, read: ReadFile) -> None:
    key = blob_key(read.sha256)
    if read.data is not None:
        await run.store.put(key, read.data, create=True)
        return
    if await run.store.head(key) is None:
        await run.store.put_stream(key, run.reader.stream(read))


async def _discard_packages(run: _Session) -> None:
    """Best effort: a failed publish leaves no package that no manifest names."""
    for key in run.uploaded_packages:
        with contextlib.suppress(DspkgError):
            await run.store.delete(key)
    run.uploaded_packages.clear()


def _result(
    root: ManifestRoot,
    *,
    created: bool,
    uploaded: Iterable[str],
    aliases: Sequence[str],
    part: str | None = None,
) -> VersionResult:
    uploaded = set(uploaded)
    return VersionResult(
        part=part,
        uri=str(root.uri),
        files=root.files,
        bytes=root.bytes,
        created=created,
        parent=root.parent,
        packages=tuple(
            PackageSummary(p.name, p.key, p.size, p.entries, p.key in uploaded)
            for p in root.packages
        ),
        aliases=tuple(aliases),
    )
