"""Packaging an existing version (``dspkg package``): read its blobs, stream packages into
the store, then record them in the version by a conditional replace of its manifest.

read the manifest and its revision -> plan -> for each package: read its files' blobs in
order (many in flight), each checked against the manifest's size and sha256 as it is
read, streamed into a multipart upload under this run's own attempt key -> replace the
manifest only if it is still the revision read.

The replace is the one commit point. Until it, nothing a reader sees has changed: a
missing or corrupt blob, or any failure, removes this run's packages and leaves the
version as it was. Old packages and blobs are never touched, so pulls that started
before keep working; pulls after read the new manifest and use the packages. Of several
runs at once exactly one replace wins; a loser removes its packages, reads the version
again, and finds nothing left to do (or packages what is left).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dspkg.catalog import Catalog
from dspkg.errors import DspkgError, Integrity, StoreError
from dspkg.layout import new_attempt
from dspkg.manifest import FileEntry, Manifest, content_digest
from dspkg.names import VersionUri
from dspkg.packager import log_few_files, log_upload_done, log_upload_start, upload_package
from dspkg.packing_plan import PackingPlan, plan_packing, with_packages
from dspkg.progress import Progress
from dspkg.publish_plan import PACKAGE_MAX_FILE, BuiltPackage, shape_digest
from dspkg.publisher import PackageSummary
from dspkg.sizes import format_size
from dspkg.sources import Batch, LocalFile, ReadFile
from dspkg.store import Store

# A version changed under this run this many times in a row: give up, say so.
MAX_ROUNDS = 3


@dataclass(frozen=True)
class PackOptions:
    package_size: int = 1 << 30
    package_max_file: int = PACKAGE_MAX_FILE
    jobs: int = 32  # blob reads in flight
    dry_run: bool = False


@dataclass(frozen=True)
class PackResult:
    uri: str
    state: str  # "packaged", "already packaged", or "planned" (a dry run)
    files: int  # files this run packaged (or would)
    bytes: int
    packages: tuple[PackageSummary, ...]
    too_big: int  # files that stay blobs for their size
    lost_race: bool  # another run's replace won first (this one's packages were removed)
    bytes_downloaded: int
    bytes_uploaded: int
    requests: int
    seconds: float
    plan: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "uri": self.uri,
            "state": self.state,
            "files": self.files,
            "bytes": self.bytes,
            "packages": [p.to_json() for p in self.packages],
            "files_too_big": self.too_big,
            "lost_race": self.lost_race,
            "bytes_downloaded": self.bytes_downloaded,
            "bytes_uploaded": self.bytes_uploaded,
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
        }
        if self.plan is not None:
            doc["dry_run"] = True
            doc["plan"] = self.plan
        return doc


async def package_version(
    uri: VersionUri,
    store: Store,
    options: PackOptions = PackOptions(),
    progress: Progress | None = None,
) -> PackResult:
    """Add packages to the version ``uri`` (or the one its alias names) for its files in
    no package; a no-op when there are none."""
    progress = progress or Progress()
    started = time.monotonic()
    before = (store.stats.bytes_down, store.stats.bytes_up, store.stats.requests)
    catalog = Catalog(store)

    def result(plan: PackingPlan, state: str, built: Sequence[BuiltPackage] = ()) -> PackResult:
        return PackResult(
            uri=str(plan.manifest.uri),
            state=state,
            files=plan.files if state != "already packaged" else 0,
            bytes=plan.bytes if state != "already packaged" else 0,
            packages=tuple(
                PackageSummary(b.info.name, b.info.key, b.info.size, b.info.entries, True)
                for b in built
            ),
            too_big=len(plan.too_big),
            lost_race=lost,
            bytes_downloaded=store.stats.bytes_down - before[0],
            bytes_uploaded=store.stats.bytes_up - before[1],
            requests=store.stats.requests - before[2],
            seconds=time.monotonic() - started,
            plan=plan.to_json() if state == "planned" else None,
        )

    lost = False
    for _ in range(MAX_ROUNDS):
        manifest, revision = await catalog.manifest_for_update(uri)
        uri = manifest.uri  # an alias, resolved once: later rounds read the same version
        plan = plan_packing(
            manifest,
            package_size=options.package_size,
            max_file=options.package_max_file,
            attempt=new_attempt(),
        )
        _say_what_stays(progress, plan)
        if not plan.packages:
            if lost:
                progress.log(f"{uri} was packaged by another run meanwhile; nothing left to do")
            else:
                progress.log(
                    f"{uri}: every file is in a package or stays a blob for its size; nothing to do"
                )
            return result(plan, "already packaged")
        if options.dry_run:
            return result(plan, "planned")
        log_few_files(progress, uri, len(manifest.files))
        built = await _build(store, plan, options, progress)
        keys = [b.info.key for b in built]
        updated = with_packages(plan, built)
        try:
            won = await catalog.replace_manifest(updated, revision)
            if not won:
                # A replace retried after a lost answer may have landed the first time.
                current = await catalog.find_manifest(uri)
                won = current is not None and keys[0] in {p.key for p in current.packages}
        except BaseException:
            await _discard(store, keys)
            raise
        if won:
            await _remember(catalog, plan, built)
            return result(plan, "packaged", built)
        await _discard(store, keys)
        lost = True
        progress.warn(
            f"{uri} was changed by another run while this one packaged it; removed the "
            f"{len(keys)} package(s) this one uploaded and read it again"
        )
    raise StoreError(
        f"{uri} changed under this run {MAX_ROUNDS} times in a row while packaging it; "
        "run dspkg package again when the other runs are done",
        key=str(uri),
    )


def _say_what_stays(progress: Progress, plan: PackingPlan) -> None:
    if plan.too_big:
        nbytes = format_size(sum(f.size for f in plan.too_big))
        progress.log(
            f"{plan.manifest.uri}: {len(plan.too_big):,} file(s) of {format_size(plan.max_file)} "
            f"or more ({nbytes}) stay blobs, not packaged (--package-max-file)"
        )


async def _build(
    store: Store, plan: PackingPlan, options: PackOptions, progress: Progress
) -> list[BuiltPackage]:
    """Every planned package, uploaded; on any failure none of them stays in the store."""
    reader = BlobReader(store, plan.manifest, jobs=options.jobs)
    built: list[BuiltPackage] = []
    count = len(plan.packages)
    progress.start(f"packaging {plan.manifest.uri}", plan.files, plan.bytes)

    async def on_file(read: ReadFile, _: int) -> None:
        progress.advance(1, read.file.size)

    try:
        for index, package in enumerate(plan.packages, start=1):
            prefix = f"(dataset version package {index}/{count})"
            log_upload_start(progress, prefix, store, package.name, package.estimated_size)
            built.append(
                await upload_package(
                    store,
                    package,
                    reader,
                    on_file=on_file,
                    concurrency=max(2, min(options.jobs, 8)),
                )
            )
            log_upload_done(progress, prefix, package.key)
    except BaseException:
        await _discard(store, [b.info.key for b in built])
        raise
    finally:
        progress.done()
    return built


async def _discard(store: Store, keys: Sequence[str]) -> None:
    """Best effort: remove packages no manifest names (they hold this run's attempt)."""
    for key in keys:
        with contextlib.suppress(DspkgError):
            await store.delete(key)


async def _remember(catalog: Catalog, plan: PackingPlan, built: Sequence[BuiltPackage]) -> None:
    """Note the new packages in the reuse index; a failure there costs only a reuse."""
    sha = {f.path: f.sha256 for f in plan.manifest.files}
    for package, done in zip(plan.packages, built, strict=True):
        entries = [(f.rel, f.size, sha[f.rel]) for f in package.files]
        with contextlib.suppress(DspkgError):
            await catalog.remember_package(
                shape_digest(package.files), content_digest(entries), done.info
            )


class BlobReader:
    """Reads a stored version's files from their blobs, for :func:`upload_package`: in
    order, up to ``jobs`` requests and ``window_bytes`` in flight, each file checked
    against the manifest's size and sha256 as it is read. A file of ``big_file`` bytes
    or more is hashed in a first pass and streamed again when packaged (checked again),
    so memory stays bounded whatever the sizes. ``LocalFile.path`` is the blob's key."""

    def __init__(
        self,
        store: Store,
        manifest: Manifest,
        *,
        jobs: int = 32,
        window_bytes: int = 64 << 20,
        big_file: int = 32 << 20,
    ) -> None:
        self.store = store
        self.uri = manifest.uri
        self.expected: Mapping[str, FileEntry] = {f.path: f for f in manifest.files}
        self.jobs = max(1, jobs)
        self.window_bytes = window_bytes
        self.big_file = big_file

    async def read_batches(
        self, files: Sequence[LocalFile], *, package_prefix: bytes | None = None
    ) -> AsyncIterator[Batch]:
        """Every file on its own, with its bytes: blobs never come as package bytes."""
        async for read in self.read_all(files):
            yield Batch([read], None)

    async def read_all(
        self, files: Sequence[LocalFile], *, keep_data: bool = True
    ) -> AsyncIterator[ReadFile]:
        pending: deque[tuple[LocalFile, asyncio.Task[ReadFile]]] = deque()
        in_flight = 0
        try:
            for f in files:
                weight = min(f.size, self.big_file)
                while pending and (
                    len(pending) >= self.jobs or in_flight + weight > self.window_bytes
                ):
                    done, task = pending.popleft()
                    in_flight -= min(done.size, self.big_file)
                    yield await task
                pending.append((f, asyncio.create_task(self._read(f, keep_data))))
                in_flight += weight
            while pending:
                yield await pending.popleft()[1]
        finally:
            for _, task in pending:
                task.cancel()
            await asyncio.gather(*(task for _, task in pending), return_exceptions=True)

    def _missing(self, f: LocalFile) -> Integrity:
        return Integrity(
            f"{self.uri}: file {f.rel!r} has no blob in the store "
            f"({self.store.describe(f.path)}); nothing was changed: restore it (publish "
            "the file again) and run dspkg package again",
            obj=f.rel,
        )

    async def _read(self, f: LocalFile, keep_data: bool) -> ReadFile:
        if f.size >= self.big_file:
            head = await self.store.head(f.path)
            if head is None:
                raise self._missing(f)
            self._check(f, head.size, self.expected[f.rel].sha256)
            sha, crc = hashlib.sha256(), 0
            async for chunk in self.store.stream_range(f.path, 0, f.size):
                sha.update(chunk)
                crc = zlib.crc32(chunk, crc)
            self._check(f, f.size, sha.hexdigest())
            return ReadFile(f, sha.hexdigest(), crc, None)
        data = await self.store.get_optional(f.path)
        if data is None:
            raise self._missing(f)
        if len(data) >= 1 << 20:  # hash big ones off the event loop
            sha256, crc = await asyncio.to_thread(_digests, data)
        else:
            sha256, crc = _digests(data)
        self._check(f, len(data), sha256)
        return ReadFile(f, sha256, crc, data if keep_data else None)

    def _check(self, f: LocalFile, size: int, sha256: str) -> None:
        expected = self.expected[f.rel]
        if size != expected.size or sha256 != expected.sha256:
            raise Integrity(
                f"{self.uri}: the blob of file {f.rel!r} ({self.store.describe(f.path)}) does "
                f"not match its size and sha256 in the manifest; nothing was changed: restore "
                "it (publish the file again) and run dspkg package again",
                obj=f.rel,
            )

    async def stream(self, read: ReadFile) -> AsyncIterator[bytes]:
        """A big file's bytes again, checked against the manifest once all are read."""
        sha = hashlib.sha256()
        async for chunk in self.store.stream_range(read.file.path, 0, read.file.size):
            sha.update(chunk)
            yield bytes(chunk)
        self._check(read.file, read.file.size, sha.hexdigest())


def _digests(data: bytes) -> tuple[str, int]:
    return hashlib.sha256(data).hexdigest(), zlib.crc32(data)
