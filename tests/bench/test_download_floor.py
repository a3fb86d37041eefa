"""The download floor's pure parts: how it cuts a package, and when it says a goal is
out of any client's reach."""

from __future__ import annotations

import itertools
from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from dspkg.bench._drain import parts
from dspkg.bench.publish_bench import upload_reach
from dspkg.bench.pull_bench import LARGE, per_file_reach
from dspkg.bench.results import Row
from dspkg.bench.scenario import reach_note
from dspkg.pull_plan import Tuning


@given(size=st.integers(1, 1 << 34), requests=st.integers(1, 16))
def test_parts_cover_the_object_once_in_ranges_no_longer_than_the_pulls(
    size: int, requests: int
) -> None:
    tuning = Tuning(range_requests=requests)
    cut = parts(size, tuning)
    assert cut[0][0] == 0 and cut[-1][1] == size
    assert all(a < b for a, b in cut)
    assert all(b == c for (_, b), (c, _) in itertools.pairwise(cut))
    assert max(b - a for a, b in cut) <= tuning.range_limit(size)
    # As many as the pull would need, not more.
    assert len(cut) == -(-size // tuning.range_limit(size))


def test_a_gigabyte_package_is_read_as_the_pull_reads_it() -> None:
    cut = parts(1_000_000_000, Tuning())
    assert len(cut) == Tuning().range_requests == 8


def _row(key: str, seconds: float | None) -> Row:
    return Row(key, f"method {key}", 100_000, seconds)


def test_reach_note_names_the_goal_the_floor_and_the_time_it_needs() -> None:
    note = reach_note(
        _row("s5cmd_per_file", 85.0), _row("download_floor", 8.7), 10.0, "a cold pull"
    )
    assert note is not None
    assert "10x method s5cmd_per_file (85.0 s) needs a cold pull of at most 8.50 s" in note
    assert "8.70 s" in note and "(method download_floor)" in note
    assert "no client could meet" in note


def test_reach_note_names_the_links_own_floor_when_the_goal_is_below_it_too() -> None:
    # 1,004.6 MB at 1 Gbit/s take 8.04 s: 10x of 80 s asks for 8.00 s, of 81.3 s for 8.13 s.
    floor = replace(_row("download_floor", 8.47), wire_bytes=1_004_600_000)
    beyond = reach_note(_row("s5cmd_per_file", 80.0), floor, 10.0, "a cold pull", 1000.0)
    assert beyond is not None and "less than the 8.04 s they take at the link's full rate" in (
        beyond
    )
    within = reach_note(_row("s5cmd_per_file", 81.3), floor, 10.0, "a cold pull", 1000.0)
    assert within is not None and "full rate" not in within
    # Without the link's rate (unlimited, or not given), only the measured floor is named.
    for mbit in (0.0, float("inf")):
        plain = reach_note(_row("s5cmd_per_file", 80.0), floor, 10.0, "a cold pull", mbit)
        assert plain is not None and "full rate" not in plain


def test_no_reach_note_when_the_goal_is_within_reach_or_unmeasured() -> None:
    assert reach_note(_row("s5cmd_per_file", 90.0), _row("download_floor", 8.7), 10.0, "x") is None
    assert reach_note(_row("s5cmd_per_file", 87.0), _row("download_floor", 8.7), 10.0, "x") is None
    assert reach_note(_row("s5cmd_per_file", None), _row("download_floor", 8.7), 10.0, "x") is None
    assert reach_note(_row("s5cmd_per_file", 85.0), _row("download_floor", None), 10.0, "x") is None


def test_the_run_notes_the_reach_only_where_the_per_file_goal_is_judged() -> None:
    rows = [_row("s5cmd_per_file", 85.0), _row("download_floor", 8.7)]
    assert (
        per_file_reach(rows, LARGE, 1000.0)
        == reach_note(rows[0], rows[1], 10.0, "a cold pull", 1000.0)
        is not None
    )
    # Below the size the goal is set for, after deletions only, or without a row: none.
    assert per_file_reach(rows, LARGE - 1, 1000.0) is None
    deleted = [replace(r, state="deleted") for r in rows]
    assert per_file_reach(deleted, LARGE, 1000.0) is None
    assert per_file_reach(rows[:1], LARGE, 1000.0) is None
    skipped = [replace(rows[0], seconds=None, skipped="s5cmd is missing"), rows[1]]
    assert per_file_reach(skipped, LARGE, 1000.0) is None


def test_the_publish_notes_the_reach_of_its_per_file_goal() -> None:
    rows = [_row("s5cmd_upload", 19.3), _row("upload_floor", 2.0)]
    note = upload_reach(rows, 1000.0)
    assert note is not None and "needs a publish of at most 1.93 s" in note
    assert upload_reach([_row("s5cmd_upload", 25.0), rows[1]], 1000.0) is None
    assert upload_reach(rows[:1], 1000.0) is None
    # 200 MB through a 1 Gbit/s link take 1.6 s: a goal of 1.55 s is below the link's floor.
    moved = [_row("s5cmd_upload", 15.5), replace(rows[1], wire_bytes=200_000_000)]
    note = upload_reach(moved, 1000.0)
    assert note is not None and "less than the 1.60 s they take at the link's full rate" in note
    assert "full rate" not in (upload_reach(moved, 500.0 * 4) or "")


def test_the_pull_names_the_links_floor_of_the_bytes_it_moved() -> None:
    rows = [
        _row("s5cmd_per_file", 80.0),
        replace(_row("download_floor", 8.47), wire_bytes=1_004_600_000),
    ]
    note = per_file_reach(rows, LARGE, 1000.0)
    assert note is not None and "8.04 s they take at the link's full rate" in note
