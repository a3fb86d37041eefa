"""What changed between two versions: the pure merge walk, ``dspkg.diff`` and ``dspkg diff``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

import dspkg
from dspkg.manifest import FileEntry
from dspkg.versiondiff import diff_files
from tests.helpers import assert_one_line_error, run_cli, write_outputs

_paths = st.sampled_from([f"{d}/{n}" for d in ("a", "a/b", "b", "c.d") for n in "xyz"] + ["z"])
_content = st.tuples(st.integers(0, 3), st.integers(0, 1000))  # (content id, size)
_versions = st.dictionaries(_paths, _content, max_size=13)


def entries(files: dict[str, tuple[int, int]], package: int | None = None) -> list[FileEntry]:
    return [
        FileEntry(
            path,
            size,
            hashlib.sha256(f"{content}:{size}".encode()).hexdigest(),
            package,
            100 if package is not None else None,
        )
        for path, (content, size) in sorted(files.items())
    ]


@given(a=_versions, b=_versions, packaged=st.booleans())
def test_diff_matches_set_arithmetic(
    a: dict[str, tuple[int, int]], b: dict[str, tuple[int, int]], packaged: bool
) -> None:
    # Where a file lives (package, offset) is not content: b may be packaged, a not.
    result = diff_files(entries(a), entries(b, 0 if packaged else None))
    added = sorted(b.keys() - a.keys())
    removed = sorted(a.keys() - b.keys())
    changed = sorted(p for p in a.keys() & b.keys() if a[p] != b[p])
    same = (a.keys() & b.keys()) - set(changed)
    assert [c.path for c in result.changes] == sorted(added + removed + changed)
    assert [c.path for c in result.of_kind("added")] == added
    assert [c.path for c in result.of_kind("removed")] == removed
    assert [c.path for c in result.of_kind("changed")] == changed
    assert result.added.files == len(added) and result.removed.files == len(removed)
    assert result.unchanged.files == len(same)
    assert result.added.bytes == sum(b[p][1] for p in added)
    assert result.removed.bytes == sum(a[p][1] for p in removed)
    assert result.changed.bytes == sum(b[p][1] for p in changed)
    assert result.changed_bytes_a == sum(a[p][1] for p in changed)
    assert result.bytes_a_to_b == result.added.bytes + result.changed.bytes
    assert result.bytes_b_to_a == result.removed.bytes + result.changed_bytes_a
    assert result.identical == (a == b)
    for c in result.changes:
        assert (c.a is None) == (c.kind == "added") and (c.b is None) == (c.kind == "removed")


@given(a=_versions, b=_versions)
def test_diff_reversed_swaps_added_and_removed(
    a: dict[str, tuple[int, int]], b: dict[str, tuple[int, int]]
) -> None:
    forward = diff_files(entries(a), entries(b))
    backward = diff_files(entries(b), entries(a))
    assert forward.added == backward.removed and forward.removed == backward.added
    assert forward.bytes_a_to_b == backward.bytes_b_to_a
    assert [c.path for c in forward.changes] == [c.path for c in backward.changes]


def test_json_form() -> None:
    a = entries({"x": (1, 5), "y": (1, 7)})
    b = entries({"x": (2, 6), "z": (1, 9)})
    doc = diff_files(a, b, a="dataset://d/1", b="dataset://d/2").to_json()
    assert doc["added"] == {"files": 1, "bytes": 9}
    assert doc["removed"] == {"files": 1, "bytes": 7}
    assert doc["changed"] == {"files": 1, "bytes": 6, "bytes_a": 5}
    assert (doc["bytes_a_to_b"], doc["bytes_b_to_a"]) == (15, 12)
    assert [(c["path"], c["change"], c["size_a"], c["size_b"]) for c in doc["changes"]] == [
        ("x", "changed", 5, 6),
        ("y", "removed", 7, None),
        ("z", "added", None, 9),
    ]


def publish_two(tmp_path: Path) -> dict[str, str]:
    env = {"DSPKG_STORE": f"file://{tmp_path / 'store'}", "DSPKG_CACHE": str(tmp_path / "c")}
    files = {"keep.txt": b"same", "old.txt": b"gone soon", "edit.txt": b"before"}
    write_outputs(tmp_path / "o1", files, ["dataset://d/v1"])
    dspkg.publish(tmp_path / "o1", env=env)
    entry = {"uri": "dataset://d/v2", "from": "dataset://d/v1", "exclude": ["old.txt"]}
    write_outputs(tmp_path / "o2", {"edit.txt": b"after!", "new/file.txt": b"hello"}, [entry])
    dspkg.publish(tmp_path / "o2", env=env)
    return env


def test_api_diff(tmp_path: Path) -> None:
    env = publish_two(tmp_path)
    result = dspkg.diff("dataset://d/v1", "dataset://d/latest", env=env)
    assert (result.a, result.b) == ("dataset://d/v1", "dataset://d/v2")
    assert [(c.kind, c.path) for c in result.changes] == [
        ("changed", "edit.txt"),
        ("added", "new/file.txt"),
        ("removed", "old.txt"),
    ]
    assert result.bytes_a_to_b == len(b"after!") + len(b"hello")
    assert result.bytes_b_to_a == len(b"before") + len(b"gone soon")
    assert dspkg.diff("dataset://d/v2", "dataset://d/v2", env=env).identical


def test_cli_diff(tmp_path: Path) -> None:
    env = publish_two(tmp_path)
    human = run_cli(["diff", "dataset://d/v1", "dataset://d/v2"], env)
    assert human.returncode == 0, human.stderr
    lines = human.stdout.splitlines()
    assert lines[:3] == [
        "~ edit.txt  (6 B -> 6 B)",
        "+ new/file.txt  (5 B)",
        "- old.txt  (9 B)",
    ]
    assert "1 added (5 B), 1 removed (9 B), 1 changed, 1 unchanged" in lines[3]
    doc = json.loads(run_cli(["diff", "dataset://d/v1", "dataset://d/v2", "--json"], env).stdout)
    assert doc["added"]["files"] == 1 and doc["bytes_a_to_b"] == 11
    assert [c["path"] for c in doc["changes"]] == ["edit.txt", "new/file.txt", "old.txt"]
    assert_one_line_error(
        run_cli(["diff", "dataset://d/v1", "dataset://d/v7"], env), "dataset://d/v7 not found"
    )
    assert_one_line_error(run_cli(["diff", "dataset://d/v1", "d/v2"], env), "dataset://")
    assert run_cli(["diff", "dataset://d/v1"], env).returncode == 2
