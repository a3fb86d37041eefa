"""Reading the files being published: each read once, hashed on the way, read ahead in parallel.

Small files are read whole in worker threads (batched, so one hand-off moves many
files) and come back in order with their sha256 and CRC-32. A file at or above
``big_file`` is hashed in a first pass and streamed again when its bytes are
needed, verified against the first pass, so memory stays bounded by the
read-ahead window whatever the file sizes.
"""

from __future__ import annotations

import asyncio
import bisect
import errno
import hashlib
import itertools
import os
import zlib
from array import array
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import NamedTuple, overload

from dspkg.errors import SourceChanged
from dspkg.paths import PathList
from dspkg.speedups import Compiled, compiled_reader


# Named tuples, not frozen dataclasses: one of each per file, and a frozen dataclass
# costs several times as much to create.
class LocalFile(NamedTuple):
    rel: str
    path: str  # a plain string: a million Path objects cost seconds
    size: int


class LocalFiles(Sequence[LocalFile]):
    """Files to publish, sorted by path, held as columns: their paths (a
    :class:`~dspkg.paths.PathList`), sizes in an array, and real paths only where one is
    not ``base + path``. A million cost about their paths' length and 16 bytes each,
    where a list of :class:`LocalFile` costs some 250 bytes a file (the tuple, two
    strings, the size's int). Items are made when asked for; slices are views of the
    same columns.
    """

    __slots__ = ("_base", "_moved", "_rels", "_sizes", "_start", "_stop")

    def __init__(
        self,
        rels: Sequence[str],
        sizes: array[int],
        *,
        base: str = "",
        moved: Mapping[str, str] | None = None,
        start: int = 0,
        stop: int | None = None,
    ) -> None:
        if len(rels) != len(sizes):
            raise ValueError("one size for each path")
        self._rels = rels if isinstance(rels, PathList) else PathList(rels)
        self._sizes = sizes
        self._base = base
        self._moved: Mapping[str, str] = moved or {}
        self._start = start
        self._stop = len(rels) if stop is None else stop

    @classmethod
    def of(cls, files: Iterable[LocalFile]) -> LocalFiles:
        """The columns of ``files`` (sorted by path, each path once)."""
        rels: list[str] = []
        sizes = array("q")
        moved: dict[str, str] = {}
        for f in files:
            if rels and f.rel <= rels[-1]:
                raise ValueError(f"files must be sorted by path, each once: {f.rel!r}")
            rels.append(f.rel)
            sizes.append(f.size)
            if f.path != f.rel:
                moved[f.rel] = f.path
        return cls(rels, sizes, moved=moved)

    def __len__(self) -> int:
        return self._stop - self._start

    @overload
    def __getitem__(self, index: int) -> LocalFile: ...

    @overload
    def __getitem__(self, index: slice) -> LocalFiles: ...

    def __getitem__(self, index: int | slice) -> LocalFile | LocalFiles:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                raise ValueError("LocalFiles slices have no step")
            return LocalFiles(
                self._rels,
                self._sizes,
                base=self._base,
                moved=self._moved,
                start=self._start + start,
                stop=self._start + max(start, stop),
            )
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("LocalFiles index out of range")
        at = self._start + index
        rel = self._rels[at]
        return LocalFile(rel, self._real(rel), self._sizes[at])

    def __iter__(self) -> Iterator[LocalFile]:
        for rel, size in zip(self.rels(), self.sizes(), strict=True):
            yield LocalFile(rel, self._real(rel), size)

    def __repr__(self) -> str:
        return f"<LocalFiles: {len(self):,} files>"

    def _real(self, rel: str) -> str:
        moved = self._moved.get(rel) if self._moved else None
        return moved if moved is not None else self._base + rel

    def rels(self) -> Iterator[str]:
        """The paths, in order."""
        return self._rels.range(self._start, self._stop)

    def paths(self) -> PathList:
        """The paths, as a column of their own (the same one for all the files)."""
        if (self._start, self._stop) == (0, len(self._rels)):
            return self._rels
        return PathList(self.rels())

    def sizes(self) -> Iterator[int]:
        """The sizes, in order."""
        return itertools.islice(self._sizes, self._start, self._stop)

    def size_array(self) -> array[int]:
        """The sizes, as an array of their own."""
        return self._sizes[self._start : self._stop]

    @property
    def bytes(self) -> int:
        return sum(self.sizes())

    def name_bytes(self) -> int:
        """The length of every path in UTF-8, summed (what ZIP records hold)."""
        return sum(map(len, map(str.encode, self.rels())))

    def find(self, rel: str) -> LocalFile | None:
        """The file of path ``rel``, if it is one of these."""
        at = bisect.bisect_left(self._rels, rel, self._start, self._stop)
        if at < self._stop and self._rels[at] == rel:
            return self[at - self._start]
        return None

    def where(self, keep: Iterable[bool]) -> LocalFiles:
        """The files for which ``keep`` (one flag per file, in order) is true."""
        flags = list(keep)
        if all(flags):
            return self
        return LocalFiles(
            list(itertools.compress(self.rels(), flags)),
            array("q", itertools.compress(self.sizes(), flags)),
            base=self._base,
            moved=self._moved,
        )

    def subset(self, rels: Sequence[str]) -> LocalFiles:
        """The files of ``rels`` (sorted, each once, each one of these files)."""
        if len(rels) == len(self):
            return self  # a sorted subset as long as the whole is the whole
        wanted = iter(rels)
        next_rel = next(wanted, None)
        flags = []
        for rel in self.rels():
            hit = rel == next_rel
            flags.append(hit)
            if hit:
                next_rel = next(wanted, None)
        if next_rel is not None:
            raise KeyError(next_rel)
        return self.where(flags)


