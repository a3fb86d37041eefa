"""Record layouts of the ``.vhpkgzip`` subset of ZIP (APPNOTE 6.3.x) shared by writer and reader.

dspkg writes, and accepts, only: STORED entries, no encryption, no data descriptors,
UTF-8 names, ZIP64 extra fields exactly when a value does not fit in 32 bits, no
comments, a single disk.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

LOCAL_SIG = 0x04034B50
CENTRAL_SIG = 0x02014B50
EOCD_SIG = 0x06054B50
ZIP64_EOCD_SIG = 0x06064B50
ZIP64_LOCATOR_SIG = 0x07064B50
ZIP64_EXTRA_ID = 0x0001

LOCAL = struct.Struct("<IHHHHHIIIHH")  # 30 bytes
CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")  # 46 bytes
EOCD = struct.Struct("<IHHHHIIH")  # 22 bytes
ZIP64_EOCD = struct.Struct("<IQHHIIQQQQ")  # 56 bytes
ZIP64_LOCATOR = struct.Struct("<IIQI")  # 20 bytes

MAX32 = 0xFFFFFFFF
MAX16 = 0xFFFF
FLAG_ENCRYPTED = 0x0001
FLAG_DATA_DESCRIPTOR = 0x0008
FLAG_UTF8 = 0x0800
METHOD_STORED = 0
VERSION_DEFAULT = 20
VERSION_ZIP64 = 45
MADE_BY_UNIX = 3 << 8
# Fixed timestamp and attributes make packages byte-identical for identical files:
# 1980-01-01 00:00:00 (the DOS epoch) and a regular file with mode 0644.
DOS_TIME = 0
DOS_DATE = (0 << 9) | (1 << 5) | 1
EXTERNAL_ATTR = (0o100644 << 16) & MAX32
S_IFMT = 0o170000
S_IFREG = 0o100000


# A ZIP64 extra field: tag and length (4 bytes), then 8 bytes per value it carries.
_EXTRA_HEADER = 4
_VALUE = 8
LOCAL_ZIP64_EXTRA = _EXTRA_HEADER + 2 * _VALUE  # both sizes
CENTRAL_ZIP64_EXTRA_MAX = _EXTRA_HEADER + 3 * _VALUE  # both sizes and the offset
# The end records: EOCD, preceded by the ZIP64 record and locator when needed.
END_RECORDS_MAX = EOCD.size + ZIP64_LOCATOR.size + ZIP64_EOCD.size


def local_header_size(name: bytes, size: int) -> int:
    """Bytes of the local header dspkg writes before an entry's data."""
    return LOCAL.size + len(name) + (LOCAL_ZIP64_EXTRA if size >= MAX32 else 0)


def central_record_size(name_len: int, size: int, header_offset: int) -> int:
    """Bytes of the central directory record dspkg writes for an entry."""
    values = 2 * (size >= MAX32) + (header_offset >= MAX32)
    return CENTRAL.size + name_len + (_EXTRA_HEADER + _VALUE * values if values else 0)


def needs_zip64_end(count: int, directory_size: int, directory_offset: int) -> bool:
    return count >= MAX16 or directory_size >= MAX32 or directory_offset >= MAX32


def end_records_size(count: int, directory_size: int, directory_offset: int) -> int:
    if needs_zip64_end(count, directory_size, directory_offset):
        return END_RECORDS_MAX
    return EOCD.size


def entry_cost_max(name_len: int, size: int) -> int:
    """An upper bound of the bytes one entry adds to a package: headers, data, directory."""
    return (
        LOCAL.size
        + LOCAL_ZIP64_EXTRA
        + CENTRAL.size
        + CENTRAL_ZIP64_EXTRA_MAX
        + 2 * name_len
        + size
    )


def package_size(entries: Iterable[tuple[int, int]]) -> int:
    """The exact size of the package dspkg writes of entries ``(name length, size)``."""
    entries = list(entries)
    plain = plain_package_size(
        len(entries),
        sum(n for n, _ in entries),
        sum(s for _, s in entries),
        max((s for _, s in entries), default=0),
    )
    if plain is not None:
        return plain
    position = directory = count = 0
    for name_len, size in entries:
        directory += central_record_size(name_len, size, position)
        position += LOCAL.size + name_len + (LOCAL_ZIP64_EXTRA if size >= MAX32 else 0) + size
        count += 1
    return position + directory + end_records_size(count, directory, position)


def plain_package_size(count: int, names: int, data: int, largest: int) -> int | None:
    """The exact size of a package of ``count`` entries whose names take ``names`` bytes
    and data ``data`` bytes, the largest ``largest``, from these sums alone; None when
    some entry needs ZIP64 records (below 4 GiB everywhere, none does): then each
    entry's place decides its records (:func:`package_size`)."""
    position = LOCAL.size * count + names + data
    if position >= MAX32 or largest >= MAX32:
        return None
    directory = CENTRAL.size * count + names
    return position + directory + end_records_size(count, directory, position)
