"""The optional compiled extractor (``_speedups.c``): whether it is here, and loading it.

``pip install`` compiles it where a C compiler and the Python headers exist; without
them dspkg runs the same steps in Python (``fetcher._RangeExtractor``), more slowly.
``DSPKG_SPEEDUPS=0`` turns it off (the test suite runs both).
"""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def extractor_type() -> Any | None:
    """``_speedups.Extractor``, ready to use, or None when it cannot be used here."""
    try:
        from dspkg import _speedups  # type: ignore[attr-defined]
    except ImportError:
        return None
    path = _libcrypto()
    if path is None:
        return None
    try:
        _speedups.load_crypto(path)
    except OSError:
        return None
    return _speedups.Extractor


def bad_entry_type() -> type[Exception]:
    from dspkg import _speedups  # type: ignore[attr-defined]

    error: type[Exception] = _speedups.BadEntry
    return error


def _libcrypto() -> str | None:
    """The OpenSSL library this interpreter's hashlib uses (so both hash alike)."""
    import _hashlib  # noqa: F401  (loads libcrypto into the process)

    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                path = line.rstrip("\n").partition("/")[2]
                if path and "libcrypto" in path.rpartition("/")[2]:
                    return "/" + path
    except OSError:
        pass
    import ctypes.util

    return ctypes.util.find_library("crypto")
