"""The optional compiled helpers (``_speedups.c``): whether they are here, and loading them.

``pip install`` compiles them where a C compiler and the Python headers exist; without
them dspkg runs the same steps in Python (``fetcher._RangeExtractor`` for cold pulls,
``sources._read_small`` for publishes), more slowly.
``DSPKG_SPEEDUPS=0`` turns it off (the test suite runs both).

The checks of manifest records (``_checks.c``, :func:`compiled_checks`) are used wherever
the module is built: they only ever answer "all clear" and leave every refusal, and its
message, to the Python checks, to which property tests hold them (tests/test_checks.py).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any, Protocol


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


class Checks(Protocol):
    """``_speedups``' checks of manifest records over whole columns (see ``_checks.c``)."""

    def paths_ok(self, paths: list[Any], /) -> bool: ...

    def records_ok(
        self,
        paths: list[Any],
        sizes: list[Any],
        shas: list[Any],
        indexes: list[Any],
        offsets: list[Any],
        /,
    ) -> bool: ...

    def layout_add(
        self,
        package_sizes: list[int],
        package_entries: list[int],
        ends: list[int],
        used: list[int],
        paths: list[Any],
        sizes: list[Any],
        indexes: list[Any],
        offsets: list[Any],
        /,
    ) -> bool: ...

    def tree_clear(self, paths: list[Any], fold: Callable[[str], str], /) -> bool: ...

    def loads_columns(self, data: bytes, /) -> dict[str, Any] | None: ...

    def file_entries(
        self,
        cls: type[Any],
        paths: list[Any],
        sizes: list[Any],
        shas: list[Any],
        indexes: list[Any],
        offsets: list[Any],
        /,
    ) -> tuple[Any, ...]: ...


@functools.cache
def compiled_checks() -> Checks | None:
    """``_speedups`` with its manifest checks, or None when it is not built here (they need
    no library: only the module)."""
    try:
        from dspkg import _speedups  # type: ignore[attr-defined]
    except ImportError:
        return None
    module: Checks = _speedups
    return module


class Compiled(Protocol):
    """``_speedups``' readers of small files (see ``_speedups.c``)."""

    def read_files(
        self, paths: list[bytes], sizes: list[int], /
    ) -> list[tuple[bytes, str, int] | None]: ...

    def pack_files(
        self, prefix: bytes, paths: list[bytes], sizes: list[int], names: list[bytes], /
    ) -> tuple[bytes | None, list[tuple[str, int] | None]]: ...


@functools.cache
def compiled_reader() -> Compiled | None:
    """``_speedups`` with its readers ready to use, or None when it cannot be used here."""
    if extractor_type() is None:
        return None
    from dspkg import _speedups  # type: ignore[attr-defined]

    path = _loaded_library("libz", "zlib", "z")
    if path is None:
        return None
    try:
        _speedups.load_zlib(path)
    except OSError:
        return None
    module: Compiled = _speedups
    return module


@functools.cache
def compiled_module() -> Any | None:
    """``_speedups`` itself, for its helpers that need no library (``link_cached``), or
    None when it was not built."""
    try:
        from dspkg import _speedups  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _speedups


def bad_entry_type() -> type[Exception]:
    from dspkg import _speedups  # type: ignore[attr-defined]

    error: type[Exception] = _speedups.BadEntry
    return error


def _libcrypto() -> str | None:
    """The OpenSSL library this interpreter's hashlib uses (so both hash alike)."""
    return _loaded_library("libcrypto", "_hashlib", "crypto")


def _loaded_library(stem: str, module: str, name: str) -> str | None:
    """The shared library ``stem`` that importing ``module`` loads into this process,
    else the one the system would find by ``name``."""
    importlib.import_module(module)
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                path = line.rstrip("\n").partition("/")[2]
                if path and path.rpartition("/")[2].startswith(stem + "."):
                    return "/" + path
    except OSError:
        pass
    import ctypes.util

    return ctypes.util.find_library(name)