def sorted_files(
    rels: list[str], sizes: array[int], *, base: str = "", moved: Mapping[str, str] | None = None
) -> LocalFiles:
    """:class:`LocalFiles` of paths found in any order (each once), sorted."""
    if all(map(str.__lt__, rels, itertools.islice(rels, 1, None))):
        return LocalFiles(rels, sizes, base=base, moved=moved)
    order = sorted(range(len(rels)), key=rels.__getitem__)
    return LocalFiles(
        [rels[i] for i in order], array("q", map(sizes.__getitem__, order)), base=base, moved=moved
    )


class ReadFile(NamedTuple):
    file: LocalFile
    sha256: str
    crc32: int
    data: bytes | None  # None when the file is big: stream it with FileReader.stream


def _source_error(path: str, exc: OSError) -> SourceChanged:
    if exc.errno == errno.ENOENT:
        return SourceChanged(
            f"{path} disappeared while publishing; nothing was published, run again", path=str(path)
        )
    return SourceChanged(
        f"{path} cannot be read ({exc.strerror}); fix its permissions and run again", path=str(path)
    )


def _changed(path: str, expected: int, got: int) -> SourceChanged:
    return SourceChanged(
        f"{path} changed size while being published ({expected} -> {got} bytes); "
        "nothing was published, run again once it is stable",
        path=str(path),
    )


def _read_small(file: LocalFile) -> ReadFile:
    chunks: list[bytes] = []
    total = 0
    try:
        fd = os.open(file.path, os.O_RDONLY)
        try:
            # Ask for one byte more than expected, to notice a file that grew.
            while total <= file.size:
                block = os.read(fd, file.size + 1 - total)
                if not block:
                    break
                chunks.append(block)
                total += len(block)
        finally:
            os.close(fd)
    except OSError as exc:
        raise _source_error(file.path, exc) from None
    if total != file.size:
        raise _changed(file.path, file.size, total)
    data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    return ReadFile(file, hashlib.sha256(data).hexdigest(), zlib.crc32(data), data)


def _hash_big(file: LocalFile, chunk: int) -> ReadFile:
    sha = hashlib.sha256()
    crc = 0
    total = 0
    try:
        with open(file.path, "rb", buffering=0) as handle:
            while block := handle.read(chunk):
                sha.update(block)
                crc = zlib.crc32(block, crc)
                total += len(block)
    except OSError as exc:
        raise _source_error(file.path, exc) from None
    if total != file.size:
        raise _changed(file.path, file.size, total)
    return ReadFile(file, sha.hexdigest(), crc, None)


class Batch(NamedTuple):
    """Files read together, in order. ``packed``, when a package prefix was asked for and
    the compiled reader could read every file: the package bytes of these files (for each,
    its local header, name and data), and then the reads carry no data."""

    reads: list[ReadFile]
    packed: bytes | None


def _read_batch(
    files: Sequence[LocalFile],
    big_file: int,
    chunk: int,
    compiled: Compiled | None,
    prefix: bytes | None,
) -> Batch:
    if files[0].size >= big_file:  # a big file is a batch of its own
        return Batch([_hash_big(files[0], chunk)], None)
    if compiled is not None:
        paths = [os.fsencode(f.path) for f in files]
        sizes = [f.size for f in files]
        if prefix is not None:
            names = [f.rel.encode("utf-8") for f in files]
            packed, hashed = compiled.pack_files(prefix, paths, sizes, names)
            if packed is not None:  # then every file was read: each has its hashes
                reads = [
                    ReadFile(f, h[0], h[1], None)
                    for f, h in zip(files, hashed, strict=True)
                    if h is not None
                ]
                return Batch(reads, packed)
        else:
            done = compiled.read_files(paths, sizes)
            # A file the compiled reader could not read as expected is read again here,
            # which raises the error it deserves (or reads it, had it been replaced).
            reads = [
                _read_small(f) if r is None else ReadFile(f, r[1], r[2], r[0])
                for f, r in zip(files, done, strict=True)
            ]
            return Batch(reads, None)
    return Batch([_read_small(f) for f in files], None)


