"""The benchmark's round logic on fake samples: order of rounds and rows, the median and
spread of per-round targets, the tenth-by-glob selection, and how the report shows them."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dspkg.bench.data import rel_path, tenth_globs
from dspkg.bench.pull_bench import disk_note, remove_tree
from dspkg.bench.report import markdown, text
from dspkg.bench.results import (
    Report,
    Row,
    Target,
    at_scale,
    combine_rounds,
    combine_targets,
)
from dspkg.bench.rounds import RoundPlan, alternate, parse_disk_states, plan_rounds
from dspkg.selection import Selection


def test_rested_rounds_come_first_and_each_later_round_deletes_the_one_before() -> None:
    plans = plan_rounds(("rested", "deleted"), 3)
    assert [p.name for p in plans] == [
        "rested-1",
        "rested-2",
        "rested-3",
        "deleted-1",
        "deleted-2",
        "deleted-3",
    ]
    assert [p.delete_previous for p in plans] == [False] * 3 + [True] * 3
    assert not any(p.priming for p in plans)


def test_without_rested_rounds_a_priming_round_leaves_trees_to_delete() -> None:
    plans = plan_rounds(("deleted",), 2)
    assert plans[0] == RoundPlan("deleted", 0, delete_previous=False, priming=True)
    assert plans[0].name == "priming"
    assert [(p.name, p.delete_previous) for p in plans[1:]] == [
        ("deleted-1", True),
        ("deleted-2", True),
    ]
    assert [p.name for p in plan_rounds(("rested",), 2)] == ["rested-1", "rested-2"]


def test_competing_rows_alternate_abab_baba() -> None:
    pair = ("dspkg", "s5cmd")
    assert [alternate(pair, i) for i in range(4)] == [
        ["dspkg", "s5cmd"],
        ["s5cmd", "dspkg"],
        ["dspkg", "s5cmd"],
        ["s5cmd", "dspkg"],
    ]


def test_disk_states_are_parsed_in_run_order() -> None:
    assert parse_disk_states("rested,deleted") == ("rested", "deleted")
    assert parse_disk_states("deleted, rested") == ("rested", "deleted")
    assert parse_disk_states("deleted") == ("deleted",)
    for bad in ("", "rested,tired", ","):
        with pytest.raises(ValueError, match="give rested, deleted or both"):
            parse_disk_states(bad)


def _target(value: float | None, **kw: object) -> Target:
    fields: dict[str, object] = {
        "key": "t",
        "label": "a vs b",
        "value": value,
        "op": ">=",
        "threshold": 1.5,
        "unit": "x",
    }
    fields.update(kw)
    return Target(**fields)  # type: ignore[arg-type]


def test_the_median_round_decides_and_the_spread_keeps_every_round() -> None:
    combined = combine_targets([[_target(1.4)], [_target(2.0)], [_target(1.6)]])
    assert len(combined) == 1
    t = combined[0]
    assert t.value == 1.6 and t.status == "PASS"
    assert t.rounds == (1.4, 2.0, 1.6)
    assert t.spread == (1.4, 2.0)
    assert t.to_json()["rounds_passing"] == 2
    # Even counts: the mean of the two middle rounds.
    assert combine_targets([[_target(1.0)], [_target(2.0)]])[0].value == 1.5
    # A single round has no spread.
    single = combine_targets([[_target(1.0)]])[0]
    assert single.spread is None and single.status == "FAIL"


def test_rounds_without_a_value_do_not_count_and_a_skip_carries_over() -> None:
    t = combine_targets([[_target(None)], [_target(1.0)], [_target(3.0)]])[0]
    assert t.value == 2.0 and t.rounds == (None, 1.0, 3.0)
    skipped = combine_targets([[_target(2.0, skipped="s5cmd missing")], [_target(2.0)]])[0]
    assert skipped.status == "SKIP" and skipped.skipped == "s5cmd missing"
    assert combine_targets([[_target(None)]])[0].status == "SKIP"


def test_a_memory_limit_is_judged_on_its_worst_round() -> None:
    rounds = [
        [_target(v, op="<", threshold=300.0, unit="MB", worst_round=True)] for v in (250, 310, 200)
    ]
    t = combine_targets(rounds)[0]
    assert t.value == 310 and t.status == "FAIL"


def test_targets_keep_their_order_and_states_across_rounds() -> None:
    a = _target(2.0, key="a")
    b = _target(0.5, key="b", op="<=", threshold=1.0, state="deleted", answers="issue 13")
    combined = combine_targets([[a, b], [a, b]])
    assert [t.key for t in combined] == ["a", "b"]
    assert combined[1].state == "deleted" and combined[1].answers == "issue 13"


def test_a_goal_set_for_large_versions_is_shown_not_judged_below_it() -> None:
    t = _target(0.9)
    small = at_scale(t, 10_000, 100_000)
    assert small.status == "SKIP" and small.value == 0.9
    assert small.skipped is not None and "100,000 files" in small.skipped
    assert at_scale(t, 100_000, 100_000) is t


def test_rows_report_the_median_round_and_every_round_time() -> None:
    rounds = [
        {"x": Row("x", "m", 10, seconds=s, peak_rss_kib=rss, state="deleted")}
        for s, rss in ((3.0, 100), (1.0, 300), (2.0, 200))
    ]
    (row,) = combine_rounds(rounds)
    assert row.seconds == 2.0 and row.peak_rss_kib == 300 and row.state == "deleted"
    assert row.extra["round_seconds"] == [3.0, 1.0, 2.0]
    assert "round_server_cpu_seconds" not in row.extra  # not measured against a store


def test_rows_keep_every_round_cpu_of_the_client_and_the_server() -> None:
    rounds = [
        {"x": Row("x", "m", 10, seconds=s, cpu_seconds=c, extra={"server_cpu_seconds": srv})}
        for s, c, srv in ((3.0, 9.0, 6.3), (1.0, 4.0, None), (2.0, 5.0, 1.9))
    ]
    (row,) = combine_rounds(rounds)
    assert row.seconds == 2.0 and row.extra["server_cpu_seconds"] == 1.9
    assert row.extra["round_cpu_seconds"] == [9.0, 4.0, 5.0]
    assert row.extra["round_server_cpu_seconds"] == [6.3, None, 1.9]


@given(st.integers(10, 60_000))
def test_the_tenth_globs_select_exactly_the_first_tenth(files: int) -> None:
    globs, count = tenth_globs(files)
    selection = Selection.build(include=globs)
    # Check the edges and a sample in between: the matcher is the one dspkg pull uses.
    indices = {0, count - 1, count, files - 1, *range(0, files, max(files // 97, 1))}
    for i in sorted(x for x in indices if 0 <= x < files):
        assert selection.matches(rel_path(i)) == (i < count), (i, globs)
    if files % 10_000 == 0:
        assert all(g.startswith("d") and g.endswith("/") for g in globs)  # whole folders
        assert count == files // 10
    else:
        assert count == files // 10


def test_fewer_than_ten_files_have_no_tenth() -> None:
    assert tenth_globs(9) == ([], 0)


def test_a_deleted_tree_is_gone_and_its_files_counted(tmp_path: Path) -> None:
    root = tmp_path / "round"
    for i in range(25):
        path = root / rel_path(i * 40)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    (root / "empty" / "dirs").mkdir(parents=True)
    assert remove_tree(root) == 25
    assert not root.exists()


def test_a_disk_that_changed_speed_during_the_run_is_flagged() -> None:
    assert disk_note(30_000, 25_000) is None
    assert disk_note(25_000, 30_000) is None
    slow_after = disk_note(30_000, 5_000)
    assert slow_after is not None and "30,000 files/s before" in slow_after
    assert disk_note(5_000, 30_000) is not None


def _report() -> Report:
    rows = (
        Row("packaged_cold", "dspkg pull, packaged (cold cache)", 10, 1.0, 4, 10**6, 1024, 0.5),
        Row(
            "packaged_cold",
            "dspkg pull, packaged (cold cache)",
            10,
            2.0,
            4,
            10**6,
            1024,
            0.5,
            extra={
                "seconds_after_deletion": 3.5,
                "round_seconds": [2.5, 2.0, 1.5],
                "round_cpu_seconds": [0.6, 0.5, None],
                "round_server_cpu_seconds": [6.25, 1.9, 2.0],
            },
            state="deleted",
        ),
    )
    targets = (
        _target(1.6, rounds=(1.4, 1.6, 2.0), answers="issue 13"),
        _target(0.9, rounds=(0.8, 0.9, 1.7), answers="issue 13", state="deleted"),
    )
    machine = {
        "nproc": 2,
        "cpu_model": "cpu",
        "memory_gb": 1.0,
        "kernel": "k",
        "work_dir": "/w",
        "file_system": "ext4",
        "file_system_device": "/dev/x",
        "file_system_mount": "/",
        "python": "3.11",
        "versions": {
            "dspkg": "0.1",
            "obstore": "0.12",
            "moto": None,
            "seaweedfs": "4.48",
            "s5cmd": "v2",
        },
    }
    config: dict[str, object] = {"files": 10, "size": 10, "bytes": 100, "rtt_ms": 30.0}
    config |= {"mbit": 1000.0, "repeat": 3, "disk_states": ["rested", "deleted"]}
    facts = {"server": "SeaweedFS", "deletions": [{"files": 5000, "seconds": 1.25}]}
    return Report("pull", config, machine, rows, targets, "now", 1.0, facts)


def test_the_report_shows_each_state_and_each_target_with_its_spread() -> None:
    report = _report()
    out = text(report)
    assert "SeaweedFS, 30 ms RTT, 1000 Mbit/s, median of 3 rounds per disk state" in out
    assert "rows, after deletions: each round first deleted the round before it" in out
    assert "(3.5 s after the deletion)" in out
    assert "PASS  a vs b " in out and "[1.40-2.00x, 2/3 pass]" in out
    assert "FAIL  a vs b (after deletions)" in out and "[0.80-1.70x, 1/3 pass]" in out
    assert "(goal >= 1.5x, issue 13)" in out
    md = markdown(report)
    assert "SeaweedFS 4.48" in md
    assert "| a vs b | issue 13 | 1.60x | 1.40-2.00x, 2/3 pass | >= 1.5x | **PASS** |" in md
    assert "| a vs b (after deletions) | issue 13 | 0.90x |" in md
    assert "Rows after deletions: each round first deleted" in md
    assert (
        "| dspkg pull, packaged (cold cache) (after deletions) | 2.50 / 2.00 / 1.50 "
        "| 0.6 / 0.5 / - | 6.2 / 1.9 / 2.0 |"
    ) in md
