"""Byte sizes and durations as people write and read them (pure)."""

from __future__ import annotations

import re

from dspkg.errors import InvalidArgument

_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")


def parse_size(text: str | int) -> int:
    """``"1GiB"`` -> 1073741824, ``"10MB"`` -> 10000000, ``"512"`` -> 512."""
    if isinstance(text, int):
        if text < 0:
            raise InvalidArgument(f"invalid size {text}: must not be negative")
        return text
    match = _SIZE.fullmatch(text)
    unit = match and _UNITS.get(match.group(2).lower())
    if not match or unit is None:
        raise InvalidArgument(
            f"invalid size {text!r}: use a number with an optional unit (KB, MB, GB, KiB, MiB, GiB)"
        )
    return int(float(match.group(1)) * unit)


def format_size(n: int | float) -> str:
    """Decimal units with one decimal: 1234567 -> ``"1.2 MB"``."""
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", re.IGNORECASE)


def parse_duration(text: str | float) -> float:
    """``"24h"`` -> 86400.0, ``"90m"`` -> 5400.0, ``"7d"``, ``"30s"``, ``"120"`` (seconds)."""
    if isinstance(text, int | float):
        if text < 0:
            raise InvalidArgument(f"invalid duration {text!r}: must not be negative")
        return float(text)
    match = _DURATION.fullmatch(text)
    if not match:
        raise InvalidArgument(
            f"invalid duration {text!r}: use a number with s, m, h, d or w (24h, 90m, 7d)"
        )
    return float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]


def format_duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"
