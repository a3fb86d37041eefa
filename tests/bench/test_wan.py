"""Property checks of the WAN emulator with real sockets on 127.0.0.1.

No assertion reads a clock: CI is a busy 2-core VM. Latency and bandwidth show as the
order in which replies arrive (a reply through a slower link arrives after one sent
later through a faster link) and as byte counts; the margins between the links compared
are several-fold, so the order holds however busy the machine is.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import math
import random
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from dspkg.bench.wan import WanConfig, WanEmulator, WanStats

_BLOB = random.Random(0).randbytes(8 * 1024 * 1024)
_CHUNK = 256 * 1024  # the proxy's read size: how far a cut may overshoot
_TIMEOUT = 20.0

Handler = Callable[[socket.socket], None]


class _Upstream:
    """A threaded TCP server on 127.0.0.1 running ``handler`` for each connection."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        host, port = self._listener.getsockname()[:2]
        self.address: tuple[str, int] = (host, port)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self._acceptor.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(_TIMEOUT)
        with conn, contextlib.suppress(OSError):
            self._handler(conn)

    def close(self) -> None:
        self._stop.set()
        self._acceptor.join()
        self._listener.close()
        for thread in self._threads:
            thread.join(_TIMEOUT)


def _echo(conn: socket.socket) -> None:
    while data := conn.recv(_CHUNK):
        conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)


class _Source:
    """Answers each line ``N\\n`` with the first N bytes of ``_BLOB``, counting bytes sent."""

    def __init__(self) -> None:
        self.sent = 0

    def __call__(self, conn: socket.socket) -> None:
        with conn.makefile("rb") as lines:
            for line in lines:
                n = int(line)
                for start in range(0, n, _CHUNK):
                    end = min(n, start + _CHUNK)
                    conn.sendall(memoryview(_BLOB)[start:end])
                    self.sent += end - start


def _sink(conn: socket.socket) -> None:
    digest = hashlib.sha256()
    count = 0
    while data := conn.recv(_CHUNK):
        digest.update(data)
        count += len(data)
    conn.sendall(f"{count} {digest.hexdigest()}\n".encode())


@pytest.fixture
def stack() -> Iterator[contextlib.ExitStack]:
    with contextlib.ExitStack() as stack:
        yield stack


@pytest.fixture
def serve(stack: contextlib.ExitStack) -> Callable[[Handler], tuple[str, int]]:
    def serve(handler: Handler) -> tuple[str, int]:
        upstream = _Upstream(handler)
        stack.callback(upstream.close)
        return upstream.address

    return serve


@pytest.fixture
def emulate(stack: contextlib.ExitStack) -> Callable[..., WanEmulator]:
    def emulate(upstream: tuple[str, int], **config: Any) -> WanEmulator:
        emulator = WanEmulator(upstream, WanConfig(**config))
        # Registered after the upstream, so it stops first and the handlers see the close.
        stack.enter_context(emulator)
        return emulator

    return emulate


def _connect(emulator: WanEmulator) -> socket.socket:
    return socket.create_connection(emulator.address, timeout=_TIMEOUT)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        data = sock.recv(n - len(buf))
        if not data:
            raise EOFError(f"EOF after {len(buf)} of {n} bytes")
        buf += data
    return bytes(buf)


def _recv_until_closed(sock: socket.socket) -> tuple[bytes, OSError | None]:
    buf = bytearray()
    try:
        while data := sock.recv(_CHUNK):
            buf += data
    except OSError as exc:
        return bytes(buf), exc
    return bytes(buf), None


def _download(emulator: WanEmulator, n: int) -> bytes:
    with _connect(emulator) as sock:
        sock.sendall(b"%d\n" % n)
        return _recv_exactly(sock, n)


def _replies(expected: dict[socket.socket, int]) -> list[tuple[socket.socket, bytes]]:
    """Read every socket until its ``expected`` bytes are in: (socket, bytes), in the
    order they were complete."""
    received = {sock: bytearray() for sock in expected}
    done: list[tuple[socket.socket, bytes]] = []
    with selectors.DefaultSelector() as selector:
        for sock in expected:
            selector.register(sock, selectors.EVENT_READ, sock)
        while len(done) < len(expected):
            events = selector.select(timeout=_TIMEOUT)
            if not events:
                raise TimeoutError(f"{len(done)} of {len(expected)} replies within {_TIMEOUT} s")
            for key, _ in events:
                sock = key.data
                data = sock.recv(_CHUNK)
                if not data:
                    raise EOFError(f"EOF after {len(received[sock])} bytes")
                received[sock] += data
                if len(received[sock]) >= expected[sock]:
                    selector.unregister(sock)
                    done.append((sock, bytes(received[sock])))
    return done


