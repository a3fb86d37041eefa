"""Builds a package from files as they are read and streams it into a multipart upload.

No package file ever lands on disk: local headers and file bytes are gathered into
parts of ``part_size`` bytes that the store uploads while later files are read.
"""

from __future__ import annotations

import asyncio
import hashlib
import queue
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import Future
from typing import Protocol

from dspkg.manifest import PackageInfo
from dspkg.names import VersionUri
from dspkg.progress import Progress
from dspkg.publish_plan import FEW_FILES, BuiltPackage, PackagePlan
from dspkg.sizes import format_size
from dspkg.sources import Batch, LocalFile, ReadFile
from dspkg.store import PART_SIZE, UPLOAD_CONCURRENCY, Store
from dspkg.zipwriter import LOCAL_PREFIX, PackageWriter

# Each file as it is packaged, with where its data starts in the package.
OnFile = Callable[[ReadFile, int], Awaitable[None]]


class Source(Protocol):
    """Where a package's files are read from: a directory (:class:`FileReader`), or the
    blobs of a stored version (:class:`dspkg.packing.BlobReader`). Either yields every
    file in order, hashed and checked (one by one, or in batches that may come as package
    bytes already), and streams a big file's bytes again."""

    def read_all(
        self, files: Sequence[LocalFile], *, keep_data: bool = True
    ) -> AsyncIterator[ReadFile]: ...

    def read_batches(
        self, files: Sequence[LocalFile], *, package_prefix: bytes | None = None
    ) -> AsyncIterator[Batch]: ...

    def stream(self, read: ReadFile) -> AsyncIterator[bytes]: ...


async def _no_op(_: ReadFile, __: int) -> None:
    return None


class _Digest:
    """The package's SHA-256, computed in a thread of its own, in order: the loop that
    builds the package never waits for it (hashing releases the interpreter's lock, and
    taking it back while the reading threads hold it would stall that loop each time).

    Pieces go to the thread ``handoff`` bytes at a time, through a ``SimpleQueue``. Each
    handoff wakes the thread, and on a busy machine the loop that woke it then waits for
    a CPU and the interpreter's lock: handing over every piece (315 of 640 KB for 200 MB,
    through ``ThreadPoolExecutor.submit``) kept the loop waiting 0.6-1.5 s in all on 2
    cores, while nothing else it drives (the upload's parts, the reads) moved."""

    def __init__(self, handoff: int = 8 << 20) -> None:
        self._sha = hashlib.sha256()
        self._handoff = handoff
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._pieces: queue.SimpleQueue[list[bytes] | None] = queue.SimpleQueue()
        self._finished: Future[None] = Future()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="dspkg-package-sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while (pieces := self._pieces.get()) is not None and not self._closed:
                for piece in pieces:
                    self._sha.update(piece)
        except BaseException as exc:  # pragma: no cover - hashing bytes does not fail
            self._finished.set_exception(exc)
        else:
            self._finished.set_result(None)

    def update(self, data: bytes) -> None:
        self._held.append(data)
        self._held_bytes += len(data)
        if self._held_bytes >= self._handoff:
            self._hand_over()

    def _hand_over(self) -> None:
        if self._held:
            self._pieces.put(self._held)
            self._held, self._held_bytes = [], 0

    async def hexdigest(self) -> str:
        self._hand_over()
        self._pieces.put(None)  # the thread ends once every piece before it is hashed
        await asyncio.wrap_future(self._finished)
        return self._sha.hexdigest()

    def close(self) -> None:
        """Stop the thread; pieces not hashed yet are dropped (a failed upload)."""
        self._closed = True
        self._held.clear()
        self._pieces.put(None)
        self._thread.join()


async def upload_package(
    store: Store,
    plan: PackagePlan,
    reader: Source,
    *,
    on_file: OnFile = _no_op,
    part_size: int = PART_SIZE,
    concurrency: int = UPLOAD_CONCURRENCY,
    keep_data: bool = True,
) -> BuiltPackage:
    """Read, hash and package ``plan.files`` into ``plan.key``; ``on_file`` sees each file
    read and where its data lies (without its bytes unless ``keep_data``: then a reader
    may lay small files out as package bytes itself, in C, which spares this loop most of
    its work per file). Nothing per file outlives the package but its central record."""
    writer = PackageWriter()
    digest = _Digest()
    prefix = None if keep_data else LOCAL_PREFIX

    async def chunks() -> AsyncIterator[bytes]:
        # Pieces are joined once per part: one copy of every byte, not one per append.
        pieces: list[bytes] = []
        size = 0

        def part() -> bytes:
            nonlocal size
            joined = b"".join(pieces)
            pieces.clear()
            size = 0
            digest.update(joined)
            return joined

        async for batch in reader.read_batches(plan.files, package_prefix=prefix):
            if batch.packed is not None:
                for read in batch.reads:
                    name, nbytes = read.file.rel, read.file.size
                    writer.add_written(name, len(name.encode("utf-8")), nbytes, read.crc32)
                    await on_file(read, writer.last.data_offset)
                # Already one buffer: handed on as it is (the store gathers its parts).
                if pieces:
                    yield part()
                digest.update(batch.packed)
                yield batch.packed
                continue
            for read in batch.reads:
                header = writer.add(read.file.rel, read.file.size, read.crc32)
                offset = writer.last.data_offset
                pieces.append(header)
                size += len(header)
                if read.data is not None:
                    pieces.append(read.data)
                    size += len(read.data)
                else:
                    async for block in reader.stream(read):
                        pieces.append(block)
                        size += len(block)
                        if size >= part_size:
                            yield part()
                await on_file(read, offset)
                if size >= part_size:
                    yield part()
        if pieces:
            yield part()
        for piece in writer.finish_parts(part_size):
            digest.update(piece)
            yield piece

    try:
        await store.put_stream(plan.key, chunks(), part_size=part_size, concurrency=concurrency)
        sha256 = await digest.hexdigest()
    finally:
        digest.close()
    info = PackageInfo(
        name=plan.name,
        key=plan.key,
        size=writer.position,
        sha256=sha256,
        entries=writer.count,
    )
    return BuiltPackage(info=info)


def log_upload_start(progress: Progress, prefix: str, store: Store, name: str, size: int) -> None:
    """The first two of the reference product's three lines per package."""
    progress.log(f"{prefix} uploading {name} ({format_size(size)})")
    progress.log(f"{prefix} uploading to {store.kind} bucket {store.bucket}")


def log_upload_done(progress: Progress, prefix: str, key: str) -> None:
    """The third line: where the package is now."""
    progress.log(f"{prefix} upload complete ({key})")


def log_few_files(progress: Progress, uri: VersionUri, files: int) -> None:
    """Packaging a small version is done as asked, with a line saying it gains little."""
    if files < FEW_FILES:
        progress.log(
            f"{uri}: packaging it as asked, though a version of {files:,} "
            f"file{'s' if files != 1 else ''} (under {FEW_FILES:,}) gains little from packages"
        )
