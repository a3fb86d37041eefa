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


class WrittenEntry(NamedTuple):
    name: str
    size: int
    crc32: int
    header_offset: int
    data_offset: int


class PackageWriter:
    """Lays out one package; tracks offsets so the manifest can point at every entry."""

    def __init__(self) -> None:
        self._entries: list[WrittenEntry] = []
        self._position = 0
        self._last_name: str | None = None
        self._finished = False

    @property
    def position(self) -> int:
        """Bytes the package has once the data of every added entry is emitted."""
        return self._position

    @property
    def entries(self) -> list[WrittenEntry]:
        return list(self._entries)

    @property
    def last(self) -> WrittenEntry:
        """The entry added most recently (without copying the list)."""
        return self._entries[-1]

    def add(self, name: str, size: int, crc32: int) -> bytes:
        """Record an entry and return its local header; ``size`` data bytes must follow it."""
        if self._finished:
            raise ValueError("package already finished")
        if self._last_name is not None and name <= self._last_name:
            raise ValueError(f"entries must be added in sorted order: {name!r}")
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
        self._record(name, size, crc32, len(header) + len(encoded) + len(extra))
        return header + encoded + extra

    def add_written(self, name: str, encoded_length: int, size: int, crc32: int) -> None:
        """Record an entry whose local header the caller emitted itself: ``LOCAL_PREFIX``,
        CRC-32, both sizes, the name's length, no extra field, then the name (what
        :meth:`add` returns for an entry below 4 GiB; ``_speedups.pack_files`` does so)."""
        if self._finished:
            raise ValueError("package already finished")
        if self._last_name is not None and name <= self._last_name:
            raise ValueError(f"entries must be added in sorted order: {name!r}")
        if size >= zf.MAX32:
            raise ValueError(f"{name!r} needs a ZIP64 header: use add()")
        self._record(name, size, crc32, zf.LOCAL.size + encoded_length)

    def _record(self, name: str, size: int, crc32: int, header_length: int) -> None:
        data_offset = self._position + header_length
        self._entries.append(
            WrittenEntry(name, size, crc32 & zf.MAX32, self._position, data_offset)
        )
        self._position = data_offset + size
        self._last_name = name

    def finish(self) -> bytes:
        """Return the central directory and end records; the package is then complete."""
        if self._finished:
            raise ValueError("package already finished")
        self._finished = True
        parts = [_central_record(entry) for entry in self._entries]
        directory = b"".join(parts)
        cd_offset = self._position
        cd_size = len(directory)
        count = len(self._entries)
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
        return directory + bytes(tail)


def _central_record(entry: WrittenEntry) -> bytes:
    encoded = entry.name.encode("utf-8")
    big_size = entry.size >= zf.MAX32
    big_offset = entry.header_offset >= zf.MAX32
    values: list[int] = []
    if big_size:
        values += [entry.size, entry.size]
    if big_offset:
        values.append(entry.header_offset)
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
        entry.crc32,
        zf.MAX32 if big_size else entry.size,
        zf.MAX32 if big_size else entry.size,
        len(encoded),
        len(extra),
        0,
        0,
        0,
        zf.EXTERNAL_ATTR,
        zf.MAX32 if big_offset else entry.header_offset,
    )
    return header + encoded + extra
