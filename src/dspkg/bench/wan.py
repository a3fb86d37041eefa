"""WAN emulator: a loopback TCP proxy that adds latency and a shared bandwidth cap.

Model: every chunk read from one side is stamped with its arrival time and queued; one
task per direction delivers it to the other side at ``arrival + rtt/2``, so a request and
its response together pay one ``rtt`` while later chunks keep being read (pipelined, not
stop-and-wait). Before a chunk is written it also takes tokens from one bucket per
direction shared by all connections, which caps the aggregate rate like a single
bottleneck link. A new connection's first client byte is held one extra ``rtt``, standing
in for the handshake the local accept skipped. Each queue is bounded (at least twice the
bandwidth-delay product); when it is full the proxy stops reading that side and TCP flow
control pushes back on the sender.

So the link behaves as if TCP windows were always large enough: no slow start, no loss,
only delay, rate and the faults injected with :meth:`WanEmulator.cut_connections`.

It also counts what crossed it: connections, bytes each way, and the HTTP/1.1 requests
in the client-to-server bytes (by method, and how many were ranged), so a benchmark
counts requests the same way whichever S3 server is behind it.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import ipaddress
import logging
import math
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self

from dspkg.bench.httpcount import RequestHead, RequestStream

_log = logging.getLogger(__name__)

_QUEUE_FLOOR = 4 * 1024 * 1024
_BURST_FLOOR = 64 * 1024
_BURST_SECONDS = 0.001
# The transport's own buffer stays small: the timed queue does the buffering, and a small
# buffer keeps the bytes counted as delivered close to what the peer has actually received.
_SINK_HIGH_WATER = 256 * 1024
_CUT_DRAIN_TIMEOUT = 2.0
_CUT_DRAIN_POLL = 0.001
_STOP_TIMEOUT = 10.0

_Close = Literal["close", "abort", "reset"]


@dataclass(frozen=True)
class WanConfig:
    """Properties of the emulated link.

    ``rtt_ms`` is the added round trip, half of it applied to each direction. ``mbit`` is
    the aggregate cap per direction in megabits per second (1e6 bits); 0 or ``inf`` means
    unlimited. With ``connect_rtt`` a new connection pays one round trip before its first
    byte flows, as a TCP handshake would.
    """

    rtt_ms: float = 30.0
    mbit: float = 1000.0
    connect_rtt: bool = True

    def __post_init__(self) -> None:
        # `not x >= 0` also rejects NaN.
        if not self.rtt_ms >= 0 or math.isinf(self.rtt_ms):
            raise ValueError(f"rtt_ms must be a finite number >= 0, got {self.rtt_ms!r}")
        if not self.mbit >= 0:
            raise ValueError(f"mbit must be >= 0 (0 or inf for unlimited), got {self.mbit!r}")

    @property
    def bytes_per_second(self) -> float | None:
        """The cap per direction in bytes per second, or None when unlimited."""
        if self.mbit == 0 or math.isinf(self.mbit):
            return None
        return self.mbit * 1e6 / 8


@dataclass(frozen=True)
class WanStats:
    """Counters since start or the last :meth:`WanEmulator.reset_stats`.

    Bytes count what was delivered to the other side, not what was read. Requests are
    the HTTP/1.1 requests clients sent (:mod:`dspkg.bench.httpcount`), by method;
    ``ranged_requests`` those with a Range header. A connection whose client bytes could
    not be framed as HTTP/1.1 counts in ``unparsed_connections`` and adds no requests
    after that point.
    """

    connections: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    connections_cut: int = 0
    requests: Mapping[str, int] = field(default_factory=dict)
    ranged_requests: int = 0
    unparsed_connections: int = 0

    @property
    def request_count(self) -> int:
        return sum(self.requests.values())


class _Counters:
    """Stats written by the loop thread and read by any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def add(self, *, connections: int = 0, up: int = 0, down: int = 0, cut: int = 0) -> None:
        with self._lock:
            self._connections += connections
            self._up += up
            self._down += down
            self._cut += cut

    def add_requests(self, heads: list[RequestHead]) -> None:
        with self._lock:
            for head in heads:
                self._requests[head.method] += 1
                self._ranged += head.ranged

    def add_unparsed(self) -> None:
        with self._lock:
            self._unparsed += 1

    def snapshot(self) -> WanStats:
        with self._lock:
            return WanStats(
                self._connections,
                self._up,
                self._down,
                self._cut,
                dict(sorted(self._requests.items())),
                self._ranged,
                self._unparsed,
            )

    def reset(self) -> None:
        with self._lock:
            self._connections = self._up = self._down = self._cut = 0
            self._requests: collections.Counter[str] = collections.Counter()
            self._ranged = self._unparsed = 0


