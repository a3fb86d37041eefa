"""Counting HTTP/1.1 requests in the client-to-server bytes of one connection (pure).

The WAN emulator sits between every client and the S3 server, so it sees each request
whatever the server is; counting there replaces parsing one server's log. A connection
carries many requests (keep-alive), a request's head or body may be split across reads
in any way, and a client may send several requests before the first answer
(pipelining). Only the framing is read: the request line and headers up to the blank
line, then the body skipped by ``Content-Length`` or by ``Transfer-Encoding: chunked``
(chunk sizes, data, trailers), as RFC 9112 frames a request. A request without either
header has no body.

What cannot be framed (not HTTP/1.x, a head over 64 KiB, a bad chunk size) stops the
count for that connection, and :attr:`RequestStream.failure` says why; the bytes after
it are not guessed at.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

MAX_HEAD = 64 * 1024  # request line and headers; real S3 clients send well under 8 KiB
MAX_LINE = 4 * 1024  # a chunk-size or trailer line
_METHOD = re.compile(rb"[A-Z][A-Z0-9_-]*\Z")
_HEAD_END = b"\r\n\r\n"
_CRLF = b"\r\n"


@dataclass(frozen=True)
class RequestHead:
    """One request seen on the wire."""

    method: str
    target: str
    ranged: bool  # it carried a Range header (a ranged GET, for S3)


class _State(enum.Enum):
    HEAD = enum.auto()  # reading a request line and headers
    BODY = enum.auto()  # skipping a Content-Length body
    CHUNK_SIZE = enum.auto()  # reading a chunk-size line
    CHUNK_DATA = enum.auto()  # skipping a chunk's data
    CHUNK_END = enum.auto()  # the CRLF after a chunk's data
    TRAILERS = enum.auto()  # trailer lines after the last chunk, up to a blank line
    FAILED = enum.auto()


class RequestStream:
    """The requests in one connection's client-to-server stream, fed as bytes arrive."""

    def __init__(self) -> None:
        self._state = _State.HEAD
        self._pending = bytearray()  # an incomplete head or line, carried to the next feed
        self._remaining = 0  # body or chunk bytes still to skip
        self.failure: str | None = None

    def feed(self, data: bytes) -> list[RequestHead]:
        """The requests whose heads complete within ``data`` (after earlier feeds)."""
        heads: list[RequestHead] = []
        pos, end = 0, len(data)
        while pos < end and self._state is not _State.FAILED:
            state = self._state
            if state is _State.BODY or state is _State.CHUNK_DATA:
                take = min(self._remaining, end - pos)
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    self._state = _State.HEAD if state is _State.BODY else _State.CHUNK_END
                continue
            if state is _State.HEAD:
                found, pos = self._until(data, pos, _HEAD_END, MAX_HEAD)
                if found is not None:
                    head = self._head(found)
                    if head is not None:
                        heads.append(head)
                continue
            found, pos = self._until(data, pos, _CRLF, MAX_LINE)
            if found is not None:
                self._line(state, found)
        return heads

    def _until(
        self, data: bytes, pos: int, terminator: bytes, limit: int
    ) -> tuple[bytes | None, int]:
        """What precedes ``terminator`` (None if it has not arrived yet) and where to go on."""
        if not self._pending:
            at = data.find(terminator, pos, pos + limit + len(terminator))
            if at >= 0:
                return data[pos:at], at + len(terminator)
            self._pending += data[pos : pos + limit + len(terminator)]
        else:
            # The terminator may straddle the two pieces: search from just before the seam.
            seam = len(self._pending)
            self._pending += data[pos : pos + limit + len(terminator)]
            at = self._pending.find(terminator, max(0, seam - len(terminator) + 1))
            if at >= 0:
                found = bytes(self._pending[:at])
                used = at + len(terminator) - seam  # bytes of ``data`` consumed
                self._pending.clear()
                return found, pos + used
        if len(self._pending) > limit:
            self._fail(f"no end of line or head within {limit:,} bytes")
        return None, len(data)

    def _head(self, raw: bytes) -> RequestHead | None:
        # RFC 9112 2.2: empty lines before a request line are to be ignored.
        raw = raw.lstrip(b"\r\n")
        if not raw:
            return None
        lines = raw.split(_CRLF)
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not _METHOD.match(parts[0]) or not parts[2].startswith(b"HTTP/1."):
            self._fail(f"not an HTTP/1.x request line: {lines[0][:80]!r}")
            return None
        length: int | None = None
        chunked = ranged = False
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon:
                self._fail(f"a header line without a colon: {line[:80]!r}")
                return None
            name = name.strip().lower()
            if name == b"content-length":
                try:
                    length = int(value.strip())
                except ValueError:
                    length = -1
                if length < 0:
                    self._fail(f"a bad Content-Length: {value.strip()[:40]!r}")
                    return None
            elif name == b"transfer-encoding":
                # The last coding decides the framing; with chunked, Content-Length is ignored.
                chunked = value.split(b",")[-1].strip().lower() == b"chunked"
            elif name == b"range":
                ranged = True
        if chunked:
            self._state = _State.CHUNK_SIZE
        elif length:
            self._state, self._remaining = _State.BODY, length
        method, target = parts[0].decode("ascii"), parts[1].decode("latin-1")
        return RequestHead(method, target, ranged)

    def _line(self, state: _State, line: bytes) -> None:
        if state is _State.CHUNK_SIZE:
            digits = line.partition(b";")[0].strip()  # chunk extensions follow a `;`
            try:
                size = int(digits, 16)
            except ValueError:
                size = -1
            if size < 0 or not digits:
                self._fail(f"a bad chunk size: {line[:40]!r}")
            elif size == 0:
                self._state = _State.TRAILERS
            else:
                self._state, self._remaining = _State.CHUNK_DATA, size
        elif state is _State.CHUNK_END:
            if line:
                self._fail("chunk data longer than its size")
            else:
                self._state = _State.CHUNK_SIZE
        elif state is _State.TRAILERS and not line:
            self._state = _State.HEAD  # the blank line ends the request

    def _fail(self, why: str) -> None:
        self._state = _State.FAILED
        self.failure = why
        self._pending.clear()
