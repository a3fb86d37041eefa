"""Progress reporting: a callback object that does nothing by default.

Operations take a :class:`Progress` and call ``log`` for lines the user should
always see (such as the package upload lines) and ``start``/``advance``/``done``
for the live counters that only a terminal shows.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from dspkg.sizes import format_size


class Progress:
    """Silent progress: the default, and the base for other reporters."""

    def log(self, line: str) -> None:
        """A line the user should see (e.g. package uploads)."""

    def warn(self, line: str) -> None:
        """A warning the user should see."""

    def start(self, phase: str, files: int, nbytes: int) -> None:
        """A phase with known totals begins."""

    def advance(self, files: int = 0, nbytes: int = 0) -> None:
        """Some work of the current phase is done."""

    def done(self) -> None:
        """The current phase ended."""


class LinePrinter(Progress):
    """Prints log lines and warnings, nothing live (for pipes and logs)."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr

    def log(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def warn(self, line: str) -> None:
        print(f"dspkg: warning: {line}", file=self.err, flush=True)


class TerminalProgress(LinePrinter):
    """Adds a live status line on a terminal: files, bytes, rate and ETA."""

    def __init__(
        self, out: TextIO | None = None, err: TextIO | None = None, interval: float = 0.1
    ) -> None:
        super().__init__(out, err)
        self.interval = interval
        self._phase = ""
        self._files = self._bytes = self._total_files = self._total_bytes = 0
        self._started = self._shown = 0.0
        self._width = 0

    def log(self, line: str) -> None:
        self._clear()
        super().log(line)
        self._render(force=True)

    def warn(self, line: str) -> None:
        self._clear()
        super().warn(line)
        self._render(force=True)

    def start(self, phase: str, files: int, nbytes: int) -> None:
        self._phase = phase
        self._files = self._bytes = 0
        self._total_files, self._total_bytes = files, nbytes
        self._started = time.monotonic()
        self._shown = 0.0
        self._render(force=True)

    def advance(self, files: int = 0, nbytes: int = 0) -> None:
        self._files += files
        self._bytes += nbytes
        self._render()

    def done(self) -> None:
        if self._phase:
            self._render(force=True)
            self._clear()
        self._phase = ""

    def _clear(self) -> None:
        if self._width:
            self.err.write("\r" + " " * self._width + "\r")
            self.err.flush()
            self._width = 0

    def _render(self, *, force: bool = False) -> None:
        if not self._phase:
            return
        now = time.monotonic()
        if not force and now - self._shown < self.interval:
            return
        self._shown = now
        elapsed = max(now - self._started, 1e-6)
        rate = self._bytes / elapsed
        eta = ""
        if rate > 0 and self._total_bytes > self._bytes:
            eta = f", ETA {_clock((self._total_bytes - self._bytes) / rate)}"
        text = (
            f"{self._phase}: {self._files:,}/{self._total_files:,} files, "
            f"{format_size(self._bytes)}/{format_size(self._total_bytes)}, "
            f"{format_size(rate)}/s{eta}"
        )
        pad = max(self._width - len(text), 0)
        self.err.write("\r" + text + " " * pad)
        self.err.flush()
        self._width = len(text)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}:{seconds % 60:02d}"
