"""The request counter on crafted client-to-server streams: keep-alive, pipelining, bodies
by Content-Length and chunked, every way of splitting the bytes across reads."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from dspkg.bench.httpcount import MAX_HEAD, RequestHead, RequestStream

# Bytes a body may hold that look like the framing the counter searches for: a body must
# be skipped by its length, never scanned.
_TRAPS = [b"\r\n\r\n", b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n", b"0\r\n\r\n", b"\r\n"]


@dataclass(frozen=True)
class _Request:
    method: str
    target: str
    body: bytes
    chunks: tuple[int, ...] | None  # chunk sizes when sent chunked (they cover the body)
    ranged: bool
    extra_headers: tuple[tuple[str, str], ...]

    def encode(self) -> bytes:
        headers = [("Host", "127.0.0.1:9000"), *self.extra_headers]
        if self.ranged:
            headers.append(("Range", "bytes=0-99"))
        if self.chunks is not None:
            headers.append(("Transfer-Encoding", "chunked"))
        elif self.body:
            headers.append(("Content-Length", str(len(self.body))))
        head = f"{self.method} {self.target} HTTP/1.1\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
        out = head.encode()
        if self.chunks is None:
            return out + self.body
        at = 0
        for size in self.chunks:
            out += f"{size:x};ext=1\r\n".encode() + self.body[at : at + size] + b"\r\n"
            at += size
        return out + b"0\r\nx-amz-checksum: abc\r\n\r\n"

    @property
    def head(self) -> RequestHead:
        return RequestHead(self.method, self.target, self.ranged)


@st.composite
def _requests(draw: st.DrawFn) -> _Request:
    method = draw(st.sampled_from(["GET", "PUT", "POST", "HEAD", "DELETE"]))
    target = "/bucket/" + draw(st.text("abcxyz/._-0123456789", min_size=1, max_size=30))
    pieces = draw(st.lists(st.sampled_from([*_TRAPS, b"data", b"\x00\xff" * 7]), max_size=6))
    body = b"".join(pieces) if method in ("PUT", "POST") else b""
    chunks = None
    if body and draw(st.booleans()):
        cuts = (
            sorted(draw(st.sets(st.integers(1, len(body) - 1), max_size=4)))
            if len(body) > 1
            else []
        )
        bounds = [0, *cuts, len(body)]
        chunks = tuple(b - a for a, b in itertools.pairwise(bounds))
    headers = draw(
        st.lists(
            st.sampled_from(
                [
                    ("Expect", "100-continue"),
                    ("x-amz-content-sha256", "UNSIGNED-PAYLOAD"),
                    ("Authorization", "AWS4-HMAC-SHA256 Credential=k/x, Signature=ab"),
                    ("content-length", "0") if not body else ("Accept", "*/*"),
                ]
            ),
            max_size=3,
            unique=True,
        )
    )
    ranged = method == "GET" and draw(st.booleans())
    return _Request(method, target, body, chunks, ranged, tuple(headers))


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted({c % (len(data) + 1) for c in cuts}), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def _count(pieces: list[bytes]) -> tuple[list[RequestHead], RequestStream]:
    stream = RequestStream()
    heads: list[RequestHead] = []
    for piece in pieces:
        heads += stream.feed(piece)
    return heads, stream


@given(st.lists(_requests(), min_size=1, max_size=8), st.lists(st.integers(0, 10_000)))
def test_every_request_is_counted_however_the_bytes_are_split(
    requests: list[_Request], cuts: list[int]
) -> None:
    data = b"".join(r.encode() for r in requests)
    heads, stream = _count(_split(data, cuts))
    assert stream.failure is None
    assert heads == [r.head for r in requests]


@given(st.lists(_requests(), min_size=1, max_size=5))
def test_one_byte_at_a_time(requests: list[_Request]) -> None:
    data = b"".join(r.encode() for r in requests)
    heads, stream = _count([data[i : i + 1] for i in range(len(data))])
    assert stream.failure is None
    assert heads == [r.head for r in requests]


def test_pipelined_requests_in_one_read_and_a_head_split_at_its_blank_line() -> None:
    get = b"GET /b/k HTTP/1.1\r\nHost: h\r\nRange: bytes=5-9\r\n\r\n"
    put = b"PUT /b/k2 HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nGET "
    stream = RequestStream()
    assert stream.feed(get + put + get[:-1]) == [
        RequestHead("GET", "/b/k", True),
        RequestHead("PUT", "/b/k2", False),
    ]
    assert stream.feed(b"\n") == [RequestHead("GET", "/b/k", True)]
    assert stream.failure is None


def test_empty_lines_before_a_request_are_ignored() -> None:
    stream = RequestStream()
    assert stream.feed(b"\r\n\r\nHEAD /b HTTP/1.1\r\nHost: h\r\n\r\n") == [
        RequestHead("HEAD", "/b", False)
    ]
    assert stream.failure is None


def test_a_large_body_is_skipped_without_being_held() -> None:
    stream = RequestStream()
    size = 50 * 1024 * 1024
    assert stream.feed(f"PUT /b/big HTTP/1.1\r\nContent-Length: {size}\r\n\r\n".encode()) == [
        RequestHead("PUT", "/b/big", False)
    ]
    block = b"\r\n\r\n" * (1024 * 1024 // 4)
    for _ in range(size // len(block)):
        assert stream.feed(block) == []
    assert stream.feed(b"DELETE /b/big HTTP/1.1\r\n\r\n") == [
        RequestHead("DELETE", "/b/big", False)
    ]


def test_chunked_wins_over_content_length() -> None:
    # RFC 9112 6.3: with Transfer-Encoding chunked, a Content-Length is ignored.
    stream = RequestStream()
    data = (
        b"PUT /b/k HTTP/1.1\r\nContent-Length: 100\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\nGET /b/k HTTP/1.1\r\n\r\n"
    )
    assert [h.method for h in stream.feed(data)] == ["PUT", "GET"]


def test_what_cannot_be_framed_stops_the_count_and_says_why() -> None:
    cases = {
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n": "not an HTTP/1.x request line",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n": "not an HTTP/1.x request line",
        b"GET / HTTP/1.1\r\nno colon here\r\n\r\n": "a header line without a colon",
        b"PUT / HTTP/1.1\r\nContent-Length: -5\r\n\r\n": "a bad Content-Length",
        b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n": "a bad chunk size",
        b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n": "longer than its size",
    }
    for data, why in cases.items():
        stream = RequestStream()
        stream.feed(data)
        assert stream.failure is not None and why in stream.failure, (data, stream.failure)
        # Nothing after a failure is guessed at.
        assert stream.feed(b"GET / HTTP/1.1\r\n\r\n") == []


def test_a_head_without_an_end_is_given_up_on() -> None:
    stream = RequestStream()
    stream.feed(b"GET / HTTP/1.1\r\n")
    for _ in range(MAX_HEAD // 1000 + 2):
        stream.feed(b"X-Long: " + b"a" * 990 + b"\r\n")
    assert stream.failure is not None and "within 65,536 bytes" in stream.failure
