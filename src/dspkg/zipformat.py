"""Record layouts of the ``.vhpkgzip`` subset of ZIP (APPNOTE 6.3.x) shared by writer and reader.

dspkg writes, and accepts, only: STORED entries, no encryption, no data descriptors,
UTF-8 names, ZIP64 extra fields exactly when a value does not fit in 32 bits, no
comments, a single disk.
"""

from __future__ import annotations

import struct

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


def local_header_size(name: bytes, size: int) -> int:
    """Bytes of the local header dspkg writes before an entry's data."""
    return LOCAL.size + len(name) + (20 if size >= MAX32 else 0)
