"""Writes ``.vhpkgzip`` packages as a byte stream (pure: no I/O, no store).

The writer never sees file data: the caller announces each entry (name, size,
CRC-32), gets the local header bytes back, emits exactly ``size`` data bytes after
them, and finally asks for the central directory. This lets the packager stream
file contents straight from disk into an upload without buffering a package.

Example::

    writer = PackageWriter()
    out = bytearray()
    for name, data in sorted(files.items()):
        out += writer.add(name, len(data), zlib.crc32(data))
        out += data
    out += writer.finish()
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from typing import NamedTuple

from dspkg import zipformat as zf

# The first 14 bytes of the local header of every stored entry below 4 GiB: signature,
# version, flags, method, time, date (CRC-32, sizes and the name's length follow).
LOCAL_PREFIX = zf.LOCAL.pack(
    zf.LOCAL_SIG,
    zf.VERSION_DEFAULT,
    zf.FLAG_UTF8,
    zf.METHOD_STORED,
    zf.DOS_TIME,
    zf.DOS_DATE,
    0,
    0,
    0,
    0,
    0,
)[:14]


# Central records gathered before they are deflated into the directory kept.
_DEFLATE_AT = 1 << 20


class WrittenEntry(NamedTuple):
    name: str
    size: int
    crc32: int
    header_offset: int
    data_offset: int


class PackageWriter:
    """Lays out one package; tracks offsets so the manifest can point at every entry.

    The central directory grows as entries are added, packed (46 bytes and the name an
    entry) and deflated a megabyte at a time: its records repeat themselves, so a package
    of a million entries holds about 11 MB of it (64 MB packed, 200 MB as a record
    object per entry) until :meth:`finish_parts` inflates it piece by piece.
    """

    def __init__(self) -> None:
        self._directory = bytearray()  # records not deflated yet
        self._deflated = bytearray()
        self._deflater = zlib.compressobj(1, zlib.DEFLATED, -15)
        self._directory_size = 0
        self._count = 0
        self._position = 0
        self._last: WrittenEntry | None = None
        self._last_name: str | None = None
        self._finished = False

    @property
    def position(self) -> int:
        """Bytes the package has once the data of every added entry is emitted."""
        return self._position

    @property
    def count(self) -> int:
        """Entries added."""
        return self._count

    @property
    def entries(self) -> list[WrittenEntry]:
        """Every entry added, read back from the central directory (for tests and tools:
        it makes an object per entry)."""
        inflated = zlib.decompress(bytes(self._deflated) + self._deflater.copy().flush(), -15)
        return list(_read_directory(inflated + bytes(self._directory)))

    @property
    def last(self) -> WrittenEntry:
        """The entry added most recently."""
        if self._last is None:
            raise ValueError("no entry added yet")
        return self._last

    def add(self, name: str, size: int, crc32: int) -> bytes:
        """Record an entry and return its local header; ``size`` data bytes must follow it."""
        self._check(name)
        encoded = name.encode("utf-8")
        zip64 = size >= zf.MAX32
        extra = struct.pack("<HHQQ", zf.ZIP64_EXTRA_ID, 16, size, size) if zip64 else b""
        header = zf.LOCAL.pack(
            zf.LOCAL_SIG,
            zf.VERSION_ZIP64 if zip64 else zf.VERSION_DEFAULT,
            zf.FLAG_UTF8,
            zf.METHOD_STORED,
            zf.DOS_TIME,
            zf.DOS_DATE,
            crc32 & zf.MAX32,
            zf.MAX32 if zip64 else size,
            zf.MAX32 if zip64 else size,
            len(encoded),
            len(extra),
        )
        self._record(name, encoded, size, crc32, len(header) + len(encoded) + len(extra))
        return header + encoded + extra

    def add_written(self, name: str, encoded_length: int, size: int, crc32: int) -> None:
        """Record an entry whose local header the caller emitted itself: ``LOCAL_PREFIX``,
        CRC-32, both sizes, the name's length, no extra field, then the name (what
        :meth:`add` returns for an entry below 4 GiB; ``_speedups.pack_files`` does so)."""
        self._check(name)
        if size >= zf.MAX32:
            raise ValueError(f"{name!r} needs a ZIP64 header: use add()")
        encoded = name.encode("utf-8")
        if len(encoded) != encoded_length:
            raise ValueError(f"{name!r} is {len(encoded)} bytes in UTF-8, not {encoded_length}")
        self._record(name, encoded, size, crc32, zf.LOCAL.size + encoded_length)

    def _check(self, name: str) -> None:
        if self._finished:
            raise ValueError("package already finished")
        if self._last_name is not None and name <= self._last_name:
            raise ValueError(f"entries must be added in sorted order: {name!r}")

    def _record(self, name: str, encoded: bytes, size: int, crc32: int, header: int) -> None:
        offset = self._position
        crc32 &= zf.MAX32
        record = _central_record(encoded, size, crc32, offset)
        self._directory += record
        self._directory_size += len(record)
        if len(self._directory) >= _DEFLATE_AT:
            self._deflated += self._deflater.compress(self._directory)
            self._directory = bytearray()
        self._count += 1
        self._last = WrittenEntry(name, size, crc32, offset, offset + header)
        self._last_name = name
        self._position = offset + header + size

    def finish(self) -> bytes:
        """Return the central directory and end records; the package is then complete."""
        return b"".join(self.finish_parts())

    def finish_parts(self, part_size: int = 8 << 20) -> Iterator[bytes]:
        """The central directory and end records in pieces of at most ``part_size`` bytes
        (the end records last, on their own): never a second copy of the whole directory."""
        if self._finished:
            raise ValueError("package already finished")
        self._finished = True
        cd_offset = self._position
        cd_size = self._directory_size
        count = self._count
        tail = bytearray()
        if zf.needs_zip64_end(count, cd_size, cd_offset):
            zip64_offset = cd_offset + cd_size
            tail += zf.ZIP64_EOCD.pack(
                zf.ZIP64_EOCD_SIG,
                zf.ZIP64_EOCD.size - 12,
                zf.MADE_BY_UNIX | zf.VERSION_ZIP64,
                zf.VERSION_ZIP64,
                0,
                0,
                count,
                count,
                cd_size,
                cd_offset,
            )
            tail += zf.ZIP64_LOCATOR.pack(zf.ZIP64_LOCATOR_SIG, 0, zip64_offset, 1)
        tail += zf.EOCD.pack(
            zf.EOCD_SIG,
            0,
            0,
            min(count, zf.MAX16),
            min(count, zf.MAX16),
            min(cd_size, zf.MAX32),
            min(cd_offset, zf.MAX32),
            0,
        )
        self._position += cd_size + len(tail)
        self._deflated += self._deflater.compress(self._directory)
        self._deflated += self._deflater.flush()
        deflated, self._deflated, self._directory = self._deflated, bytearray(), bytearray()
        inflater = zlib.decompressobj(-15)
        pending = bytes(deflated)
        del deflated
        while pending:
            piece = inflater.decompress(pending, part_size)
            pending = inflater.unconsumed_tail
            if piece:
                yield piece
        piece = inflater.flush()
        if piece:
            yield piece
        yield bytes(tail)


def _central_record(encoded: bytes, size: int, crc32: int, header_offset: int) -> bytes:
    big_size = size >= zf.MAX32
    big_offset = header_offset >= zf.MAX32
    values: list[int] = []
    if big_size:
        values += [size, size]
    if big_offset:
        values.append(header_offset)
    extra = (
        struct.pack(f"<HH{len(values)}Q", zf.ZIP64_EXTRA_ID, 8 * len(values), *values)
        if values
        else b""
    )
    header = zf.CENTRAL.pack(
        zf.CENTRAL_SIG,
        zf.MADE_BY_UNIX | zf.VERSION_ZIP64,
        zf.VERSION_ZIP64 if values else zf.VERSION_DEFAULT,
        zf.FLAG_UTF8,
        zf.METHOD_STORED,
        zf.DOS_TIME,
        zf.DOS_DATE,
        crc32,
        zf.MAX32 if big_size else size,
        zf.MAX32 if big_size else size,
        len(encoded),
        len(extra),
        0,
        0,
        0,
        zf.EXTERNAL_ATTR,
        zf.MAX32 if big_offset else header_offset,
    )
    return header + encoded + extra


def _read_directory(directory: bytes) -> Iterator[WrittenEntry]:
    """The entries of central records this writer packed, back as records."""
    at = 0
    while at < len(directory):
        fields = zf.CENTRAL.unpack_from(directory, at)
        crc32, size, name_len, extra_len, offset = (
            fields[7],
            fields[8],
            fields[10],
            fields[11],
            fields[16],
        )
        start = at + zf.CENTRAL.size
        encoded = directory[start : start + name_len]
        extra = directory[start + name_len : start + name_len + extra_len]
        values = list(struct.unpack_from(f"<{(extra_len - 4) // 8}Q", extra, 4)) if extra else []
        if size == zf.MAX32 and values:
            size = values.pop(0)
            values.pop(0)
        if offset == zf.MAX32 and values:
            offset = values.pop(0)
        at = start + name_len + extra_len
        header = zf.local_header_size(encoded, size)
        yield WrittenEntry(encoded.decode("utf-8"), size, crc32, offset, offset + header)