def _order(expected: dict[socket.socket, int]) -> list[socket.socket]:
    return [sock for sock, _ in _replies(expected)]


def test_bytes_pass_through_unchanged_both_ways(
    serve: Callable[[Handler], tuple[str, int]], emulate: Callable[..., WanEmulator]
) -> None:
    emulator = emulate(serve(_echo), rtt_ms=2, mbit=0)
    payload = random.Random(1).randbytes(3 * 1024 * 1024 + 17)

    def send(sock: socket.socket) -> None:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)

    with _connect(emulator) as sock, concurrent.futures.ThreadPoolExecutor(1) as pool:
        sent = pool.submit(send, sock)
        # EOF only arrives if the half-close went up and came back down.
        received, error = _recv_until_closed(sock)
        sent.result()
    assert error is None
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()


def test_upload_passes_through_unchanged(
    serve: Callable[[Handler], tuple[str, int]], emulate: Callable[..., WanEmulator]
) -> None:
    emulator = emulate(serve(_sink), rtt_ms=2)
    payload = random.Random(2).randbytes(2 * 1024 * 1024)
    with _connect(emulator) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        reply, error = _recv_until_closed(sock)
    assert error is None
    assert reply.decode() == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}\n"


def _round_trip(sock: socket.socket) -> None:
    sock.sendall(b"ping")
    assert _recv_exactly(sock, 4) == b"ping"


def test_round_trip_pays_the_rtt(
    serve: Callable[[Handler], tuple[str, int]], emulate: Callable[..., WanEmulator]
) -> None:
    slow = emulate(serve(_echo), rtt_ms=500, connect_rtt=False)
    fast = emulate(serve(_echo), rtt_ms=0, connect_rtt=False)
    with _connect(slow) as through_slow, _connect(fast) as through_fast:
        for _ in range(2):  # the connection's first round trip and a later one
            through_slow.sendall(b"slow")
            through_fast.sendall(b"fast")
            replies = _replies({through_slow: 4, through_fast: 4})
            assert replies == [(through_fast, b"fast"), (through_slow, b"slow")]


def test_new_connection_pays_one_more_rtt(
    serve: Callable[[Handler], tuple[str, int]], emulate: Callable[..., WanEmulator]
) -> None:
    emulator = emulate(serve(_echo), rtt_ms=300, connect_rtt=True)
    with _connect(emulator) as warm:
        _round_trip(warm)  # pays its own handshake
        with _connect(emulator) as new:
            new.sendall(b"new!")
            warm.sendall(b"warm")
            # Sent first, but a handshake and a round trip behind the warm connection.
            assert _replies({new: 4, warm: 4}) == [(warm, b"warm"), (new, b"new!")]
    assert emulator.stats().connections == 2


def test_requests_are_pipelined(
    serve: Callable[[Handler], tuple[str, int]], emulate: Callable[..., WanEmulator]
) -> None:
    emulator = emulate(serve(_echo), rtt_ms=100, connect_rtt=False)
    marker = emulate(serve(_echo), rtt_ms=1000, connect_rtt=False)
    messages = [b"message %02d;" % i for i in range(20)]
    with _connect(emulator) as sock, _connect(marker) as mark:
        mark.sendall(b"mark")
        for message in messages:
            sock.sendall(message)
        # Pipelined, the 20 replies take one 100 ms round trip; one after another they
        # would take 20, twice the marker's single round trip.
        replies = _replies({sock: sum(map(len, messages)), mark: 4})
    assert replies == [(sock, b"".join(messages)), (mark, b"mark")]


def test_bandwidth_cap_on_one_connection(
    serve: Callable[[Handler], tuple[str, int]], emulate: Callable[..., WanEmulator]
) -> None:
    # 1 MB at 1 MB/s takes 1 s; the same through an uncapped link 300 ms away arrives
    # first, and would arrive last were the cap not applied.
    capped = emulate(serve(_Source()), rtt_ms=0, mbit=8, connect_rtt=False)
    distant = emulate(serve(_Source()), rtt_ms=300, mbit=0, connect_rtt=False)
    size = 1_000_000
    with _connect(capped) as slow, _connect(distant) as fast:
        slow.sendall(b"%d\n" % size)
        fast.sendall(b"%d\n" % size)
        replies = _replies({slow: size, fast: size})
    assert replies == [(fast, _BLOB[:size]), (slow, _BLOB[:size])]
    assert capped.stats().bytes_down == distant.stats().bytes_down == size


