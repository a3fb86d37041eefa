"""Measured child processes: wall time, peak RSS and CPU of each command the benchmark runs.

Every method runs as a separate process, timed from spawn to exit, with its peak RSS and
CPU time from ``wait4`` (the kernel's figures for that child and whatever it waited for).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dspkg.errors import DspkgError


class BenchError(DspkgError):
    """The benchmark could not run or a measured command failed."""


@dataclass(frozen=True)
class Sample:
    """One finished child process: wall time, peak RSS (KiB), CPU seconds and its output."""

    seconds: float
    peak_rss_kib: int
    cpu_seconds: float
    returncode: int
    stdout: str
    stderr: str


class Spawner:
    """Runs commands to completion from a small helper process and measures each one.

    See ``_spawner.py`` for why the helper exists: it keeps the benchmark's own memory
    out of every command's peak RSS.
    """

    def __init__(self, scratch: Path) -> None:
        self._scratch = scratch
        self._count = 0
        self._proc = subprocess.Popen(
            [sys.executable, "-I", "-S", str(Path(__file__).with_name("_spawner.py"))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def close(self) -> None:
        proc = self._proc
        if proc.poll() is None:
            assert proc.stdin is not None
            with contextlib.suppress(OSError):
                proc.stdin.close()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def _reply(self) -> dict[str, Any]:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise BenchError("the benchmark's process spawner exited unexpectedly")
        doc: dict[str, Any] = json.loads(line)
        return doc

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        check: bool = True,
    ) -> Sample:
        """Run ``argv`` to completion; with ``check`` a non-zero exit raises."""
        settle_disk()
        self._count += 1
        out = self._scratch / f"cmd-{self._count}.out"
        err = self._scratch / f"cmd-{self._count}.err"
        request = {
            "argv": list(argv),
            "env": dict(os.environ if env is None else env),
            "cwd": None if cwd is None else str(cwd),
            "stdout": str(out),
            "stderr": str(err),
        }
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(request) + "\n")
        self._proc.stdin.flush()
        started = self._reply()
        if "error" in started:
            raise BenchError(f"cannot start {argv[0]}: {started['error']}")
        try:
            done = self._reply()
        except BaseException:
            # Interrupted: do not leave the measured command running.
            with contextlib.suppress(OSError):
                os.kill(started["pid"], signal.SIGKILL)
            raise
        sample = Sample(
            seconds=done["seconds"],
            peak_rss_kib=done["maxrss"],
            cpu_seconds=done["utime"] + done["stime"],
            returncode=os.waitstatus_to_exitcode(done["status"]),
            stdout=out.read_text(errors="replace"),
            stderr=err.read_text(errors="replace"),
        )
        out.unlink()
        err.unlink()
        if check and sample.returncode != 0:
            tail = " | ".join(sample.stderr.strip().splitlines()[-3:])
            raise BenchError(f"{' '.join(argv[:4])} ... exited with {sample.returncode}: {tail}")
        return sample


def settle_disk(pause: float = 0.5) -> None:
    """Write back what earlier rows left dirty, so every row starts from the same disk state.

    On a small VM the writeback of one row's files (and the discards of the files it
    removed) otherwise lands in the next row's time, and rows swapped their order of
    speed from one round to the next.
    """
    os.sync()
    time.sleep(pause)


def dspkg_argv(*args: str) -> list[str]:
    """The dspkg command line as a user runs it, in this interpreter."""
    return [sys.executable, "-m", "dspkg.cli", *args]