class _TokenBucket:
    """A token bucket that grants a reservation at once and lets the caller sleep off the debt.

    Reserving before sleeping serves connections in the order they asked, so parallel
    connections share the cap fairly without waking each other up to retry.
    """

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.burst = max(_BURST_FLOOR, int(rate * _BURST_SECONDS))
        self._tokens = float(self.burst)
        self._updated = now

    def reserve(self, n: int, now: float) -> float:
        """Take ``n`` tokens; return how long to wait before sending them."""
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        self._tokens -= n
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


@dataclass
class _CutPlan:
    after_bytes: int
    remaining: int


def _resolve(fut: asyncio.Future[bool], value: bool) -> None:
    if not fut.done():
        fut.set_result(value)


class _Link:
    """State shared by all connections: config, buckets, cut plan, stats, live objects."""

    def __init__(self, upstream: tuple[str, int], config: WanConfig) -> None:
        self.upstream = upstream
        self.counters = _Counters()
        self.connections: set[_Connection] = set()
        self.transports: set[asyncio.Transport] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.cut_plan: _CutPlan | None = None
        self.closing = False
        self._sleepers: set[asyncio.Future[bool]] = set()
        self.configure(config)

    def configure(self, config: WanConfig) -> None:
        self.config = config
        self.one_way = config.rtt_ms / 2000
        rate = config.bytes_per_second
        now = time.monotonic()
        self.bucket_up = None if rate is None else _TokenBucket(rate, now)
        self.bucket_down = None if rate is None else _TokenBucket(rate, now)
        bdp = 0 if rate is None else int(rate * config.rtt_ms / 1000)
        self.queue_limit = max(_QUEUE_FLOOR, 2 * bdp)
        # Waits computed under the old config (delays, token debts) are now wrong.
        for fut in self._sleepers:
            _resolve(fut, True)

    def arm_cut(self, after_bytes: int, count: int) -> None:
        self.cut_plan = _CutPlan(after_bytes, count) if count > 0 else None
        for conn in self.connections:
            conn.cut_base = conn.delivered_down

    def take_cut(self) -> None:
        plan = self.cut_plan
        if plan is not None:
            plan.remaining -= 1
            if plan.remaining <= 0:
                self.cut_plan = None
        self.counters.add(cut=1)

    async def sleep(self, delay: float) -> bool:
        """Sleep ``delay`` seconds; True if a config change cut the sleep short."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()
        handle = loop.call_later(delay, _resolve, fut, False)
        self._sleepers.add(fut)
        try:
            return await fut
        finally:
            handle.cancel()
            self._sleepers.discard(fut)

    def spawn(self, conn: _Connection, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        task = asyncio.get_running_loop().create_task(conn.guarded(work))
        self.tasks.add(task)
        conn.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        task.add_done_callback(conn.tasks.discard)

    async def shutdown(self) -> None:
        self.closing = True
        for conn in list(self.connections):
            conn.close("abort")
        for transport in list(self.transports):
            transport.abort()
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Let the transports run their connection_lost callbacks so the sockets close now.
        for _ in range(2):
            await asyncio.sleep(0)


class _Pipe:
    """One direction of a connection: a queue of time-stamped chunks and the task draining it."""

    def __init__(self, conn: _Connection, *, upstream_bound: bool) -> None:
        self._conn = conn
        self._link = conn.link
        self._upstream_bound = upstream_bound
        # None marks EOF; it travels through the queue so it is delayed like data.
        self._queue: collections.deque[tuple[float, bytes | None]] = collections.deque()
        self._offset = 0
        self._queued = 0
        self._source: asyncio.Transport | None = None
        self._source_paused = False
        self._sink: asyncio.Transport | None = None
        self._has_data = asyncio.Event()
        self._writable = asyncio.Event()

    def set_source(self, transport: asyncio.Transport) -> None:
        self._source = transport

    def set_sink(self, transport: asyncio.Transport) -> None:
        transport.set_write_buffer_limits(high=_SINK_HIGH_WATER)
        self._sink = transport
        self._writable.set()

    def pause_sink(self) -> None:
        self._writable.clear()

    def resume_sink(self) -> None:
        self._writable.set()

    def feed(self, data: bytes | None) -> None:
        arrival = time.monotonic()
        if self._upstream_bound:
            arrival = max(arrival, self._conn.ready_at)
            if data is not None:
                self._conn.count_requests(data)
        self._queue.append((arrival, data))
        self._has_data.set()
        if data is None:
            return
        self._queued += len(data)
        if self._queued >= self._link.queue_limit and not self._source_paused:
            self._source_paused = True
            if self._source is not None:
                self._source.pause_reading()

    async def run(self) -> None:
        link = self._link
        queue = self._queue
        while True:
            if not queue:
                self._has_data.clear()
                await self._has_data.wait()
                continue
            arrival, chunk = queue[0]
            wait = arrival + link.one_way - time.monotonic()
            if wait > 0:
                await link.sleep(wait)
                continue
            await self._writable.wait()
            sink = self._sink
            if sink is None or sink.is_closing():
                return
            if chunk is None:
                queue.popleft()
                sink.write_eof()
                self._conn.pipe_done()
                return
            n = len(chunk) - self._offset
            bucket = link.bucket_up if self._upstream_bound else link.bucket_down
            if bucket is not None:
                n = min(n, bucket.burst)
                delay = bucket.reserve(n, time.monotonic())
                if delay > 0 and await link.sleep(delay):
                    # Reconfigured: the old bucket went away with this reservation.
                    continue
            allowance = None if self._upstream_bound else self._conn.cut_allowance()
            if allowance is not None:
                if allowance == 0:
                    await self._conn.cut()
                    return
                n = min(n, allowance)
            self._write(sink, chunk, n)
            if allowance is not None and n == allowance:
                await self._conn.cut()
                return

    def _write(self, sink: asyncio.Transport, chunk: bytes, n: int) -> None:
        # Count first: the peer may see the bytes before this thread runs again.
        if self._upstream_bound:
            self._link.counters.add(up=n)
        else:
            self._conn.delivered_down += n
            self._link.counters.add(down=n)
        start = self._offset
        if start == 0 and n == len(chunk):
            sink.write(chunk)
        else:
            sink.write(memoryview(chunk)[start : start + n])
        if start + n == len(chunk):
            self._queue.popleft()
            self._offset = 0
        else:
            self._offset = start + n
        self._queued -= n
        if self._source_paused and self._queued <= self._link.queue_limit // 2:
            self._source_paused = False
            if self._source is not None:
                self._source.resume_reading()


def _close_transport(transport: asyncio.Transport, how: _Close) -> None:
    if how == "close":
        transport.close()
        return
    if how == "reset":
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Linger 0 makes close() send RST instead of FIN, like a dropped connection.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _unsent_bytes(transport: asyncio.Transport) -> int:
    """Bytes the kernel still holds for the peer (sent but unacknowledged, or unsent)."""
    if sys.platform != "linux":
        return 0
    import fcntl
    import termios

    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0
    try:
        out = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except OSError:
        return 0
    value: int = struct.unpack("i", out)[0]
    return value


class _Connection:
    """A client connection, its upstream connection, and the two pipes between them."""

    def __init__(self, link: _Link, client: asyncio.Transport) -> None:
        self.link = link
        self.client = client
        self.upstream: asyncio.Transport | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        rtt = link.config.rtt_ms / 1000 if link.config.connect_rtt else 0.0
        self.ready_at = time.monotonic() + rtt
        self.delivered_down = 0
        self.cut_base = 0
        self.up = _Pipe(self, upstream_bound=True)
        self.down = _Pipe(self, upstream_bound=False)
        self.up.set_source(client)
        self.down.set_sink(client)
        self._pipes_done = 0
        self._closed = False
        self._requests: RequestStream | None = RequestStream()

    def count_requests(self, data: bytes) -> None:
        """Count the requests in what the client sent (as it arrives, so a client that
        got its answers and exited has had every request counted)."""
        stream = self._requests
        if stream is None:
            return
        heads = stream.feed(data)
        if heads:
            self.link.counters.add_requests(heads)
        if stream.failure is not None:
            _log.debug("WAN emulator: no more requests counted on a connection: %s", stream.failure)
            self.link.counters.add_unparsed()
            self._requests = None

    def start(self) -> None:
        self.link.connections.add(self)
        self.link.counters.add(connections=1)
        self.link.spawn(self, self._connect)
        self.link.spawn(self, self.up.run)
        self.link.spawn(self, self.down.run)

    async def _connect(self) -> None:
        host, port = self.link.upstream
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: _Side(self.link, self), host, port)

    def attach_upstream(self, transport: asyncio.Transport) -> None:
        if self._closed:
            transport.abort()
            return
        self.upstream = transport
        self.down.set_source(transport)
        self.up.set_sink(transport)

    async def guarded(self, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        try:
            await work()
        except OSError:
            # Refused upstream, reset peer: a real network would break this connection too.
            self.close("reset")
        except Exception:
            _log.exception("WAN emulator: unexpected error, resetting one connection")
            self.close("reset")

    def cut_allowance(self) -> int | None:
        """Bytes this connection may still deliver downstream before a planned cut."""
        plan = self.link.cut_plan
        if plan is None:
            return None
        return max(0, plan.after_bytes - (self.delivered_down - self.cut_base))

    async def cut(self) -> None:
        self.link.take_cut()
        # Resetting at once would discard bytes still in the send buffers; wait until the
        # client's kernel has them so the client sees exactly the bytes counted.
        deadline = time.monotonic() + _CUT_DRAIN_TIMEOUT
        while time.monotonic() < deadline and not self.client.is_closing():
            if self.client.get_write_buffer_size() == 0 and _unsent_bytes(self.client) == 0:
                break
            await asyncio.sleep(_CUT_DRAIN_POLL)
        if not self.client.is_closing():
            _close_transport(self.client, "reset")
        self.close("close")

    def pipe_done(self) -> None:
        self._pipes_done += 1
        if self._pipes_done == 2:
            self.close("close")

    def close(self, how: _Close) -> None:
        if self._closed:
            return
        self._closed = True
        self.link.connections.discard(self)
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()
        for transport in (self.upstream, self.client):
            if transport is not None and not transport.is_closing():
                _close_transport(transport, how)


class _Side(asyncio.Protocol):
    """Protocol for either end; the client end creates the connection when accepted."""

    def __init__(self, link: _Link, conn: _Connection | None = None) -> None:
        self._link = link
        self._conn = conn
        self._transport: asyncio.Transport | None = None
        self._reader: _Pipe | None = None
        self._writer: _Pipe | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not isinstance(transport, asyncio.Transport):
            raise TypeError(f"expected a stream transport, got {transport!r}")
        if self._link.closing:
            transport.abort()
            return
        self._transport = transport
        self._link.transports.add(transport)
        if self._conn is None:
            conn = self._conn = _Connection(self._link, transport)
            self._reader, self._writer = conn.up, conn.down
            conn.start()
        else:
            self._reader, self._writer = self._conn.down, self._conn.up
            self._conn.attach_upstream(transport)

    def data_received(self, data: bytes) -> None:
        if self._reader is not None:
            self._reader.feed(data)

    def eof_received(self) -> bool:
        if self._reader is not None:
            self._reader.feed(None)
        # Keep the transport open: the other direction may still be sending (half-close).
        return True

    def pause_writing(self) -> None:
        if self._writer is not None:
            self._writer.pause_sink()

    def resume_writing(self) -> None:
        if self._writer is not None:
            self._writer.resume_sink()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._link.transports.discard(self._transport)
        if self._conn is not None:
            self._conn.close("close" if exc is None else "reset")


def _check_loopback(host: str) -> None:
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(
            f"listen_host must be a loopback IP address such as 127.0.0.1, got {host!r}; "
            "the emulator must never be reachable from other machines"
        )


class WanEmulator:
    """A TCP proxy on loopback that forwards to ``upstream`` through an emulated WAN link.

    It runs its own asyncio loop in a daemon thread; every method may be called from any
    other thread. Use it as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        upstream: tuple[str, int],
        config: WanConfig = WanConfig(),
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        _check_loopback(listen_host)
        self._listen = (listen_host, listen_port)
        self._link = _Link(upstream, config)
        # Serialises start/stop against each other and against calls into the loop.
        self._lifecycle = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._address: tuple[str, int] | None = None

    def start(self) -> tuple[str, int]:
        """Start listening; return the (host, port) clients should connect to."""
        with self._lifecycle:
            if self._address is not None:
                return self._address
            started: concurrent.futures.Future[tuple[str, int]] = concurrent.futures.Future()
            thread = threading.Thread(
                target=self._run, args=(started,), name="dspkg-wan", daemon=True
            )
            thread.start()
            try:
                address = started.result()
            except BaseException:
                thread.join()
                raise
            self._thread = thread
            self._address = address
            return address

    def _run(self, started: concurrent.futures.Future[tuple[str, int]]) -> None:
        asyncio.run(self._serve(started))

    async def _serve(self, started: concurrent.futures.Future[tuple[str, int]]) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        self._link.closing = False
        host, port = self._listen
        try:
            server = await loop.create_server(lambda: _Side(self._link), host, port)
        except Exception as exc:
            started.set_exception(exc)
            return
        self._loop, self._stop_event = loop, stop
        sockname = server.sockets[0].getsockname()
        started.set_result((str(sockname[0]), int(sockname[1])))
        try:
            await stop.wait()
        finally:
            server.close()
            await self._link.shutdown()
            await server.wait_closed()

    def stop(self) -> None:
        """Close the listener and every connection; safe to call more than once."""
        with self._lifecycle:
            thread, loop, stop = self._thread, self._loop, self._stop_event
            self._thread = self._loop = self._stop_event = None
            self._address = None
            if thread is None or loop is None or stop is None:
                return
            loop.call_soon_threadsafe(stop.set)
            thread.join(_STOP_TIMEOUT)

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) the proxy listens on; only while started."""
        if self._address is None:
            raise RuntimeError("WanEmulator is not started; call start() or use it in a with block")
        return self._address

    @property
    def url(self) -> str:
        """``http://host:port`` of the proxy, for an S3 endpoint setting."""
        host, port = self.address
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}"

    @property
    def config(self) -> WanConfig:
        return self._link.config

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stats(self) -> WanStats:
        return self._link.counters.snapshot()

    def reset_stats(self) -> None:
        self._link.counters.reset()

    def set_config(self, config: WanConfig) -> None:
        """Change latency and bandwidth now, including for bytes already queued."""
        self._in_loop(lambda: self._link.configure(config))

    def cut_connections(self, after_bytes: int, count: int = 1) -> None:
        """Reset the next ``count`` connections that deliver ``after_bytes`` more bytes downstream.

        Bytes count per connection from this call (or from the connection's start, if
        later). The client gets a TCP RST after ``after_bytes`` bytes reached it (exactly,
        on Linux; elsewhere up to one socket buffer fewer) and the upstream side is
        closed. A connection is only cut while it has data to deliver, so idle
        keep-alive connections are left alone. ``count=0`` cancels a pending plan.
        """
        if after_bytes < 0 or count < 0:
            raise ValueError(f"after_bytes and count must be >= 0, got {after_bytes}, {count}")
        self._in_loop(lambda: self._link.arm_cut(after_bytes, count))

    def _in_loop(self, fn: Callable[[], None]) -> None:
        # The loop thread owns the link's state; run fn there and wait, so the change is in
        # effect when the call returns.
        with self._lifecycle:
            loop = self._loop
            if loop is None:
                fn()
                return
            done: concurrent.futures.Future[None] = concurrent.futures.Future()

            def call() -> None:
                try:
                    fn()
                except BaseException as exc:
                    done.set_exception(exc)
                else:
                    done.set_result(None)

            loop.call_soon_threadsafe(call)
            done.result(timeout=_STOP_TIMEOUT)
