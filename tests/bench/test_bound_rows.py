"""Which rows the test bed, not the method, set the pace of (pure)."""

from __future__ import annotations

from dspkg.bench.results import DiskState, Row
from dspkg.bench.scenario import bound_rows


def _row(
    seconds: float, client: float, server: float, emulator: float, state: DiskState = "rested"
) -> Row:
    extra = {"server_cpu_seconds": server, "emulator_cpu_seconds": emulator}
    return Row(
        "r", "s5cmd cp, per-file", 100_000, seconds, 100_100, None, None, client, None, extra, state
    )


def test_a_busy_server_alone_bounds_a_row() -> None:
    (note,) = bound_rows([_row(10.0, 1.0, 13.0, 1.0)], "SeaweedFS", 2, 2)
    assert "SeaweedFS was busy 65% of the time" in note and "bound by the test server" in note


def test_client_server_and_emulator_filling_the_machine_bound_a_row() -> None:
    # The eleventh session's per-file s5cmd row: 88 s on 2 CPUs, 57 + 52 + 49 CPU s.
    (note,) = bound_rows([_row(88.3, 56.9, 52.0, 49.3)], "SeaweedFS", 2, 2)
    assert "kept the 2 CPUs 90% busy (56.9 + 52.0 + 49.3 CPU s)" in note
    assert "bound by the machine" in note


def test_a_row_whose_own_client_fills_the_machine_is_the_method_s() -> None:
    # A cold pull busy on its own work: the bed used less than half of the CPU time.
    assert bound_rows([_row(9.4, 14.0, 1.2, 1.6)], "SeaweedFS", 2, 2) == []


def test_a_row_with_spare_cpu_is_not_bound() -> None:
    assert bound_rows([_row(18.7, 10.0, 1.0, 0.9)], "SeaweedFS", 2, 2) == []


def test_after_deletions_the_note_says_so() -> None:
    (note,) = bound_rows([_row(88.3, 56.9, 52.0, 49.3, state="deleted")], "SeaweedFS", 2, 2)
    assert note.startswith("s5cmd cp, per-file (after deletions):")