def test_bandwidth_cap_is_shared_by_parallel_connections(
    serve: Callable[[Handler], tuple[str, int]], emulate: Callable[..., WanEmulator]
) -> None:
    # Two downloads of 500 kB share one 1 MB/s link: both end after 1 s. One download
    # of 700 kB on a link of its own ends after 0.7 s; were the cap per connection, the
    # two would end after 0.5 s, first.
    shared = emulate(serve(_Source()), rtt_ms=0, mbit=8, connect_rtt=False)
    alone = emulate(serve(_Source()), rtt_ms=0, mbit=8, connect_rtt=False)
    with _connect(shared) as first, _connect(shared) as second, _connect(alone) as single:
        for sock, size in ((first, 500_000), (second, 500_000), (single, 700_000)):
            sock.sendall(b"%d\n" % size)
        replies = _replies({first: 500_000, second: 500_000, single: 700_000})
    assert replies[0] == (single, _BLOB[:700_000])
    assert {sock for sock, _ in replies[1:]} == {first, second}
    assert all(data == _BLOB[:500_000] for _, data in replies[1:])
    assert shared.stats().bytes_down == 1_000_000


def test_bandwidth_cap_applies_upstream(
    serve: Callable[[Handler], tuple[str, int]], emulate: Callable[..., WanEmulator]
) -> None:
    # As on the way down: 1 s for 1 MB at 1 MB/s against 300 ms for an uncapped link.
    capped = emulate(serve(_sink), rtt_ms=0, mbit=8, connect_rtt=False)
    distant = emulate(serve(_sink), rtt_ms=300, mbit=0, connect_rtt=False)
    payload = _BLOB[:1_000_000]
    reply = f"{len(payload)} {hashlib.sha256(payload).hexdigest()}\n".encode()
    with _connect(capped) as slow, _connect(distant) as fast:
        for sock in (slow, fast):
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        assert _replies({slow: len(reply), fast: len(reply)}) == [(fast, reply), (slow, reply)]
    assert capped.stats().bytes_up == len(payload)


def test_cut_resets_connections_after_the_given_bytes(
    serve: Callable[[Handler], tuple[str, int]], emulate: Callable[..., WanEmulator]
) -> None:
    emulator = emulate(serve(_Source()), rtt_ms=0, connect_rtt=False)
    emulator.cut_connections(1_000_000, count=2)
    for _ in range(2):
        with _connect(emulator) as sock:
            sock.sendall(b"%d\n" % 4_000_000)
            received, error = _recv_until_closed(sock)
        assert isinstance(error, ConnectionResetError)
        assert 1_000_000 <= len(received) <= 1_000_000 + _CHUNK
        assert received == _BLOB[: len(received)]
    assert _download(emulator, 4_000_000) == _BLOB[:4_000_000]
    assert emulator.stats().connections_cut == 2


def test_cut_counts_bytes_from_the_call(
    serve: Callable[[Handler], tuple[str, int]], emulate: Callable[..., WanEmulator]
) -> None:
    emulator = emulate(serve(_Source()), rtt_ms=0, connect_rtt=False)
    with _connect(emulator) as sock:
        sock.sendall(b"300000\n")
        _recv_exactly(sock, 300_000)
        emulator.cut_connections(100_000)
        sock.sendall(b"300000\n")
        received, error = _recv_until_closed(sock)
    assert isinstance(error, ConnectionResetError)
    assert 100_000 <= len(received) <= 100_000 + _CHUNK


def test_set_config_applies_to_bytes_already_queued(
    serve: Callable[[Handler], tuple[str, int]], emulate: Callable[..., WanEmulator]
) -> None:
    # At 0.1 Mbit/s this download would take about 160 s.
    emulator = emulate(serve(_Source()), rtt_ms=0, mbit=0.1, connect_rtt=False)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        download = pool.submit(_download, emulator, 2_000_000)
        deadline = time.monotonic() + _TIMEOUT  # a guard against a hang, not a bound
        while emulator.stats().bytes_down == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert 0 < emulator.stats().bytes_down < 2_000_000
        assert not download.done()
        emulator.set_config(WanConfig(rtt_ms=0, mbit=math.inf))
        assert download.result(timeout=_TIMEOUT) == _BLOB[:2_000_000]
    assert emulator.stats().bytes_down == 2_000_000


