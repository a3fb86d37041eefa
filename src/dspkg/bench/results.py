"""What a benchmark run produces: rows (one per method measured), targets, the whole report.

Plain data with explicit ``to_json``; ``report`` turns it into tables. A row that could
not run (s5cmd missing) is kept with ``skipped`` set, so the output never silently loses a
baseline.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

SCHEMA_VERSION = 1

Op = Literal[">=", "<=", "<"]
Status = Literal["PASS", "FAIL", "SKIP"]


@dataclass(frozen=True)
class Row:
    """One method measured (or one computed floor).

    ``wire_bytes`` counts what crossed the emulated link in the direction that matters
    (down for pulls, up for publishes), HTTP headers included; ``requests`` counts the
    request lines in the S3 server's log during the measurement.
    """

    key: str
    method: str
    files: int
    seconds: float | None = None
    requests: int | None = None
    wire_bytes: int | None = None
    peak_rss_kib: int | None = None
    cpu_seconds: float | None = None
    skipped: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def files_per_second(self) -> float | None:
        if self.seconds is None or self.seconds <= 0:
            return None
        return self.files / self.seconds

    @property
    def peak_rss_mb(self) -> float | None:
        return None if self.peak_rss_kib is None else self.peak_rss_kib * 1024 / 1e6

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "method": self.method,
            "files": self.files,
            "seconds": _round(self.seconds, 4),
            "files_per_second": _round(self.files_per_second, 1),
            "requests": self.requests,
            "wire_bytes": self.wire_bytes,
            "peak_rss_mb": _round(self.peak_rss_mb, 1),
            "cpu_seconds": _round(self.cpu_seconds, 3),
            "skipped": self.skipped,
            **({"extra": self.extra} if self.extra else {}),
        }


@dataclass(frozen=True)
class Target:
    """A performance target as a ratio (or size) measured in this run, and its verdict."""

    key: str
    label: str
    value: float | None
    op: Op
    threshold: float
    unit: str  # "x", "%", "s" or "MB": how value and threshold are shown
    skipped: str | None = None

    @property
    def status(self) -> Status:
        if self.value is None or self.skipped is not None:
            return "SKIP"
        if self.op == ">=":
            ok = self.value >= self.threshold
        elif self.op == "<=":
            ok = self.value <= self.threshold
        else:
            ok = self.value < self.threshold
        return "PASS" if ok else "FAIL"

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "label": self.label,
            "value": _round(self.value, 4),
            "op": self.op,
            "threshold": self.threshold,
            "unit": self.unit,
            "status": self.status,
            "skipped": self.skipped,
        }


@dataclass(frozen=True)
class Outcome:
    """What a scenario measured; ``facts`` are figures about the run itself."""

    rows: tuple[Row, ...]
    targets: tuple[Target, ...]
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Report:
    mode: Literal["pull", "publish", "mount"]
    config: dict[str, Any]
    machine: dict[str, Any]
    rows: tuple[Row, ...]
    targets: tuple[Target, ...]
    started_at: str
    seconds: float
    facts: dict[str, Any] = field(default_factory=dict)

    def row(self, key: str) -> Row:
        for r in self.rows:
            if r.key == key:
                return r
        raise KeyError(key)

    @property
    def all_pass(self) -> bool:
        return all(t.status != "FAIL" for t in self.targets)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "mode": self.mode,
            "started_at": self.started_at,
            "seconds": _round(self.seconds, 2),
            "config": self.config,
            "machine": self.machine,
            "facts": self.facts,
            "rows": [r.to_json() for r in self.rows],
            "targets": [t.to_json() for t in self.targets],
            "all_pass": self.all_pass,
        }


def combine_rounds(rounds: Sequence[Mapping[str, Row]]) -> list[Row]:
    """One row per key from several rounds: the round with the median time stands for all.

    Taking a whole round (not a median per column) keeps each row's figures consistent
    with each other; only peak RSS is the largest of all rounds, the conservative figure
    for a memory target. Every round's time is kept in ``extra["round_seconds"]``.
    """
    if len(rounds) == 1:
        return list(rounds[0].values())
    combined = []
    for key in rounds[0]:
        samples = [r[key] for r in rounds]
        timed = sorted((s for s in samples if s.seconds is not None), key=_seconds)
        if not timed:
            combined.append(samples[0])
            continue
        middle = timed[(len(timed) - 1) // 2]
        rss = [s.peak_rss_kib for s in timed if s.peak_rss_kib is not None]
        combined.append(
            replace(
                middle,
                peak_rss_kib=max(rss) if rss else None,
                extra={**middle.extra, "round_seconds": [s.seconds for s in samples]},
            )
        )
    return combined


def _seconds(row: Row) -> float:
    return row.seconds or 0.0


def ratio(numerator: Row, denominator: Row) -> float | None:
    """``numerator.seconds / denominator.seconds``, or None when either is missing."""
    a, b = numerator.seconds, denominator.seconds
    if a is None or b is None or b <= 0:
        return None
    return a / b


def _round(value: float | None, digits: int) -> float | None:
    if value is None or math.isnan(value):
        return None
    return round(value, digits)