@dataclass
class FileReader:
    executor: Executor
    big_file: int = 32 << 20
    # Read ahead of the consumer: small files read in C outpace the loop that packages
    # them, so the window stays full and is memory held for nothing beyond keeping the
    # threads busy (64 MB measured as 90 MB of batches alive in a publish of 1 KB files).
    # At least ``min_batches`` are in flight whatever their size: two big files read at
    # once, one hashed while the next is read.
    window_bytes: int = 16 << 20
    min_batches: int = 2
    batch_bytes: int = 1 << 20
    batch_files: int = 64
    chunk: int = 8 << 20
    speedups: bool = True  # the compiled reader of small files, where it is built

    @property
    def packs(self) -> bool:
        """Whether :meth:`read_batches` can lay files out as package bytes."""
        return self.speedups and compiled_reader() is not None

    async def read_all(
        self, files: Sequence[LocalFile], *, keep_data: bool = True
    ) -> AsyncIterator[ReadFile]:
        """Yield every file, in order, hashed; reads run ahead up to ``window_bytes``.

        With ``keep_data`` false the bytes are dropped once hashed (a hash-only pass).
        """
        async for batch in self.read_batches(files):
            for result in batch.reads:
                yield result if keep_data or result.data is None else result._replace(data=None)

    async def read_batches(
        self, files: Sequence[LocalFile], *, package_prefix: bytes | None = None
    ) -> AsyncIterator[Batch]:
        """Yield every file, in order, hashed, a batch at a time; reads run ahead up to
        ``window_bytes``. With ``package_prefix`` (the first 14 bytes of a stored entry's
        local header) small files come as package bytes where the compiled reader can."""
        loop = asyncio.get_running_loop()
        # Batches are cut as the window moves: a package of a million files never has a
        # million LocalFile tuples alive at once.
        batches = _batches(files, self.batch_bytes, self.batch_files, self.big_file)
        compiled = compiled_reader() if self.speedups else None
        pending: deque[tuple[asyncio.Future[Batch], int]] = deque()
        in_flight = 0
        batch = next(batches, None)
        try:
            while batch is not None or pending:
                while batch is not None and (
                    len(pending) < self.min_batches or in_flight < self.window_bytes
                ):
                    weight = sum(min(f.size, self.big_file) for f in batch)
                    future = loop.run_in_executor(
                        self.executor,
                        _read_batch,
                        batch,
                        self.big_file,
                        self.chunk,
                        compiled,
                        package_prefix,
                    )
                    pending.append((future, weight))
                    in_flight += weight
                    batch = next(batches, None)
                future, weight = pending.popleft()
                done = await future
                in_flight -= weight
                yield done
        finally:
            for future, _ in pending:
                future.cancel()

    async def stream(self, read: ReadFile) -> AsyncIterator[bytes]:
        """The bytes of a big file again, checked against its first pass."""
        loop = asyncio.get_running_loop()
        path = read.file.path
        try:
            handle = await loop.run_in_executor(self.executor, open, path, "rb")
        except OSError as exc:
            raise _source_error(path, exc) from None
        sha = hashlib.sha256()
        total = 0
        try:
            while True:
                try:
                    block = await loop.run_in_executor(self.executor, handle.read, self.chunk)
                except OSError as exc:
                    raise _source_error(path, exc) from None
                if not block:
                    break
                total += len(block)
                if total > read.file.size:
                    raise _changed(path, read.file.size, total)
                sha.update(block)
                yield block
        finally:
            handle.close()
        if total != read.file.size:
            raise _changed(path, read.file.size, total)
        if sha.hexdigest() != read.sha256:
            raise SourceChanged(
                f"{path} changed while being published; nothing was published, run again",
                path=str(path),
            )


def _batches(
    files: Sequence[LocalFile], batch_bytes: int, batch_files: int, big_file: int
) -> Iterator[list[LocalFile]]:
    current: list[LocalFile] = []
    size = 0
    for f in files:
        if f.size >= big_file:
            if current:
                yield current
                current, size = [], 0
            yield [f]
            continue
        current.append(f)
        size += f.size
        if size >= batch_bytes or len(current) >= batch_files:
            yield current
            current, size = [], 0
    if current:
        yield current
