"""The mount's READ of cached files in C (``_readtable.c``), and what the Python side owes it.

A pass over a version reads every file once, one FUSE READ each. Served in Python, a
READ cost a ctypes callback (a thread state, the interpreter's lock, mfusepy's wrappers)
besides the few system calls it needs: most of the mount's CPU. With the compiled table
libfuse calls C for every READ; C serves a file whose object is in the cache, untouched
(the same fingerprint as :func:`dspkg.cache.fingerprint_ok`, checked on the descriptor it
reads), and hands everything else to the Python read it replaced (fetch, verify, re-hash,
refuse: :meth:`dspkg.mount.VersionFS.read`). Read-ahead hears of the files C served in
batches: C queues each file read from its first byte and wakes the event loop through
an eventfd once per batch; :meth:`FastRead.start` drains that queue on the loop.

Without the compiled module (or with ``DSPKG_SPEEDUPS=0``) every READ is the Python one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import Callable
from typing import Any

from dspkg.cache import CTIME_SLACK_NS, Cache
from dspkg.manifest import Manifest

# How long read-ahead may hear late of reads served in C: the loop then drains them in
# one batch (a window is megabytes of files ahead; a round trip is tens of milliseconds).
BATCH_SECONDS = 0.005


@functools.cache
def compiled() -> Any | None:
    """``dspkg._readtable``, or None where it was not built."""
    try:
        from dspkg import _readtable  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _readtable


class FastRead:
    """One version's table for the compiled READ, active while the mount serves."""

    def __init__(self, table: Any) -> None:
        self.table = table
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = False

    @classmethod
    def build(cls, manifest: Manifest, cache: Cache) -> FastRead | None:
        """The table of ``manifest``'s files in ``cache``, or None without the compiled
        module (or for paths it cannot take: then every READ is the Python one)."""
        module = compiled()
        if module is None:
            return None
        try:
            table = module.Table(str(cache.objects), manifest.files, CTIME_SLACK_NS)
        except (ValueError, UnicodeError, OSError):
            return None
        return cls(table)

    def start(self, loop: asyncio.AbstractEventLoop, on_reads: Callable[[list[int]], None]) -> None:
        """Serve READs from the table; ``on_reads(indexes)`` runs on ``loop`` with the files
        C served from their first byte, in batches. Call on the loop's thread."""
        self._loop = loop
        fd = self.table.notes_fd
        waiting = False

        def woken() -> None:
            # Gather a batch: reads keep coming while the loop waits (a file served in C
            # costs tens of microseconds; a wake of the loop more than that). C signals
            # only when its queue was empty, so nothing is lost between here and drain.
            nonlocal waiting
            with contextlib.suppress(BlockingIOError):
                os.read(fd, 8)
            if not waiting:
                waiting = True
                loop.call_later(BATCH_SECONDS, drain)

        def drain() -> None:
            nonlocal waiting
            waiting = False
            indexes = self.table.drain()
            if indexes and not self._stopped:
                on_reads(indexes)

        loop.add_reader(fd, woken)
        self.table.activate()

    def stop(self) -> None:
        """Stop serving (only once libfuse stopped calling: the mount ended)."""
        self.table.deactivate()
        self._stopped = True
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._loop.remove_reader, self.table.notes_fd)

    def refuse(self, index: int) -> None:
        """Every later READ of file ``index`` goes to Python (which answers EIO)."""
        self.table.refuse(index)

    @property
    def figures(self) -> dict[str, int]:
        """READs served in C, passed to Python, read-ahead notes dropped."""
        figures: dict[str, int] = self.table.figures
        return figures


def install(ops: Any, python_read: Callable[..., int]) -> Any | None:
    """Make libfuse call the compiled READ (in ``ops``, mfusepy's ``fuse_operations``
    about to be handed to libfuse), which passes what it does not serve to
    ``python_read`` (libfuse's read arguments). Return the ctypes callback made of
    ``python_read``, which the caller keeps alive while the mount runs; None without the
    compiled module (``ops`` is left as it was)."""
    module = compiled()
    if module is None:
        return None
    import ctypes

    prototype = dict(type(ops)._fields_)["read"]
    fallback = prototype(python_read)
    module.set_fallback(ctypes.cast(fallback, ctypes.c_void_p).value)
    ops.read = prototype(module.read_address())
    return fallback
