"""What a benchmark run produces: rows (one per method measured), targets, the whole report.

Plain data with explicit ``to_json``; ``report`` turns it into tables. A row that could
not run (s5cmd missing) is kept with ``skipped`` set, so the output never silently loses a
baseline.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

# 2: rows and targets carry their disk state; targets their rounds, spread and the goal
# they answer.
SCHEMA_VERSION = 2

Op = Literal[">=", "<=", "<"]
Status = Literal["PASS", "FAIL", "SKIP"]
# The disk a row ran on: "rested" (nothing deleted for minutes) or "deleted" (within a
# minute of deleting the previous round's trees; ext4 creates files slowly then).
DiskState = Literal["rested", "deleted"]
DISK_STATES: tuple[DiskState, ...] = ("rested", "deleted")
STATE_LABELS: dict[DiskState, str] = {"rested": "disk rested", "deleted": "after deletions"}


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
    state: DiskState = "rested"

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
            "state": self.state,
            **({"extra": self.extra} if self.extra else {}),
        }


@dataclass(frozen=True)
class Target:
    """A performance target as a ratio (or size) measured in this run, and its verdict.

    With several rounds, ``value`` is the median of the per-round values in ``rounds``
    (each computed from the rows of one round, which ran side by side) and the verdict
    is the median's; :attr:`spread` shows how far the rounds disagreed.
    """

    key: str
    label: str
    value: float | None
    op: Op
    threshold: float
    unit: str  # "x", "%", "s", "MB" or "files": how value and threshold are shown
    skipped: str | None = None
    answers: str = ""  # the goal this target checks, e.g. "issue 13"
    state: DiskState = "rested"
    rounds: tuple[float | None, ...] = ()
    # Judge the worst round rather than the median (a memory limit must hold every time).
    worst_round: bool = False

    @property
    def status(self) -> Status:
        if self.value is None or self.skipped is not None:
            return "SKIP"
        return "PASS" if meets(self.value, self.op, self.threshold) else "FAIL"

    @property
    def spread(self) -> tuple[float, float] | None:
        """(min, max) of the per-round values, when there were at least two."""
        values = [v for v in self.rounds if v is not None]
        if len(values) < 2:
            return None
        return min(values), max(values)

    def to_json(self) -> dict[str, Any]:
        spread = self.spread
        return {
            "key": self.key,
            "label": self.label,
            "value": _round(self.value, 4),
            "op": self.op,
            "threshold": self.threshold,
            "unit": self.unit,
            "status": self.status,
            "skipped": self.skipped,
            "answers": self.answers,
            "state": self.state,
            "rounds": [_round(v, 4) for v in self.rounds],
            "spread": None if spread is None else [_round(v, 4) for v in spread],
            "rounds_passing": sum(
                v is not None and meets(v, self.op, self.threshold) for v in self.rounds
            ),
        }


def meets(value: float, op: Op, threshold: float) -> bool:
    if op == ">=":
        return value >= threshold
    if op == "<=":
        return value <= threshold
    return value < threshold


def at_scale(target: Target, files: int, min_files: int) -> Target:
    """``target`` marked SKIP (its value still shown) when the run is smaller than the
    size its goal was set for: fixed costs (an interpreter start) weigh more below it."""
    if files >= min_files or target.skipped is not None:
        return target
    return replace(target, skipped=f"the goal is set for {min_files:,} files or more")


def combine_targets(per_round: Sequence[Sequence[Target]]) -> list[Target]:
    """One target per key from several rounds: the median value decides (the worst one
    for a ``worst_round`` target), every round's value is kept (``rounds``) for the
    spread. Keys keep the first round's order."""
    if not per_round:
        return []
    by_key: dict[str, list[Target]] = {}
    for targets in per_round:
        for t in targets:
            by_key.setdefault(t.key, []).append(t)
    combined = []
    for targets in by_key.values():
        values = tuple(t.value for t in targets)
        present = [v for v in values if v is not None]
        skipped = next((t.skipped for t in targets if t.skipped is not None), None)
        value = statistics.median(present) if present else None
        if present and targets[0].worst_round:
            value = min(present) if targets[0].op == ">=" else max(present)
        combined.append(
            replace(
                targets[0],
                value=value,
                skipped=skipped,
                rounds=values,
            )
        )
    return combined


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

    def row(self, key: str, state: DiskState = "rested") -> Row:
        for r in self.rows:
            if r.key == key and r.state == state:
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
    for a memory target. Every round's time is kept in ``extra["round_seconds"]``, and
    beside it each round's CPU seconds, the client's (``round_cpu_seconds``) and, where
    the row was measured against a store, its server's (``round_server_cpu_seconds``): a
    slow round then shows whether the test server, not the method, was busy.
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
        extra = {**middle.extra, "round_seconds": [s.seconds for s in samples]}
        if any(s.cpu_seconds is not None for s in samples):
            extra["round_cpu_seconds"] = [s.cpu_seconds for s in samples]
        if any(s.extra.get("server_cpu_seconds") is not None for s in samples):
            extra["round_server_cpu_seconds"] = [s.extra.get("server_cpu_seconds") for s in samples]
        combined.append(replace(middle, peak_rss_kib=max(rss) if rss else None, extra=extra))
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
