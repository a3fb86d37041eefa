"""What the pull and publish scenarios share: turning samples into rows, command lines."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from dspkg.bench.data import count_files
from dspkg.bench.floors import network_floor
from dspkg.bench.harness import BUCKET, S3Lab, StoreSample
from dspkg.bench.processes import BenchError, Sample
from dspkg.bench.results import STATE_LABELS, Row

Direction = Literal["down", "up"]
# The share of the CPUs the server can use (one for moto, whose request handling holds
# the GIL; all for SeaweedFS) above which a row measured the server, not the method.
SERVER_BOUND = 0.6
# The share of all CPUs the client, the server and the emulator kept busy together above
# which a row measured the machine they share, when the test bed (server and emulator)
# used at least half of that CPU time.
MACHINE_BOUND = 0.85
# Issue 13: a cold pull and an S3 publish at least this many times faster than s5cmd
# moving the same files one by one.
PER_FILE_GOAL = 10.0


def store_row(
    key: str,
    method: str,
    files: int,
    measured: StoreSample,
    direction: Direction,
    extra: dict[str, Any] | None = None,
) -> Row:
    s = measured.sample
    return Row(
        key=key,
        method=method,
        files=files,
        seconds=s.seconds,
        requests=measured.request_count,
        wire_bytes=measured.bytes_down if direction == "down" else measured.bytes_up,
        peak_rss_kib=s.peak_rss_kib,
        cpu_seconds=s.cpu_seconds,
        extra={
            "requests_by_method": dict(sorted(measured.requests.items())),
            "ranged_requests": measured.ranged_requests,
            "connections": measured.connections,
            "unparsed_connections": measured.unparsed_connections,
            "server_cpu_seconds": _round3(measured.server_cpu_seconds),
            "emulator_cpu_seconds": _round3(measured.emulator_cpu_seconds),
            **(extra or {}),
        },
    )


def testbed_facts(rows: Sequence[Row], lab: S3Lab) -> dict[str, Any]:
    """Figures about the test bed itself, and notes where it, not the method, set the pace."""
    server = lab.server_name
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    notes = bound_rows(rows, server, lab.server_cores, cpus)
    closing = [
        r
        for r in rows
        if r.requests and r.requests >= 100 and r.extra.get("connections", 0) >= 0.9 * r.requests
    ]
    if closing:
        notes.append(
            f"{server} closed the connection after (almost) every response in "
            f"{len(closing)} row(s), so each request also paid a TCP handshake round trip, "
            "which real S3 with keep-alive would not"
        )
    unparsed = sum(r.extra.get("unparsed_connections", 0) for r in rows)
    if unparsed:
        notes.append(
            f"{unparsed} connection(s) could not be read as HTTP/1.1 by the WAN emulator; "
            "their requests after that point are not counted"
        )
    return {
        "server": server,
        "rss_floor_mb": round(lab.rss_floor_kib * 1024 / 1e6, 1),
        "notes": notes,
    }


def bound_rows(rows: Sequence[Row], server: str, cores: int, cpus: int) -> list[str]:
    """Notes for the rows the test bed, not the method, set the pace of: the server alone
    busy on the ``cores`` it can use, or the client, the server and the emulator together
    filling the machine's ``cpus`` with the bed's share at least half."""
    notes = []
    for row in rows:
        cpu = row.extra.get("server_cpu_seconds")
        if cpu is None or not row.seconds:
            continue
        where = "" if row.state == "rested" else f" ({STATE_LABELS[row.state]})"
        busy = cpu / (row.seconds * cores)
        if busy >= SERVER_BOUND:
            notes.append(
                f"{row.method}{where}: {server} was busy {busy:.0%} of the time "
                f"({cpu:.1f} CPU s on {cores} CPU{'s' if cores > 1 else ''} it can use, "
                f"{row.requests:,} requests); the row is bound by the test server, not by "
                "the link or the method, and real S3 would serve it faster"
            )
            continue
        emulator = row.extra.get("emulator_cpu_seconds") or 0.0
        client = row.cpu_seconds or 0.0
        total = client + cpu + emulator
        if total >= MACHINE_BOUND * row.seconds * cpus and cpu + emulator >= total / 2:
            notes.append(
                f"{row.method}{where}: the client, {server} and the WAN emulator kept the "
                f"{cpus} CPUs {total / (row.seconds * cpus):.0%} busy ({client:.1f} + "
                f"{cpu:.1f} + {emulator:.1f} CPU s), more than half of it the test bed's; "
                "the row is bound by the machine the bed shares with the method, and would "
                "run faster against a remote S3"
            )
    return notes


def floor_row(
    lab: S3Lab,
    key: str,
    method: str,
    files: int,
    command: Literal["get", "put"],
    objects: Sequence[tuple[str, int]],
) -> Row:
    """A download (``get``) or upload (``put``) floor: ``objects`` (key in the bucket,
    size) moved through the link by ``python -m dspkg.bench._drain``, which keeps and
    reads nothing; its bytes are checked."""
    pairs = [f"{k}:{size}" for k, size in objects]
    argv = [sys.executable, "-m", "dspkg.bench._drain", command, BUCKET, *pairs]
    measured = lab.measure(argv, lab.env())
    moved = json.loads(measured.sample.stdout)["bytes"]
    expected = sum(size for _, size in objects)
    if moved != expected:
        raise BenchError(f"{method}: moved {moved:,} bytes of {expected:,}")
    return store_row(key, method, files, measured, "down" if command == "get" else "up")


def reach_note(
    per_file: Row, floor: Row, goal: float, action: str, mbit: float = 0.0
) -> str | None:
    """A note when ``goal`` times faster than a per-file row asks ``action`` (a cold pull,
    a publish) to beat the floor of the same bytes through the same link: no client could
    meet that goal on this bed (None when one could). With the link's rate (``mbit``), the
    note also says when the goal asks for less than the floor's bytes take at that rate."""
    if not per_file.seconds or not floor.seconds:
        return None
    needed = per_file.seconds / goal
    if needed >= floor.seconds:
        return None
    link = network_floor(floor.wire_bytes or 0, mbit)
    beyond_link = (
        f", and less than the {link:.2f} s they take at the link's full rate"
        if needed < link
        else ""
    )
    return (
        f"{goal:g}x {per_file.method} ({per_file.seconds:.1f} s) needs {action} of at most "
        f"{needed:.2f} s, less than the {floor.seconds:.2f} s this server and link took to "
        f"move the packages' bytes alone ({floor.method}){beyond_link}: no client could "
        "meet that goal on this test bed"
    )


