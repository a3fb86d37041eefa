"""Selection by glob and list: the semantics table, random trees against a slow reference
matcher, malformed patterns, lists, and the range test a manifest reader will use."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dspkg.errors import SelectionError, UsageError
from dspkg.manifest import FileEntry
from dspkg.selection import Selection, compile_pattern, parse_list

# --- a slow reference matcher, written from the rules in docs/cli.md ----------------------


def _component(pattern: str, name: str) -> bool:
    """One path component against one pattern component, by backtracking."""
    if not pattern:
        return not name
    c = pattern[0]
    if c == "\\" and len(pattern) > 1:
        return bool(name) and name[0] == pattern[1] and _component(pattern[2:], name[1:])
    if c == "*":
        rest = pattern.lstrip("*")
        return any(_component(rest, name[i:]) for i in range(len(name) + 1))
    if c == "?":
        return bool(name) and _component(pattern[1:], name[1:])
    if c == "[":
        parsed = _char_class(pattern)
        assert parsed is not None, "the tests only generate closed classes"
        accepts, length = parsed
        return bool(name) and accepts(name[0]) and _component(pattern[length:], name[1:])
    return bool(name) and name[0] == c and _component(pattern[1:], name[1:])


def _char_class(pattern: str) -> tuple[Callable[[str], bool], int] | None:
    i = 1
    negate = i < len(pattern) and pattern[i] in "!^"
    if negate:
        i += 1
    members: list[tuple[str, str]] = []
    first = True
    while i < len(pattern) and (pattern[i] != "]" or first):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            c = pattern[i + 1]
            i += 1
        if i + 2 < len(pattern) and pattern[i + 1] == "-" and pattern[i + 2] != "]":
            members.append((c, pattern[i + 2]))
            i += 3
        else:
            members.append((c, c))
            i += 1
        first = False
    if i >= len(pattern):
        return None

    def accepts(ch: str) -> bool:
        inside = any(lo <= ch <= hi for lo, hi in members)
        return ch != "/" and (inside != negate)

    return accepts, i + 1


def _segments(psegs: list[str], tsegs: list[str]) -> bool:
    """Pattern components against path components; ``**`` spans folders."""
    if not psegs:
        return not tsegs
    head = psegs[0]
    if head == "**" or (head.startswith("**") and head.strip("*") == ""):
        if len(psegs) == 1:  # trailing: one or more components below
            return len(tsegs) >= 1
        return any(_segments(psegs[1:], tsegs[i:]) for i in range(len(tsegs) + 1))
    return bool(tsegs) and _component(head, tsegs[0]) and _segments(psegs[1:], tsegs[1:])


def reference(pattern: str, path: str) -> bool:
    body = pattern
    anchored = body.startswith("/")
    body = body.lstrip("/")
    folder_only = body.endswith("/")
    body = body.rstrip("/")
    anchored = anchored or "/" in body
    parts = path.split("/")
    # The path itself, or any folder above it (a matched folder brings its contents).
    for k in range(1, len(parts) + 1):
        if folder_only and k == len(parts):
            continue
        prefix = parts[:k]
        if anchored:
            if _segments(body.split("/"), prefix):
                return True
        elif _component(body, prefix[-1]):
            return True
    return False


# --- the semantics table ----------------------------------------------------------------

TABLE = [
    # pattern, path, selected
    ("*.jpg", "a.jpg", True),
    ("*.jpg", "cat/a.jpg", True),  # no slash: any depth
    ("cat/*.jpg", "cat/a.jpg", True),
    ("cat/*.jpg", "cat/x/a.jpg", False),  # * stays within a folder
    ("cat/**/*.jpg", "cat/x/y/a.jpg", True),  # ** crosses folders
    ("cat/**/*.jpg", "cat/a.jpg", True),  # ... also none
    ("**/a.jpg", "x/y/a.jpg", True),
    ("**/a.jpg", "a.jpg", True),
    ("cat/**", "cat/x/y", True),
    ("cat/**", "cat", False),  # below cat, not a file named cat
    ("cat", "cat/x/y", True),  # a matched folder brings everything under it
    ("cat", "x/cat/y", True),  # at any depth
    ("cat", "cat", True),
    ("cat", "category/x", False),
    ("cat/", "cat/x", True),
    ("cat/", "cat", False),  # a trailing / matches folders only
    ("/cat", "x/cat/y", False),  # a leading / anchors
    ("cat/x", "y/cat/x", False),  # a slash inside anchors too
    ("a?c", "abc", True),
    ("a?c", "a/c", False),  # ? is not /
    ("[ab].txt", "a.txt", True),
    ("[ab].txt", "c.txt", False),
    ("[!a].txt", "b.txt", True),
    ("[!a].txt", "a.txt", False),
    ("[^a].txt", "a.txt", False),
    ("[a-c]x", "bx", True),
    ("[a-c]x", "dx", False),
    ("[]]", "]", True),
    ("\\*.txt", "*.txt", True),
    ("\\*.txt", "a.txt", False),
    ("a**b", "axxb", True),  # ** inside a component is *
    ("a**b", "ax/b", False),
    ("**", "any/thing", True),
]


@pytest.mark.parametrize(("pattern", "path", "selected"), TABLE)
def test_glob_semantics(pattern: str, path: str, selected: bool) -> None:
    assert Selection.build([pattern]).matches(path) is selected
    assert reference(pattern, path) is selected  # the reference agrees with the table
    files = [FileEntry(path, 1, "0" * 64)]
    chosen = Selection.build([pattern], allow_empty=True).apply(files, where="v")
    assert (chosen == tuple(files)) is selected


def test_a_class_never_matches_a_slash() -> None:
    for pattern in ("a[/]b", "a[!x]b", "a[+-0]b"):  # '/' lies between '+' and '0'
        assert not Selection.build([pattern]).matches("a/b")
    assert Selection.build(["a[+-0]b"]).matches("a.b")


def test_excludes_apply_after_includes() -> None:
    paths = ["cat/a.jpg", "cat/b.tmp", "cat/sub/c.jpg", "dog/d.jpg"]
    files = [FileEntry(p, 1, "0" * 64) for p in paths]
    selection = Selection.build(["cat/"], ["*.tmp", "sub/"])
    assert [f.path for f in selection.apply(files, where="v")] == ["cat/a.jpg"]
    only_excludes = Selection.build([], ["cat/"])
    assert [f.path for f in only_excludes.apply(files, where="v")] == ["dog/d.jpg"]
    # A listed path joins the patterns' files; excludes still apply to it.
    listed = Selection.build(["dog/**"], ["*.tmp"], ["cat/a.jpg", "cat/b.tmp"])
    assert [f.path for f in listed.apply(files, where="v")] == ["cat/a.jpg", "dog/d.jpg"]


# --- random trees against the reference ---------------------------------------------------

NAMES = st.sampled_from(["a", "b", "ab", "a.b", "x.jpg", "b-a", "[", "]", "*", "!a", "a b"])
PATHS = st.lists(NAMES, min_size=1, max_size=4).map("/".join)
TREES = st.lists(PATHS, min_size=1, max_size=25, unique=True).filter(
    # A tree: no file is also a folder.
    lambda paths: not any(q.startswith(p + "/") for p in paths for q in paths)
)
PLAIN_TOKENS = st.sampled_from(
    ["a", "b", "x", ".", "-", "?", "[ab]", "[!a]", "[a-b]", "[^b]", "\\*", "\\[", "ab", "x.jpg"]
)
# Wildcards often, so that most patterns select some of a tree and leave the rest.
TOKENS = st.one_of(st.sampled_from(["*", "**", "*.jpg", "a*"]), PLAIN_TOKENS)
COMPONENTS = st.lists(TOKENS, min_size=1, max_size=3).map("".join)
PATTERNS = st.builds(
    lambda lead, parts, trail: ("/" if lead else "") + "/".join(parts) + ("/" if trail else ""),
    st.booleans(),
    st.lists(COMPONENTS, min_size=1, max_size=3),
    st.booleans(),
)


@given(TREES, st.lists(PATTERNS, min_size=1, max_size=3), st.lists(PATTERNS, max_size=2))
def test_random_trees_match_the_reference(
    tree: list[str], include: list[str], exclude: list[str]
) -> None:
    paths = sorted(tree)
    files = [FileEntry(p, 1, "0" * 64) for p in paths]
    selection = Selection.build(include, exclude, allow_empty=True)
    expected = [
        p
        for p in paths
        if any(reference(i, p) for i in include) and not any(reference(e, p) for e in exclude)
    ]
    assert [f.path for f in selection.apply(files, where="v")] == expected
    assert [p for p in paths if selection.matches(p)] == expected


@given(TREES, st.lists(PATTERNS, min_size=1, max_size=3), st.data())
def test_a_range_holding_a_selected_path_may_match(
    tree: list[str], include: list[str], data: st.DataObject
) -> None:
    paths = sorted(tree)
    selection = Selection.build(include, allow_empty=True)
    i = data.draw(st.integers(0, len(paths) - 1))
    j = data.draw(st.integers(i, len(paths) - 1))
    if any(selection.matches(p) for p in paths[i : j + 1]):
        assert selection.may_match_range(paths[i], paths[j])


def test_a_range_beyond_every_prefix_is_skipped() -> None:
    selection = Selection.build(["images/train/**", "/labels/"])
    assert selection.prefixes == ("images/train/", "labels")
    assert selection.may_match_range("images/a", "images/z")
    assert selection.may_match_range("images/train/b", "images/train/c")
    assert selection.may_match_range("labels/0", "models/9")
    assert not selection.may_match_range("audio/0", "images/t")
    assert not selection.may_match_range("images/val/0", "l")
    assert not selection.may_match_range("models/0", "zz")
    # A pattern without a slash can match anywhere: no part can be skipped.
    assert Selection.build(["*.jpg"]).may_match_range("a", "b")
    assert Selection.build(listed=["m/1"]).may_match_range("m/0", "m/2")
    assert not Selection.build(listed=["m/1"]).may_match_range("m/2", "m/3")


# --- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "needle"),
    [
        ("a[b", "never closed"),
        ("[!", "never closed"),
        ("", "empty pattern"),
        ("/", "every file"),
        ("!x", "--exclude"),
        ("x\\", "lone"),
        ("[z-a]", "malformed character class"),
    ],
)
def test_malformed_patterns_are_usage_errors(pattern: str, needle: str) -> None:
    with pytest.raises(UsageError, match=needle) as caught:
        compile_pattern(pattern)
    assert repr(pattern) in str(caught.value)
    with pytest.raises(UsageError, match="--exclude"):
        Selection.build([], [pattern])


def test_an_include_that_matches_nothing_is_named() -> None:
    files = [FileEntry(p, 1, "0" * 64) for p in ["a/1", "b/2"]]
    with pytest.raises(SelectionError, match=r"'c/\*\*'.*dataset://d/v.*--allow-empty") as caught:
        Selection.build(["a/", "c/**"]).apply(files, where="dataset://d/v")
    assert caught.value.items == ("c/**",)
    assert Selection.build(["a/", "c/**"], allow_empty=True).apply(files, where="v") == (files[0],)
    # Excluding everything the includes took is an empty selection.
    with pytest.raises(SelectionError, match="is empty"):
        Selection.build(["a/"], ["1"]).apply(files, where="v")
    assert Selection.build(["a/"], ["1"], allow_empty=True).apply(files, where="v") == ()


def test_listed_paths_missing_from_the_version_are_named() -> None:
    files = [FileEntry(f"f{i}", 1, "0" * 64) for i in range(5)]
    missing = [f"gone{i}" for i in range(8)]
    selection = Selection.build(listed=["f1", *missing], list_name="--files-from l.txt")
    with pytest.raises(SelectionError, match=r"8 path\(s\) of --files-from l.txt") as caught:
        selection.apply(files, where="v")
    message = str(caught.value)
    assert "'gone0'" in message and "'gone4'" in message and "'gone5'" not in message
    assert "and 3 more" in message
    kept = Selection.build(listed=["f3", "f1", *missing], allow_empty=True)
    assert [f.path for f in kept.apply(files, where="v")] == ["f1", "f3"]  # manifest order


def test_list_files_skip_blanks_and_comments() -> None:
    text = "# the validation split\n./a/1.jpg\r\n\n   \nb/2.jpg\n#c\nname with  spaces \n"
    assert parse_list(text) == ("a/1.jpg", "b/2.jpg", "name with  spaces ")


def test_paths_with_line_separators_are_matched_whole() -> None:
    # U+2028 is no line break for the scan; a list file splits on \n only.
    weird = ["a\u2028b/x", "a\u2028b/y.jpg", "c"]
    files = [FileEntry(p, 1, "0" * 64) for p in sorted(weird)]
    assert [f.path for f in Selection.build(["*.jpg"]).apply(files, where="v")] == [
        "a\u2028b/y.jpg"
    ]
    assert parse_list("a\u2028b/x\n") == ("a\u2028b/x",)
