"""The test bed: moto's S3 server behind the WAN emulator, and what a run asked of it.

Requests are counted from moto's log, where werkzeug writes one line per request: the
count between two marks is what a measurement asked of the store.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from dspkg.bench.processes import Sample, Spawner
from dspkg.bench.servers import LocalServer, S3Credentials, start_moto
from dspkg.bench.wan import WanConfig, WanEmulator

BUCKET = "dspkg-bench"
CREDENTIALS = S3Credentials("bench", "bench")
# werkzeug's access line: `127.0.0.1 - - [date] "GET /path HTTP/1.1" 200 -`, the request
# part wrapped in ANSI colour codes (werkzeug colours even when logging to a file).
_REQUEST_LINE = re.compile(rb'"(?:\x1b\[[0-9;]*m)*([A-Z]+) \S+ HTTP/\d\.\d')
_UNLIMITED = WanConfig(rtt_ms=0.0, mbit=0.0, connect_rtt=False)
_LOG_SETTLE_POLL = 0.02
_LOG_SETTLE_QUIET = 3  # polls without growth before a count is final
_LOG_SETTLE_MAX = 5.0

Say = Callable[[str], None]


class RequestLog:
    """Counts request lines that moto appends to its log, from one mark to the next."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._offset = 0
        self._partial = b""

    def _read_new(self) -> bytes:
        with self._path.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        self._offset += len(data)
        return data

    def take(self) -> Counter[str]:
        """Requests by method logged since the last call, once the log has stopped growing.

        moto writes a line after it sent the response, so the client can exit a moment
        before its last lines land; waiting for a quiet log catches them.
        """
        chunks = [self._partial]
        quiet = 0
        deadline = time.monotonic() + _LOG_SETTLE_MAX
        while quiet < _LOG_SETTLE_QUIET and time.monotonic() < deadline:
            data = self._read_new()
            if data:
                chunks.append(data)
                quiet = 0
            else:
                quiet += 1
            time.sleep(_LOG_SETTLE_POLL)
        text = b"".join(chunks)
        complete, _, self._partial = text.rpartition(b"\n")
        return Counter(m.group(1).decode() for m in _REQUEST_LINE.finditer(complete))


@dataclass(frozen=True)
class StoreSample:
    """A :class:`Sample` plus what the store and the link saw during it."""

    sample: Sample
    requests: Counter[str]
    bytes_down: int
    bytes_up: int
    connections: int
    server_cpu_seconds: float | None  # moto's CPU time during the run
    emulator_cpu_seconds: float  # this process's: in effect the WAN emulator's thread

    @property
    def request_count(self) -> int:
        return sum(self.requests.values())


class S3Lab:
    """moto's S3 server in a subprocess behind the WAN emulator, all on 127.0.0.1.

    Use as a context manager: both are always stopped on the way out, Ctrl-C included.
    ``work`` receives moto's log.
    """

    def __init__(self, work: Path, link: WanConfig, say: Say = lambda line: None) -> None:
        self.work = work
        self.link = link
        self.say = say
        self._moto: LocalServer | None = None
        self._wan: WanEmulator | None = None
        self._log: RequestLog | None = None
        self._spawner: Spawner | None = None
        self.rss_floor_kib = 0

    def __enter__(self) -> Self:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _start(self) -> None:
        scratch = self.work / "spawn"
        scratch.mkdir(parents=True, exist_ok=True)
        self._spawner = Spawner(scratch)
        # What any command reports at least: the spawner's own memory, inherited at exec.
        self.rss_floor_kib = self.run(["true"]).peak_rss_kib
        log_path = self.work / "moto.log"
        self._moto = start_moto(BUCKET, CREDENTIALS, log=log_path)
        self._log = RequestLog(log_path)
        self._wan = WanEmulator(("127.0.0.1", self._moto.port), self.link)
        self._wan.start()
        self._log.take()
        self.say(
            f"moto S3 on 127.0.0.1:{self._moto.port}, WAN emulator at {self.url} "
            f"({_describe(self.link)})"
        )

    def close(self) -> None:
        if self._spawner is not None:
            self._spawner.close()
            self._spawner = None
        if self._wan is not None:
            self._wan.stop()
            self._wan = None
        if self._moto is not None:
            self._moto.stop()
            self._moto = None

    @property
    def url(self) -> str:
        """The S3 endpoint clients use: the emulator, never moto directly."""
        assert self._wan is not None
        return self._wan.url

    def env(self, *, store: str | None = None, cache: Path | None = None) -> dict[str, str]:
        """A minimal environment for a child: credentials, endpoint, dspkg's store and cache."""
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "PYTHONPATH")}
        env.update(CREDENTIALS.env())
        env["AWS_ENDPOINT_URL"] = self.url
        if store is not None:
            env["DSPKG_STORE"] = store
        if cache is not None:
            env["DSPKG_CACHE"] = str(cache)
        return env

    @contextlib.contextmanager
    def unthrottled(self) -> Iterator[None]:
        """No added latency or cap inside the block: setup uploads are not measured."""
        assert self._wan is not None
        self._wan.set_config(_UNLIMITED)
        try:
            yield
        finally:
            self._wan.set_config(self.link)

    def run(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> Sample:
        """Run ``argv`` to completion and measure its time, peak RSS and CPU."""
        assert self._spawner is not None
        return self._spawner.run(argv, env=env, cwd=cwd)

    def measure(
        self, argv: Sequence[str], env: Mapping[str, str], *, cwd: Path | None = None
    ) -> StoreSample:
        """Run ``argv`` like :meth:`run` and count what it asked of the store."""
        assert self._wan is not None and self._log is not None
        assert self._moto is not None
        self._log.take()  # anything earlier belongs to someone else
        self._wan.reset_stats()
        # The client, moto and the emulator share the CPUs; their CPU times show which
        # of the three a run was waiting for.
        server_before = _process_cpu(self._moto.process.pid)
        own_before = _own_cpu()
        sample = self.run(argv, env=env, cwd=cwd)
        own_after = _own_cpu()
        server_after = _process_cpu(self._moto.process.pid)
        stats = self._wan.stats()
        server = None
        if server_before is not None and server_after is not None:
            server = server_after - server_before
        return StoreSample(
            sample=sample,
            requests=self._log.take(),
            bytes_down=stats.bytes_down,
            bytes_up=stats.bytes_up,
            connections=stats.connections,
            server_cpu_seconds=server,
            emulator_cpu_seconds=own_after - own_before,
        )


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _process_cpu(pid: int) -> float | None:
    """CPU seconds of a running process, from /proc (None where there is no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the parenthesised name start at field 3 (state); utime and stime are
    # fields 14 and 15.
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _describe(link: WanConfig) -> str:
    rate = "unlimited" if link.bytes_per_second is None else f"{link.mbit:g} Mbit/s"
    return f"{link.rtt_ms:g} ms RTT, {rate}"
