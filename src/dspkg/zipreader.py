"""Reads ``.vhpkgzip`` packages, trusting nothing (pure: bytes or a ``read_range`` in, no store).

Two readers share one set of checks:

- :class:`LocalEntryParser` walks local headers in one forward pass over a byte stream
  that starts at any local header (a whole package, or a ranged GET from the middle),
  yielding each entry's data as it arrives;
- :func:`read_central_directory` reads and validates the central directory.

Anything outside the subset dspkg writes (compression, encryption, data descriptors,
non-UTF-8 names, unsafe paths, overlapping or unsorted entries) raises
:class:`~dspkg.errors.UnsafePackage` naming the package and entry.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

from dspkg import zipformat as zf
from dspkg.errors import UnsafePackage
from dspkg.paths import all_paths_ok, path_problem, tree_problem

Buffer = bytes | bytearray | memoryview
ReadRange = Callable[[int, int], bytes]
"""``read_range(start, end)`` returns bytes ``[start, end)`` of the package."""


@dataclass(frozen=True, slots=True)
class LocalHeader:
    name: str
    size: int
    crc32: int
    header_offset: int
    data_offset: int


class CentralEntry(NamedTuple):
    name: str
    size: int
    crc32: int
    header_offset: int
    mode: int


def _zip64_values(extra: Buffer, count: int, *, obj: str, name: str) -> list[int]:
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, pos)
        if pos + 4 + length > len(extra):
            break
        if tag == zf.ZIP64_EXTRA_ID:
            if length < 8 * count:
                raise UnsafePackage(
                    f"package {obj}: entry {name!r} has a truncated ZIP64 extra field",
                    obj=obj,
                    entry=name,
                )
            return list(struct.unpack_from(f"<{count}Q", extra, pos + 4))
        pos += 4 + length
    raise UnsafePackage(
        f"package {obj}: entry {name!r} declares ZIP64 sizes without a ZIP64 extra field",
        obj=obj,
        entry=name,
    )


def _decode_name(raw: Buffer, flags: int, *, obj: str, check: bool = True) -> str:
    data = bytes(raw)
    try:
        name = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UnsafePackage(
            f"package {obj}: entry name {data!r} is not valid UTF-8", obj=obj, entry=repr(data)
        ) from None
    if not flags & zf.FLAG_UTF8 and not name.isascii():
        raise UnsafePackage(
            f"package {obj}: entry {name!r} has a non-ASCII name without the UTF-8 flag",
            obj=obj,
            entry=name,
        )
    problem = path_problem(name) if check else None
    if problem:
        raise UnsafePackage(
            f"package {obj}: refusing entry {name!r}: {problem}", obj=obj, entry=name
        )
    return name


def _check_method(flags: int, method: int, *, obj: str, name: str) -> None:
    if flags & zf.FLAG_ENCRYPTED:
        raise UnsafePackage(f"package {obj}: entry {name!r} is encrypted", obj=obj, entry=name)
    if flags & zf.FLAG_DATA_DESCRIPTOR:
        raise UnsafePackage(
            f"package {obj}: entry {name!r} uses a data descriptor", obj=obj, entry=name
        )
    if method != zf.METHOD_STORED:
        raise UnsafePackage(
            f"package {obj}: entry {name!r} is compressed (method {method}); "
            "only STORED is allowed",
            obj=obj,
            entry=name,
        )


def parse_local_header(buf: Buffer, offset: int, *, obj: str) -> tuple[LocalHeader, int] | None:
    """Parse a local header at the start of ``buf`` (at package offset ``offset``).

    Returns the header and its length, or None when ``buf`` is too short to hold it.
    """
    if len(buf) < zf.LOCAL.size:
        return None
    (sig, _ver, flags, method, _t, _d, crc, csize, usize, nlen, xlen) = zf.LOCAL.unpack_from(buf)
    if sig != zf.LOCAL_SIG:
        raise UnsafePackage(
            f"package {obj}: no local file header at offset {offset} "
            "(corrupt or truncated package)",
            obj=obj,
        )
    total = zf.LOCAL.size + nlen + xlen
    if len(buf) < total:
        return None
    name = _decode_name(buf[zf.LOCAL.size : zf.LOCAL.size + nlen], flags, obj=obj)
    _check_method(flags, method, obj=obj, name=name)
    if usize == zf.MAX32 or csize == zf.MAX32:
        extra = buf[zf.LOCAL.size + nlen : total]
        usize, csize = _zip64_values(extra, 2, obj=obj, name=name)
    if csize != usize:
        raise UnsafePackage(
            f"package {obj}: entry {name!r} is STORED but its sizes differ ({csize} != {usize})",
            obj=obj,
            entry=name,
        )
    return LocalHeader(name, usize, crc, offset, offset + total), total


# What may follow the last entry: the central directory, or the end records of an
# empty package.
_END_SIGNATURES = frozenset({zf.CENTRAL_SIG, zf.EOCD_SIG, zf.ZIP64_EOCD_SIG})


class LocalEntryParser:
    """Forward-pass parser over a byte stream that starts at a local header.

    ``feed(chunk)`` yields ``(header, piece, last)`` for each piece of entry data in
    the chunk; ``last`` is true on an entry's final piece. A small entry inside one
    chunk comes as a single piece, without copying. At the central directory the
    parser stops (``at_directory`` becomes true) and ignores the rest; ``close()``
    raises if the stream ended inside a header or an entry's data.
    """

    def __init__(self, offset: int = 0, *, obj: str = "(unnamed)") -> None:
        self.obj = obj
        self.offset = offset
        self.at_directory = False
        self._pending = bytearray()
        self._header: LocalHeader | None = None
        self._remaining = 0

    def feed(self, chunk: bytes | memoryview) -> Iterator[tuple[LocalHeader, memoryview, bool]]:
        view = memoryview(chunk)
        pos = 0
        end = len(view)
        while pos < end and not self.at_directory:
            header = self._header
            if header is not None:
                take = min(self._remaining, end - pos)
                self._remaining -= take
                self.offset += take
                last = self._remaining == 0
                if last:
                    self._header = None
                yield header, view[pos : pos + take], last
                pos += take
                continue
            if self._pending:
                self._pending += view[pos:end]
                buf: Buffer = self._pending
                base = 0
            else:
                buf = view[pos:end]
                base = pos
            if len(buf) >= 4 and struct.unpack_from("<I", buf)[0] in _END_SIGNATURES:
                self.at_directory = True
                self._pending.clear()
                return
            parsed = parse_local_header(buf, self.offset, obj=self.obj)
            if parsed is None:
                if not self._pending:
                    self._pending += buf
                return
            header, used = parsed
            self.offset += used
            self._remaining = header.size
            if self._pending:
                # The header straddled chunks: the bytes after it in _pending are data.
                rest = bytes(self._pending[used:])
                self._pending.clear()
                yield from self._start(header)
                yield from self.feed(rest)
                return
            pos = base + used
            if header.size == 0:
                yield header, view[pos:pos], True
            else:
                self._header = header

    def _start(self, header: LocalHeader) -> Iterator[tuple[LocalHeader, memoryview, bool]]:
        if header.size == 0:
            yield header, memoryview(b""), True
        else:
            self._header = header

    def close(self) -> None:
        """Raise unless the stream ended exactly at an entry boundary."""
        if self._header is not None:
            raise UnsafePackage(
                f"package {self.obj}: truncated inside entry {self._header.name!r}",
                obj=self.obj,
                entry=self._header.name,
            )
        if self._pending and not self.at_directory:
            raise UnsafePackage(
                f"package {self.obj}: truncated inside a local header at offset {self.offset}",
                obj=self.obj,
            )


@dataclass(frozen=True, slots=True)
class DirectoryLocation:
    entries: int
    offset: int
    size: int


def locate_central_directory(
    read_range: ReadRange, package_size: int, *, obj: str = "(unnamed)", max_entries: int = 10**7
) -> DirectoryLocation:
    """Find the central directory from the end records (only the last 98 bytes are read).

    Checks: one EOCD at the very end (no comment, no trailing data), a consistent
    ZIP64 locator and record, and the directory directly before the end records.
    """

    def bad(message: str) -> UnsafePackage:
        return UnsafePackage(f"package {obj}: {message}", obj=obj)

    if package_size < zf.EOCD.size:
        raise bad("too small to be a package (truncated?)")
    eocd_at = package_size - zf.EOCD.size
    eocd = read_range(eocd_at, package_size)
    sig, disk, cd_disk, n_disk, n_total, cd_size, cd_offset, comment = zf.EOCD.unpack(eocd)
    if sig != zf.EOCD_SIG or comment != 0:
        raise bad("no end of central directory record at the end (truncated or trailing data?)")
    if disk != 0 or cd_disk != 0 or n_disk != n_total:
        raise bad("multi-disk archives are not supported")
    directory_end = eocd_at
    if n_total == zf.MAX16 or cd_size == zf.MAX32 or cd_offset == zf.MAX32:
        loc_at = eocd_at - zf.ZIP64_LOCATOR.size
        if loc_at < 0:
            raise bad("missing ZIP64 end of central directory locator")
        lsig, ldisk, rec_at, ldisks = zf.ZIP64_LOCATOR.unpack(read_range(loc_at, eocd_at))
        expected_rec_at = loc_at - zf.ZIP64_EOCD.size
        if lsig != zf.ZIP64_LOCATOR_SIG or ldisk != 0 or ldisks != 1 or rec_at != expected_rec_at:
            raise bad("inconsistent ZIP64 end of central directory locator")
        rec = zf.ZIP64_EOCD.unpack(read_range(rec_at, loc_at))
        rsig, rsize, _made, _need, rdisk, rcd_disk, rn_disk, rn_total, cd_size, cd_offset = rec
        if rsig != zf.ZIP64_EOCD_SIG or rsize != zf.ZIP64_EOCD.size - 12:
            raise bad("inconsistent ZIP64 end of central directory record")
        if rdisk != 0 or rcd_disk != 0 or rn_disk != rn_total:
            raise bad("multi-disk archives are not supported")
        n_total = rn_total
        directory_end = rec_at
    if n_total > max_entries:
        raise bad(f"declares {n_total} entries, more than the limit of {max_entries}")
    if cd_offset + cd_size != directory_end:
        raise bad(
            "central directory is not where the end record says (prepended or trailing data?)"
        )
    return DirectoryLocation(n_total, cd_offset, cd_size)


def read_central_directory(
    read_range: ReadRange, package_size: int, *, obj: str = "(unnamed)", max_entries: int = 10**7
) -> list[CentralEntry]:
    """Read and validate a package's central directory; entries come in offset order.

    Besides :func:`locate_central_directory`'s checks: the entry count, STORED
    regular files (no links, devices, setuid) with safe, sorted, unique names, and
    no entry overlapping another or the directory.
    """

    def bad(message: str, entry: str | None = None) -> UnsafePackage:
        return UnsafePackage(f"package {obj}: {message}", obj=obj, entry=entry)

    where = locate_central_directory(read_range, package_size, obj=obj, max_entries=max_entries)
    data = read_range(where.offset, where.offset + where.size)
    if len(data) != where.size:
        raise bad("truncated central directory")
    # The names' checks batched (compiled when built): a pass that skips them, then all
    # names at once. A package that fails anything goes through the checks entry by
    # entry, in order, which name its first problem exactly as they always did.
    try:
        entries = _entries(data, where, obj=obj, check_names=False)
        clear = all_paths_ok([e.name for e in entries])
    except UnsafePackage:
        clear = False
    if not clear:
        entries = _entries(data, where, obj=obj, check_names=True)
    collision = tree_problem([e.name for e in entries], strictly_sorted=True)
    if collision:
        raise bad(f"entry {collision[0]!r} {collision[1]}", collision[0])
    return entries


def _entries(
    data: bytes, where: DirectoryLocation, *, obj: str, check_names: bool
) -> list[CentralEntry]:
    """The central directory's entries, each checked but for its name's safety unless
    ``check_names`` (the caller then checks all names at once)."""

    def bad(message: str, entry: str | None = None) -> UnsafePackage:
        return UnsafePackage(f"package {obj}: {message}", obj=obj, entry=entry)

    n_total, cd_offset = where.entries, where.offset
    entries: list[CentralEntry] = []
    pos = 0
    previous_end = 0
    view = memoryview(data)
    # Locals for a loop that runs once per entry (100,000 entries: about 0.5 s).
    unpack, fixed, length = zf.CENTRAL.unpack_from, zf.CENTRAL.size, len(view)
    refused = zf.FLAG_ENCRYPTED | zf.FLAG_DATA_DESCRIPTOR
    utf8, stored, max32 = zf.FLAG_UTF8, zf.METHOD_STORED, zf.MAX32
    local, ifmt, ifreg = zf.LOCAL.size, zf.S_IFMT, zf.S_IFREG
    last = None
    append = entries.append
    for _ in range(n_total):
        if pos + fixed > length:
            raise bad("central directory holds fewer entries than declared")
        (csig, made_by, _need, flags, method, _t, _d, crc, csize, usize, nlen, xlen, clen, _disk,
         _internal, external, offset) = unpack(view, pos)  # fmt: skip
        if csig != zf.CENTRAL_SIG:
            raise bad("corrupt central directory")
        start = pos + fixed
        if check_names or not flags & utf8:
            name = _decode_name(view[start : start + nlen], flags, obj=obj, check=check_names)
        else:
            try:
                name = str(view[start : start + nlen], "utf-8")
            except UnicodeDecodeError:
                name = _decode_name(view[start : start + nlen], flags, obj=obj, check=False)
        if flags & refused or method != stored:
            _check_method(flags, method, obj=obj, name=name)
        if usize == max32 or csize == max32 or offset == max32:
            extra = view[start + nlen : start + nlen + xlen]
            wanted = [usize == max32, csize == max32, offset == max32]
            values = iter(_zip64_values(extra, sum(wanted), obj=obj, name=name))
            usize = next(values) if wanted[0] else usize
            csize = next(values) if wanted[1] else csize
            offset = next(values) if wanted[2] else offset
        if csize != usize:
            raise bad(f"entry {name!r} is STORED but its sizes differ", name)
        mode = (external >> 16) & 0xFFFF
        if made_by >> 8 == 3 and mode and (mode & ifmt) != ifreg:
            raise bad(f"entry {name!r} is not a regular file (mode {oct(mode)})", name)
        if mode & 0o7000:
            raise bad(f"entry {name!r} has setuid, setgid or sticky bits", name)
        if offset < previous_end:
            raise bad(f"entry {name!r} overlaps the entry before it", name)
        previous_end = offset + local + nlen + usize
        if previous_end > cd_offset:
            raise bad(f"entry {name!r} runs into the central directory", name)
        if last is not None and name <= last:
            raise bad(f"entry {name!r} is out of order or duplicated", name)
        last = name
        append(CentralEntry(name, usize, crc, offset, mode))
        pos = start + nlen + xlen + clen
    if pos != len(view):
        raise bad("central directory holds more data than its entries")
    return entries
