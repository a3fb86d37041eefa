"""The process's memory allocator, where it keeps memory a pull no longer uses.

glibc's malloc gives each thread that allocates an arena of its own (up to eight per
core) and keeps what is freed there for reuse. A pull allocates from several threads at
once (the disk threads, shard decoding, the store client's buffers), so a pull of a
million files in batches measured its resident memory creeping up batch after batch
although every batch's objects were freed (300,000 files: 135 MB between batches at
first, 196 MB at the end; 76 to 88 MB with one arena and a trim after each batch).
:func:`limit_arenas` (the ``dspkg`` program calls it first) and :func:`trim` (the
puller, between batches) keep it flat. Both do nothing where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_ARENA_MAX = -8  # mallopt parameter (malloc.h)
ARENAS = 2  # the main arena and one for every other thread: measured flat, and no slower


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 (present in glibc alone)
        libc.mallopt  # noqa: B018
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def limit_arenas(arenas: int = ARENAS) -> None:
    """At most ``arenas`` malloc arenas for the whole process (call before threads start)."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(M_ARENA_MAX, arenas)


def trim() -> None:
    """Give the memory malloc keeps free back to the system (every arena)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
