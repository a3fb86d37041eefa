"""Advisory file locks (``flock``) that only ever save work, never guard correctness.

On file systems where ``flock`` silently does nothing (some network file systems)
every process simply believes it holds the lock; the cache stays correct because
every write is a private temp file renamed into place.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from pathlib import Path

_UNLOCKED = -1
_CLOCK_MARGIN = 1.0  # seconds: file times lag the wall clock by up to a tick


class FileLock:
    """An exclusive or shared ``flock`` on a lock file that is never deleted.

    Deleting a lock file that another process holds would let a third process lock
    a new file of the same name, so lock files stay; they are empty until a holder
    stamps one, and then their mtime says when a holder last finished (:meth:`stamp`).
    """

    def __init__(self, path: Path, *, shared: bool = False) -> None:
        self.path = path
        self.shared = shared
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _open(self) -> int:
        """A descriptor of the lock file, or -1 where none can be made: then go unlocked."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError:
            return _UNLOCKED

    def try_acquire(self) -> bool:
        """Take the lock if it is free right now."""
        if self._fd is not None:
            return True
        fd = self._open()
        if fd == _UNLOCKED:
            self._fd = fd
            return True
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except OSError:
            pass  # no flock here: proceed unlocked, correctness does not depend on it
        self._fd = fd
        return True

    def acquire(self) -> None:
        """Wait for the lock."""
        if self._fd is not None:
            return
        fd = self._open()
        if fd != _UNLOCKED:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX)
        self._fd = fd

    async def acquire_async(self, poll: float = 0.05) -> None:
        """Wait for the lock without blocking the event loop."""
        while not self.try_acquire():
            await asyncio.sleep(poll)

    def stamp(self) -> None:
        """Record on the lock file that its holder finished its work now: one byte
        written (a new lock file is empty) sets its mtime, which later holders compare
        with the time they looked at the cache."""
        if self._fd is not None and self._fd != _UNLOCKED:
            with contextlib.suppress(OSError):
                os.pwrite(self._fd, b"\n", 0)

    def stamped_since(self, when: float) -> bool:
        """Whether a holder may have finished its work after ``when`` (wall clock).

        File times come from a coarse clock (a tick behind), hence the margin; an
        unknown answer is yes: it only costs the caller a closer look."""
        if self._fd is None or self._fd == _UNLOCKED:
            return True
        try:
            st = os.fstat(self._fd)
        except OSError:
            return True
        return st.st_size > 0 and st.st_mtime >= when - _CLOCK_MARGIN

    def release(self) -> None:
        if self._fd is not None:
            if self._fd != _UNLOCKED:
                os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder_alive(path: Path) -> bool:
    """Whether some process holds a lock on ``path`` (a lock we can take is unheld)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False
