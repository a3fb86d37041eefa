"""Path, name and size rules (pure)."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from dspkg.errors import InvalidArgument, InvalidName
from dspkg.names import VersionUri, check_name, parse_dataset_uri
from dspkg.paths import PathList, all_paths_ok, path_problem, tree_problem
from dspkg.sizes import format_size, parse_size


@pytest.mark.parametrize(
    "path",
    ["a", "a/b/c.jpg", "class_1/img 001.jpg", "ä/日本.txt", "a..b", ".hidden", "x/12:00.csv"],
)
def test_good_paths(path: str) -> None:
    assert path_problem(path) is None


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("", "empty"),
        ("/abs", "absolute"),
        ("../x", ".."),
        ("a/../../x", ".."),
        ("a/./b", "'.'"),
        ("a\\b", "backslash"),
        ("C:/x", "drive letter"),
        ("a/D:x", "drive letter"),
        ("a//b", "empty path component"),
        ("a/", "empty path component"),
        ("a\x00b", "control character"),
        ("a\nb", "control character"),
        ("CON", "reserved"),
        ("dir/lpt1", "reserved"),
        ("name.", "ends with"),
        ("name ", "ends with"),
        ("x" * 256, "longer than 255"),
        ("/".join(["abc"] * 1100), "longer than 4096"),
        ("\ud800", "UTF-8"),
    ],
)
def test_bad_paths(path: str, reason: str) -> None:
    problem = path_problem(path)
    assert problem is not None and reason in problem


@given(st.lists(st.sampled_from(["a", "A", "b", "a/b", "a/c", "é", "e\u0301"]), max_size=6))
def test_tree_problem_finds_every_collision(paths: list[str]) -> None:
    import unicodedata

    folded = [unicodedata.normalize("NFC", p).casefold() for p in paths]
    dirs = {f.rpartition("/")[0] for f in folded if "/" in f}
    expect_problem = len(set(folded)) != len(folded) or bool(dirs & set(folded))
    assert (tree_problem(paths) is not None) == expect_problem
    assert tree_problem(PathList(paths)) == tree_problem(paths)
    assert tree_problem(sorted(paths)) == tree_problem(PathList(sorted(paths)))


@given(
    paths=st.lists(
        st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=9),
        max_size=9_000,
    ),
    start=st.integers(-10, 9_010),
    stop=st.integers(-10, 9_010),
)
@example(paths=[f"d/é{i:05d}" for i in range(9_000)], start=4_000, stop=8_200)
def test_a_path_list_holds_the_paths_it_was_given(paths: list[str], start: int, stop: int) -> None:
    """Paths held as one string: the same paths back, one by one, in slices and in runs
    (across the pieces iteration splits at), and the joined text."""
    column = PathList(paths)
    assert len(column) == len(paths) and list(column) == paths
    assert column.text == "\n".join(paths)
    assert column[start:stop] == paths[start:stop]
    assert column[::3] == paths[::3]
    if paths:
        assert column[-1] == paths[-1] and column[len(paths) // 2] == paths[len(paths) // 2]
    lo, hi = sorted((max(0, min(start, len(paths))), max(0, min(stop, len(paths)))))
    assert list(column.range(lo, hi)) == paths[lo:hi]
    with pytest.raises(IndexError):
        column[len(paths)]


@pytest.mark.parametrize("paths", [["a", "b\nc"], ["a", ""], [""]])
def test_a_path_list_refuses_what_would_hide_among_its_separators(paths: list[str]) -> None:
    with pytest.raises(ValueError, match="empty or holds a newline"):
        PathList(paths)


# Characters each rule of the path check turns on: separators, dots and spaces at ends,
# controls, backslash, drive colons, device names, non-ASCII (case folding, spaces that are
# not printable, a lone surrogate that is not UTF-8).
_TRICKY = st.sampled_from(
    [
        "a",
        "A",
        "c",
        "o",
        "n",
        "l",
        "p",
        "t",
        "x",
        "u",
        "1",
        "/",
        ".",
        " ",
        ":",
        "\\",
        "\x00",
        "\n",
        "\t",
        "\x7f",
        "\x85",
        "\u00a0",
        "\u2028",
        "é",
        "\u212a",
        "\u017f",
        "\ud800",
        "con",
        "LPT9",
        "x" * 250,
    ]
)


@given(st.lists(st.lists(_TRICKY, max_size=8).map("".join), max_size=4))
def test_all_paths_ok_agrees_with_path_problem(paths: list[str]) -> None:
    assert all_paths_ok(paths) == all(path_problem(p) is None for p in paths)


def test_names_and_uris() -> None:
    assert VersionUri.parse("dataset://images/train-v1") == VersionUri("images", "train-v1")
    assert str(VersionUri("images", "v.1_2")) == "dataset://images/v.1_2"
    assert parse_dataset_uri("dataset://images") == "images"
    for bad in ("dataset://a", "dataset://a/b/c", "s3://a/b", "dataset://.a/b", "dataset://a/b c"):
        with pytest.raises(
            InvalidName, match=r"invalid (dataset version URI|dataset name|version)"
        ):
            VersionUri.parse(bad)
    with pytest.raises(InvalidName, match="1-100 characters"):
        check_name("x" * 101)


def test_sizes() -> None:
    assert parse_size("1GiB") == 1 << 30
    assert parse_size("10MB") == 10_000_000
    assert parse_size("512") == 512
    assert parse_size("1.5kb") == 1500
    assert format_size(1_234_567) == "1.2 MB"
    assert format_size(999) == "999 B"
    with pytest.raises(InvalidArgument, match="invalid size 'ten'"):
        parse_size("ten")
