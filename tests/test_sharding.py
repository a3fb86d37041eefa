"""Shards: disjoint, complete, contiguous, balanced within one largest file, the same in
every process; and the usage errors of --shard."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dspkg.errors import SelectionError, UsageError
from dspkg.manifest import FileEntry, Manifest
from dspkg.selection import Selection
from dspkg.sharding import Shard, parse_shard, split_points
from dspkg.subset import Subset

SIZES = st.lists(st.integers(0, 10**9), max_size=300)
WORLDS = st.integers(1, 64)


def _ranks(sizes: list[int], world: int) -> list[list[int]]:
    """Each rank's item indices, each rank computed on its own as a job would."""
    files = [FileEntry(f"f{i:05d}", size, "0" * 64) for i, size in enumerate(sizes)]
    index = {f.path: i for i, f in enumerate(files)}
    return [[index[f.path] for f in Shard(r, world).take(files)] for r in range(world)]


@given(SIZES, WORLDS)
def test_shards_are_disjoint_complete_and_contiguous(sizes: list[int], world: int) -> None:
    ranks = _ranks(sizes, world)
    assert [i for rank in ranks for i in rank] == list(range(len(sizes)))
    for rank in ranks:
        assert rank == list(range(rank[0], rank[0] + len(rank)) if rank else [])


@given(SIZES, WORLDS)
def test_each_rank_is_within_one_largest_file_of_a_fair_share(sizes: list[int], world: int) -> None:
    total = sum(sizes)
    largest = max(sizes, default=0)
    for rank in _ranks(sizes, world):
        got = sum(sizes[i] for i in rank)
        # |got - total/world| <= largest, in integers.
        assert abs(got * world - total) <= largest * world


@settings(max_examples=25)  # big lists are slow to draw
@given(st.lists(st.integers(500, 1000), min_size=400, max_size=600), st.integers(2, 8))
def test_many_small_files_give_ranks_within_five_percent(sizes: list[int], world: int) -> None:
    total = sum(sizes)
    assert max(sizes) * world <= total * 0.05  # the files allow it
    for rank in _ranks(sizes, world):
        assert abs(sum(sizes[i] for i in rank) - total / world) <= 0.05 * total / world


def test_empty_files_are_spread_by_count() -> None:
    assert split_points([0] * 10, 4) == [0, 2, 5, 7, 10]
    assert split_points([], 3) == [0, 0, 0, 0]


_OTHER_PROCESS = """
import json, sys
from dspkg.sharding import split_points
cases = json.load(sys.stdin)
print(json.dumps([split_points(sizes, world) for sizes, world in cases]))
"""


@settings(max_examples=5)  # each example starts a process; each holds many cases
@given(st.lists(st.tuples(SIZES, WORLDS), min_size=20, max_size=40))
def test_every_process_computes_the_same_split(cases: list[tuple[list[int], int]]) -> None:
    here = [split_points(sizes, world) for sizes, world in cases]
    there = subprocess.run(
        [sys.executable, "-c", _OTHER_PROCESS],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "random"},
    )
    assert json.loads(there.stdout) == here


@pytest.mark.parametrize(
    ("text", "env", "needle"),
    [
        ("4/4", {}, "RANK must be from 0 to WORLD-1"),
        ("-1/3", {}, "RANK must be from 0 to WORLD-1"),
        ("1/0", {}, "WORLD must be at least 1"),
        ("1", {}, "expected RANK/WORLD"),
        ("a/b", {}, "not a whole number"),
        ("auto", {}, "RANK and WORLD_SIZE"),
        ("auto", {"RANK": "0"}, "RANK and WORLD_SIZE"),
        ("auto", {"RANK": "2", "WORLD_SIZE": "2"}, "RANK must be"),
        ("auto", {"RANK": "x", "WORLD_SIZE": "2"}, "RANK='x'"),
    ],
)
def test_bad_shards_are_usage_errors(text: str, env: dict[str, str], needle: str) -> None:
    with pytest.raises(UsageError, match=needle):
        parse_shard(text, env)


def test_auto_reads_what_torchrun_sets() -> None:
    assert parse_shard("auto", {"RANK": "3", "WORLD_SIZE": "8"}) == Shard(3, 8)
    assert parse_shard(" 1/2 ", {}) == Shard(1, 2)


def _manifest(paths_sizes: list[tuple[str, int]]) -> Manifest:
    files = tuple(FileEntry(p, s, "0" * 64) for p, s in sorted(paths_sizes))
    return Manifest(dataset="d", version="v", files=files)


def test_shards_split_the_selection() -> None:
    manifest = _manifest([(f"{d}/{i:02d}", 10) for d in ("a", "b") for i in range(20)])
    selection = Selection.build(["b/"])
    ranks = [Subset(selection, Shard(r, 4)).pick(manifest) for r in range(4)]
    assert [len(r) for r in ranks] == [5, 5, 5, 5]
    assert [f.path for r in ranks for f in r] == [f"b/{i:02d}" for i in range(20)]
    # A reader of manifest parts may skip what the selection cannot match, shard or not.
    anchored = Selection.build(["/b/"])
    assert not Subset(anchored, Shard(3, 4)).may_match_range("a/00", "a/19")
    assert Subset(anchored, Shard(0, 4)).may_match_range("a/10", "b/00")
    assert Subset(selection, Shard(0, 4)).may_match_range("a/00", "a/19")  # b/ at any depth


def test_an_empty_shard_is_an_error_unless_allowed() -> None:
    manifest = _manifest([("a", 5), ("b", 5)])
    # Midpoints at 2.5 and 7.5 of 10 bytes: thirds [0, 3.3) and [6.7, 10) take them.
    with pytest.raises(SelectionError, match="shard 1/3 of dataset://d/v holds no file"):
        Subset(shard=Shard(1, 3)).pick(manifest)
    allowed = Subset(Selection.build(allow_empty=True), Shard(1, 3))
    assert allowed.pick(manifest) == ()
    assert [f.path for f in Subset(shard=Shard(2, 3)).pick(manifest)] == ["b"]