def test_set_config_changes_latency(
    serve: Callable[[Handler], tuple[str, int]], emulate: Callable[..., WanEmulator]
) -> None:
    emulator = emulate(serve(_echo), rtt_ms=0, connect_rtt=False)
    reference = emulate(serve(_echo), rtt_ms=0, connect_rtt=False)
    with _connect(emulator) as sock, _connect(reference) as other:
        _round_trip(sock)
        emulator.set_config(WanConfig(rtt_ms=500, connect_rtt=False))
        assert emulator.config.rtt_ms == 500
        sock.sendall(b"late")
        other.sendall(b"ref!")
        assert _order({sock: 4, other: 4}) == [other, sock]


def test_buffering_is_bounded_when_the_client_does_not_read(
    serve: Callable[[Handler], tuple[str, int]], emulate: Callable[..., WanEmulator]
) -> None:
    source = _Source()
    emulator = emulate(serve(source), rtt_ms=0, connect_rtt=False)
    with _connect(emulator) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        # 200 MB would be through in well under a second if nothing pushed back.
        sock.sendall(b"".join(b"%d\n" % len(_BLOB) for _ in range(25)))
        time.sleep(0.5)
        plateau = source.sent
        time.sleep(0.3)
        assert source.sent == plateau
    # Kernel socket buffers on both sides of the proxy hold part of this.
    assert plateau < 80 * 1024 * 1024


def test_upstream_connect_failure_closes_the_client(
    emulate: Callable[..., WanEmulator],
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as unused:
        dead = unused.getsockname()[:2]
    emulator = emulate(dead, rtt_ms=0, connect_rtt=False)
    for _ in range(2):
        received = b""
        # The proxy resets the client, which may happen before connect() even returns.
        with contextlib.suppress(ConnectionError), _connect(emulator) as sock:
            sock.sendall(b"hello")
            received, _ = _recv_until_closed(sock)
        assert received == b""
    assert emulator.stats().connections == 2


def test_stats_count_connections_and_bytes(
    serve: Callable[[Handler], tuple[str, int]], emulate: Callable[..., WanEmulator]
) -> None:
    emulator = emulate(serve(_echo), rtt_ms=0, connect_rtt=False)
    assert emulator.stats() == WanStats()
    for size in (1000, 2000):
        with _connect(emulator) as sock:
            sock.sendall(b"x" * size)
            _recv_exactly(sock, size)
    assert emulator.stats() == WanStats(connections=2, bytes_up=3000, bytes_down=3000)
    emulator.reset_stats()
    assert emulator.stats() == WanStats()


def test_stop_is_idempotent_and_frees_the_port(serve: Callable[[Handler], tuple[str, int]]) -> None:
    emulator = WanEmulator(serve(_echo), WanConfig(rtt_ms=0))
    host, port = emulator.start()
    assert emulator.url == f"http://127.0.0.1:{port}"
    with _connect(emulator) as sock:
        sock.sendall(b"x")
        assert _recv_exactly(sock, 1) == b"x"
        emulator.stop()
        emulator.stop()
        received, _ = _recv_until_closed(sock)
    assert received == b""
    with pytest.raises(ConnectionRefusedError, match="Connection refused"):
        socket.create_connection((host, port), timeout=_TIMEOUT).close()
    with WanEmulator(serve(_echo), listen_port=port) as again:
        assert again.address == (host, port)


def test_url_needs_a_started_emulator() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        _ = WanEmulator(("127.0.0.1", 9)).url


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "localhost", "::"])
def test_listens_on_loopback_only(host: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        WanEmulator(("127.0.0.1", 9), listen_host=host)


@pytest.mark.parametrize(
    "config", [{"rtt_ms": -1.0}, {"rtt_ms": math.nan}, {"rtt_ms": math.inf}, {"mbit": -1.0}]
)
def test_config_rejects_invalid_values(config: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be"):
        WanConfig(**config)


def test_config_unlimited_bandwidth() -> None:
    assert WanConfig(mbit=0).bytes_per_second is None
    assert WanConfig(mbit=math.inf).bytes_per_second is None
    assert WanConfig(mbit=80).bytes_per_second == 10_000_000