def local_row(key: str, method: str, files: int, *samples: Sample) -> Row:
    """A row for local work (no store): times and CPU add up, peak RSS is the largest."""
    return Row(
        key=key,
        method=method,
        files=files,
        seconds=sum(s.seconds for s in samples),
        requests=0,
        wire_bytes=0,
        peak_rss_kib=max(s.peak_rss_kib for s in samples),
        cpu_seconds=sum(s.cpu_seconds for s in samples),
    )


def dspkg_figures(sample: Sample) -> dict[str, Any]:
    """The ``--json`` object a dspkg command printed."""
    try:
        doc: dict[str, Any] = json.loads(sample.stdout)
    except json.JSONDecodeError as exc:
        raise BenchError(f"dspkg printed no JSON object ({exc}): {sample.stdout[:200]!r}") from None
    return doc


def check_tree(dest: Path, files: int, nbytes: int, what: str) -> None:
    """Fail the run when a method did not produce the whole tree: its time would be a lie."""
    found, found_bytes = count_files(dest)
    if (found, found_bytes) != (files, nbytes):
        raise BenchError(
            f"{what} left {found:,} files ({found_bytes:,} bytes) in {dest}, "
            f"expected {files:,} ({nbytes:,} bytes)"
        )


def s5cmd_argv(s5cmd: Path, lab: S3Lab, *args: str) -> list[str]:
    # --log error: s5cmd otherwise prints one line per object, which is not the work
    # being compared.
    return [str(s5cmd), "--endpoint-url", lab.url, "--log", "error", *args]


def s3_url(*parts: str) -> str:
    return "s3://" + "/".join((BUCKET, *parts))


def _round3(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
