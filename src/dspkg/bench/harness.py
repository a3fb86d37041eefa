"""The test bed: an S3 server (SeaweedFS or moto) behind the WAN emulator, and what a
run asked of it.

Requests, bytes and connections are counted by the WAN emulator, which every client
talks to: the same count whichever server is behind it. The server's CPU time comes
from /proc, so a row can say whether the server set its pace.
"""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import obstore
from obstore.store import S3Store

from dspkg.bench.processes import Sample, Spawner
from dspkg.bench.servers import LocalServer, S3Credentials, start_moto, start_seaweedfs
from dspkg.bench.settings import SERVER_NAMES, ServerKind
from dspkg.bench.wan import WanConfig, WanEmulator
from dspkg.layout import PACKAGE_SUFFIX

BUCKET = "dspkg-bench"
CREDENTIALS = S3Credentials("bench", "bench-secret")
_UNLIMITED = WanConfig(rtt_ms=0.0, mbit=0.0, connect_rtt=False)

Say = Callable[[str], None]


@dataclass(frozen=True)
class StoreSample:
    """A :class:`Sample` plus what the store and the link saw during it."""

    sample: Sample
    requests: Mapping[str, int]  # by method
    ranged_requests: int  # requests with a Range header
    bytes_down: int
    bytes_up: int
    connections: int
    server_cpu_seconds: float | None  # the server's CPU time during the run
    emulator_cpu_seconds: float  # this process's: in effect the WAN emulator's thread
    unparsed_connections: int = 0  # connections whose requests could not be counted

    @property
    def request_count(self) -> int:
        return sum(self.requests.values())


class S3Lab:
    """An S3 server in a subprocess behind the WAN emulator, all on 127.0.0.1.

    Use as a context manager: both are always stopped on the way out, Ctrl-C and
    SIGTERM included (``dspkg bench`` turns SIGTERM into KeyboardInterrupt). The
    server's data and log live under ``work``.
    """

    def __init__(
        self,
        work: Path,
        link: WanConfig,
        say: Say = lambda line: None,
        server: ServerKind = "seaweedfs",
    ) -> None:
        self.work = work
        self.link = link
        self.say = say
        self.server_kind: ServerKind = server
        self._server: LocalServer | None = None
        self._wan: WanEmulator | None = None
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
        if self.server_kind == "seaweedfs":
            self.say("starting SeaweedFS (weed mini)")
            data = self.work / "seaweedfs"
            self._server = start_seaweedfs(
                BUCKET, CREDENTIALS, data, log=self.work / "seaweedfs.log"
            )
        else:
            self._server = start_moto(BUCKET, CREDENTIALS, log=self.work / "moto.log")
        self._wan = WanEmulator(("127.0.0.1", self._server.port), self.link)
        self._wan.start()
        self.say(
            f"{self.server_name} S3 on 127.0.0.1:{self._server.port} "
            f"(pid {self._server.process.pid}), WAN emulator at {self.url} "
            f"({describe_link(self.link)})"
        )

    def close(self) -> None:
        if self._spawner is not None:
            self._spawner.close()
            self._spawner = None
        if self._wan is not None:
            self._wan.stop()
            self._wan = None
        if self._server is not None:
            self._server.stop()
            self._server = None

    @property
    def server_name(self) -> str:
        return SERVER_NAMES[self.server_kind]

    @property
    def server_cores(self) -> int:
        """How many CPUs the server can keep busy: moto's request handling holds the GIL
        (one), SeaweedFS is Go and uses them all."""
        if self.server_kind == "moto":
            return 1
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1

    @property
    def server_process(self) -> subprocess.Popen[bytes]:
        assert self._server is not None
        return self._server.process

    @property
    def url(self) -> str:
        """The S3 endpoint clients use: the emulator, never the server directly."""
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

    def warm_server(self, prefix: str) -> int:
        """Read every package under ``prefix`` once, straight from the server (not through
        the emulator: not timed, not counted); return the bytes read.

        SeaweedFS keeps the chunks it last served in memory. A row that reads a package
        after other rows have pushed its chunks out (the per-file rows read 3 GB of small
        objects) finds the server filling that cache, faulting in fresh memory: 3-4 CPU-s
        of the server's system time on two cores, in the first seconds of the row (measured
        with perf: ``clear_page_erms`` under ``do_anonymous_page``). S3 itself puts no such
        cost on the client's machine, and it falls on whichever competing row happens to
        come first, so the rows that read packages start from a server that has just
        served them.
        """
        assert self._server is not None
        store = S3Store(
            BUCKET,
            endpoint=f"http://127.0.0.1:{self._server.port}",
            access_key_id=CREDENTIALS.access_key_id,
            secret_access_key=CREDENTIALS.secret_access_key,
            region=CREDENTIALS.region,
            client_options={"allow_http": True},
        )
        total = 0
        for batch in obstore.list(store, prefix=prefix):
            for meta in batch:
                if meta["path"].endswith(PACKAGE_SUFFIX):
                    for chunk in obstore.get(store, meta["path"]).stream():
                        total += len(chunk)
        self.say(f"warmed {self.server_name}: read its packages ({total:,} bytes) directly")
        return total

    def measure(
        self, argv: Sequence[str], env: Mapping[str, str], *, cwd: Path | None = None
    ) -> StoreSample:
        """Run ``argv`` like :meth:`run` and count what it asked of the store."""
        assert self._wan is not None and self._server is not None
        self._wan.reset_stats()
        # The client, the server and the emulator share the CPUs; their CPU times show
        # which of the three a run was waiting for.
        server_pid = self._server.process.pid
        server_before = _process_cpu(server_pid)
        own_before = _own_cpu()
        sample = self.run(argv, env=env, cwd=cwd)
        own_after = _own_cpu()
        server_after = _process_cpu(server_pid)
        # Requests are counted as the client sends them, so once it has exited (having
        # had its answers) every one of them is in.
        stats = self._wan.stats()
        server = None
        if server_before is not None and server_after is not None:
            server = server_after - server_before
        return StoreSample(
            sample=sample,
            requests=stats.requests,
            ranged_requests=stats.ranged_requests,
            bytes_down=stats.bytes_down,
            bytes_up=stats.bytes_up,
            connections=stats.connections,
            server_cpu_seconds=server,
            emulator_cpu_seconds=own_after - own_before,
            unparsed_connections=stats.unparsed_connections,
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


def describe_link(link: WanConfig) -> str:
    rate = "unlimited" if link.bytes_per_second is None else f"{link.mbit:g} Mbit/s"
    return f"{link.rtt_ms:g} ms RTT, {rate}"
