"""The compiled checks of manifest records (``_checks.c``) and their Python twins agree on
arbitrary and hostile columns: the compiled one only ever says "all clear" where the Python
one would, and says it wherever the Python one would on well-formed input (so the fast path
is taken). Hostile shards are refused with the same messages with and without it."""

from __future__ import annotations

import gc
import gzip
import hashlib
import json
import re
import threading
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dspkg import speedups
from dspkg.errors import UnsafePackage
from dspkg.layout import shard_key
from dspkg.manifest import (
    _NEW_ENTRY,
    FileEntry,
    Manifest,
    PackageInfo,
    ShardInfo,
    collector_paused,
    make_entries,
)
from dspkg.manifest_checks import LayoutCheck, python_records_ok
from dspkg.paths import fold, path_problem, python_all_paths_ok, python_tree_problem
from dspkg.shards import (
    ShardLimits,
    decode_shard,
    encode_manifest,
    encode_shard,
    join_shards,
)

COMPILED = speedups.compiled_checks()
needs_compiled = pytest.mark.skipif(
    COMPILED is None, reason="_speedups is not built here (no C compiler at install)"
)


def compiled() -> speedups.Checks:
    assert COMPILED is not None
    return COMPILED


# --- paths -----------------------------------------------------------------------------

# Pieces each rule of the path check turns on: separators, dots and spaces at ends,
# controls, backslash, drive colons, device names in any case, non-ASCII (case folding,
# spaces that are not printable, a lone surrogate, wide characters), lengths at the limits.
_PIECES = st.sampled_from(
    [
        *"aAcCoOnNlLpPtTxXuUmM019/. :\\\x00\n\t\x1f\x7f\x85",
        *"\u00a0\u2028é\u212a\u017f\u0131\ud800\udfff日\U0001f600",
        "con",
        "CoN",
        "lpt1",
        "COM9",
        "aux.txt",
        "c:",
        "x" * 250,
        "é" * 127,
        "日" * 85,
        "/".join(["ab"] * 1000),
    ]
)
_PATHS = st.one_of(st.lists(_PIECES, max_size=8).map("".join), st.text(max_size=12))


@needs_compiled
@settings(max_examples=500)
@given(st.lists(_PATHS, max_size=5))
def test_paths_ok_agrees_with_the_path_rule(paths: list[str]) -> None:
    expected = all(path_problem(p) is None for p in paths)
    assert compiled().paths_ok(paths) == expected
    assert python_all_paths_ok(paths) == expected


@needs_compiled
def test_paths_ok_refuses_what_is_not_a_str() -> None:
    class Text(str):
        pass

    odds: list[list[Any]] = [[b"a"], [None], [1], [Text("a")]]
    for odd in odds:
        assert compiled().paths_ok(odd) is python_all_paths_ok(odd) is False


# --- records on their own --------------------------------------------------------------

_SHA = hashlib.sha256(b"x").hexdigest()
_BAD_SHAS = st.sampled_from(
    [_SHA.upper(), _SHA[:63], _SHA + "0", " " + _SHA[1:], "g" * 64, "é" * 64, "0" * 63 + "\n"]
)
_NUMBERS = st.one_of(
    st.integers(-3, 40), st.integers(-(2**70), 2**70), st.sampled_from([True, False, 1.0])
)


@st.composite
def columns(draw: st.DrawFn) -> tuple[list[Any], ...]:
    """Five columns of one length: well-formed records, then a few values made hostile."""
    paths = sorted(set(draw(st.lists(st.text("ab/Bé.", min_size=1, max_size=5), max_size=8))))
    paths = [p for p in paths if path_problem(p) is None]
    n = len(paths)
    sizes: list[Any] = draw(st.lists(st.integers(0, 2**64), min_size=n, max_size=n))
    shas: list[Any] = [hashlib.sha256(p.encode()).hexdigest() for p in paths]
    indexes: list[Any] = []
    offsets: list[Any] = []
    for _ in paths:
        packaged = draw(st.booleans())
        indexes.append(draw(st.integers(0, 3)) if packaged else None)
        offsets.append(draw(st.integers(30, 2**40)) if packaged else None)
    cols = [paths, sizes, shas, indexes, offsets]
    for _ in range(draw(st.integers(0, 2)) if n else 0):
        column = draw(st.integers(0, 4))
        at = draw(st.integers(0, n - 1))
        value = draw(
            st.one_of(_PATHS, _NUMBERS, _BAD_SHAS, st.none(), st.just(paths[0]), st.just(b"a"))
        )
        cols[column][at] = value
    return tuple(cols)


@needs_compiled
@settings(max_examples=1000)
@given(columns())
def test_records_ok_agrees_with_python(cols: tuple[list[Any], ...]) -> None:
    assert compiled().records_ok(*cols) == python_records_ok(*cols)


@needs_compiled
def test_records_ok_takes_columns_of_one_length() -> None:
    with pytest.raises(ValueError, match="another length"):
        compiled().records_ok(["a"], [1, 2], [_SHA], [None], [None])
    with pytest.raises(TypeError, match="must be a list"):
        compiled().records_ok(("a",), [1], [_SHA], [None], [None])  # type: ignore[arg-type]


# --- the package layout ----------------------------------------------------------------


@st.composite
def layouts(draw: st.DrawFn) -> tuple[list[PackageInfo], list[tuple[list[Any], ...]]]:
    """Packages, and two batches of records laid out in them (mostly as a writer would,
    sometimes overlapping, out of bounds or over the declared count)."""
    packages = [
        PackageInfo(f"p{i}", f"k{i}", draw(st.integers(0, 400)), _SHA, draw(st.integers(0, 5)))
        for i in range(draw(st.integers(0, 3)))
    ]
    ends = [0] * len(packages)
    batches = []
    counter = 0
    for _ in range(2):
        cols: tuple[list[Any], ...] = ([], [], [], [])
        for _ in range(draw(st.integers(0, 6))):
            counter += 1
            path = draw(st.sampled_from(["f", "é", "日本"])) + str(counter)
            size = draw(st.integers(0, 60))
            index = draw(st.one_of(st.none(), st.integers(-1, len(packages))))
            if index is None or not 0 <= index < len(packages):
                offset = None if index is None else 30
            else:
                gap = draw(st.integers(-10, 10)) if draw(st.booleans()) else 0
                offset = ends[index] + 30 + len(path.encode()) + gap
                ends[index] = offset + size
            for column, value in zip(cols, (path, size, index, offset), strict=True):
                column.append(value)
        if draw(st.booleans()) and cols[0]:
            at = draw(st.integers(0, len(cols[0]) - 1))
            cols[draw(st.integers(1, 3))][at] = draw(_NUMBERS)
        batches.append(cols)
    return packages, batches


@needs_compiled
@settings(max_examples=1000)
@given(layouts())
def test_layout_add_agrees_with_python(
    layout: tuple[list[PackageInfo], list[tuple[list[Any], ...]]],
) -> None:
    packages, batches = layout

    def bad(message: str, entry: str | None = None) -> UnsafePackage:
        return UnsafePackage(message, obj="m", entry=entry)

    fast, slow = LayoutCheck(packages, bad), LayoutCheck(packages, bad)
    for paths, sizes, indexes, offsets in batches:
        before = (list(fast._end), list(fast.used))
        cleared = compiled().layout_add(
            fast._sizes, fast._entries, fast._end, fast.used, paths, sizes, indexes, offsets
        )
        try:
            slow.python_add(paths, sizes, indexes, offsets)
            passed = True
        except (UnsafePackage, TypeError):
            passed = False
        if cleared:
            assert passed and (fast._end, fast.used) == (slow._end, slow.used)
        else:
            assert (fast._end, fast.used) == before  # untouched: the Python check decides
            # Refused only what Python refuses, or values it cannot hold in 64 bits.
            assert not passed or any(
                type(v) is not int or not 0 <= v < 2**62
                for v in sizes + offsets + indexes
                if v is not None
            )
            return


# --- paths in one tree -----------------------------------------------------------------


def tree_clear(paths: list[str]) -> bool:
    return compiled().tree_clear(paths, fold)


@needs_compiled
@settings(max_examples=1000)
@given(st.lists(st.text("aAbB/._", max_size=5), max_size=8))
def test_tree_clear_agrees_with_python_on_ascii(paths: list[str]) -> None:
    assert tree_clear(paths) == (python_tree_problem(paths) is None)
    ordered = sorted(set(paths))
    assert tree_clear(ordered) == (python_tree_problem(ordered) is None)


@needs_compiled
@settings(max_examples=500)
@given(st.lists(st.text("ab/", min_size=1, max_size=6), max_size=10, unique=True))
def test_tree_clear_on_sorted_lowercase_paths(paths: list[str]) -> None:
    """What a checked manifest holds: the bisecting path of the compiled check."""
    paths.sort()
    assert tree_clear(paths) == (python_tree_problem(paths) is None)


# Characters that fold onto others: case, Kelvin sign and long s onto ASCII letters,
# composed and decomposed accents, sharp s onto "ss", wide characters, a lone surrogate.
_FOLDING = st.lists(
    st.sampled_from(["a", "A", "k", "K", "s", "S", "/", "\u212a", "\u017f", "é", "É", "e\u0301"])
    | st.sampled_from(["ß", "ss", "SS", "日", "\U0001f600", "\ud800", "Ǆ", "ǆ", "ǅ", "."]),
    max_size=5,
).map("".join)


@needs_compiled
@settings(max_examples=1500)
@given(st.lists(_FOLDING, max_size=7), st.booleans())
def test_tree_clear_agrees_with_python_on_unicode(paths: list[str], ordered: bool) -> None:
    if ordered:
        paths = sorted(set(paths))
    assert tree_clear(paths) == (python_tree_problem(paths) is None)


@needs_compiled
@settings(max_examples=500)
@given(st.lists(_PATHS, max_size=6))
def test_tree_clear_on_any_paths(paths: list[str]) -> None:
    assert tree_clear(paths) == (python_tree_problem(paths) is None)


# --- the JSON of a shard ---------------------------------------------------------------


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (1 == True == 1.0 does not count)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(map(same, a, b))
    return bool(a == b)


def agrees_with_json(data: bytes) -> Any:
    """What loads_columns returns for ``data``: None, or exactly what json.loads returns."""
    found = compiled().loads_columns(data)
    if found is not None:
        assert same(found, json.loads(data))
    return found


_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=False),
    st.text(),
    st.sampled_from(["", "é日\U0001f600", 'a"b', "a\\b", "\x7f", "\n"]),
)
_JSON = st.recursive(
    _SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner)
)
_COLUMNS = st.dictionaries(
    st.text(max_size=8),
    st.one_of(
        st.lists(st.one_of(st.none(), st.integers(-(10**19), 10**19), st.text()), max_size=6),
        _SCALARS,
    ),
    max_size=6,
)


def _encode(doc: Any, compact: bool, ascii: bool) -> bytes:
    separators = (",", ":") if compact else (", ", ": ")
    return json.dumps(doc, separators=separators, ensure_ascii=ascii).encode()


@needs_compiled
@settings(max_examples=500)
@given(st.one_of(_JSON, _COLUMNS), st.booleans(), st.booleans())
def test_loads_columns_is_json_loads_or_declines(doc: Any, compact: bool, ascii: bool) -> None:
    found = agrees_with_json(_encode(doc, compact, ascii))
    if found is None:
        return
    assert isinstance(doc, dict)


@needs_compiled
@settings(max_examples=300)
@given(_COLUMNS, st.booleans())
def test_loads_columns_reads_columns_of_plain_strings(doc: dict[str, Any], compact: bool) -> None:
    """Integers of up to 18 digits, nulls and strings with nothing to escape: read here."""

    def plain(value: Any) -> bool:
        if isinstance(value, list):
            return all(map(plain, value))
        if isinstance(value, str):
            return json.dumps(value, ensure_ascii=False) == f'"{value}"'
        return value is None or (type(value) is int and abs(value) < 10**18)

    found = agrees_with_json(_encode(doc, compact, False))
    assert (found is not None) == all(plain(k) and plain(v) for k, v in doc.items())


def _shard_json(*paths: str) -> bytes:
    files = [FileEntry(p, 10**i, _SHA, i % 2 or None, 2**i + 30) for i, p in enumerate(paths)]
    files = [f if f.package else f._replace(package=None, offset=None) for f in files]
    return gzip.decompress(encode_shard(files))


_SHARD = _shard_json("a/b.txt", "a/é c", "b/日本\U0001f600")


@needs_compiled
@settings(max_examples=1000)
@given(st.integers(0, len(_SHARD) - 1), st.binary(max_size=3), st.integers(0, 3))
def test_loads_columns_on_damaged_shards(at: int, new: bytes, cut: int) -> None:
    """A shard's JSON with bytes replaced, inserted or cut: never read otherwise than json."""
    for data in (
        _SHARD[:at] + new + _SHARD[at + 1 :],
        _SHARD[:at] + new + _SHARD[at:],
        _SHARD[: at - cut] + _SHARD[at:],
        _SHARD[:at],
    ):
        try:
            json.loads(data)
        except ValueError:
            assert compiled().loads_columns(data) is None
        else:
            agrees_with_json(data)


@needs_compiled
def test_loads_columns_reads_what_the_writer_writes() -> None:
    assert same(compiled().loads_columns(_SHARD), json.loads(_SHARD))
    assert compiled().loads_columns(_shard_json('a/"quoted"')) is None  # an escape: json.loads


# --- file entries ----------------------------------------------------------------------


@needs_compiled
@given(columns())
def test_file_entries_are_the_python_entries_untracked(cols: tuple[list[Any], ...]) -> None:
    built = compiled().file_entries(FileEntry, *cols)
    assert built == tuple(map(_NEW_ENTRY, zip(*cols, strict=True)))
    assert all(type(e) is FileEntry and not gc.is_tracked(e) for e in built)
    assert [e.path for e in built] == cols[0]


@needs_compiled
def test_file_entries_needs_a_namedtuple_and_one_length() -> None:
    class WithDict(tuple[Any, ...]):
        pass

    with pytest.raises(TypeError, match="NamedTuple"):
        compiled().file_entries(WithDict, ["a"], [1], [_SHA], [None], [None])
    with pytest.raises(TypeError, match="NamedTuple"):
        compiled().file_entries(list, ["a"], [1], [_SHA], [None], [None])
    with pytest.raises(ValueError, match="another length"):
        compiled().file_entries(FileEntry, ["a"], [1], [_SHA], [None], [])


# --- both implementations behind the readers -------------------------------------------


@pytest.fixture(params=["compiled", "python"])
def checks(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The manifest readers with the compiled checks, and with the Python ones only."""
    if request.param == "compiled" and COMPILED is None:
        pytest.skip("_speedups is not built here (no C compiler at install)")
    if request.param == "python":
        monkeypatch.setattr(speedups, "compiled_checks", lambda: None)
    return str(request.param)


def _packaged(n: int) -> Manifest:
    files = []
    offset = 0
    for i in range(n):
        path = f"d{i // 7}/F{i:03d}.bin"
        offset += 30 + len(path)
        files.append(FileEntry(path, 10 + i, hashlib.sha256(path.encode()).hexdigest(), 0, offset))
        offset += 10 + i
    package = PackageInfo("s.v.vhpkgzip", "packages/s/v/a/s.v.vhpkgzip", offset + 22, _SHA, n)
    return Manifest("s", "v", tuple(files), (package,), created_at="t")


def _raw_shard(dataset: str, files: list[FileEntry]) -> tuple[ShardInfo, bytes]:
    """A shard of ``files`` as they are, hostile or not (the publish's writer checks them)."""
    data = encode_shard(files)
    sha = hashlib.sha256(data).hexdigest()
    info = ShardInfo(
        key=shard_key(dataset, sha),
        sha256=sha,
        size=len(data),
        count=len(files),
        bytes=sum(f.size for f in files),
        first=files[0].path,
        last=files[-1].path,
    )
    return info, data


_BASE = _packaged(30)
_ENTRY = _BASE.files[14]
_LIMITS = ShardLimits(min_files=10, max_files=10, cut_mask=0)


@pytest.mark.parametrize(
    ("at", "change", "needle"),
    [
        (14, {"path": "d2/../../x"}, "refusing path 'd2/../../x': contains '..'"),
        (14, {"path": "d2/CON"}, "refusing path 'd2/CON': a component is a reserved device"),
        (14, {"path": "d1/F013.bin"}, "path 'd1/F013.bin' is out of order or duplicated"),
        (14, {"sha256": _SHA.upper()}, f"file {_ENTRY.path!r} has a malformed sha256"),
        (14, {"size": -1}, f"file {_ENTRY.path!r} has a malformed size"),
        (14, {"offset": 29}, f"file {_ENTRY.path!r} has a malformed offset"),
        (14, {"package": 1}, f"file {_ENTRY.path!r} names package 1, which does not exist"),
        (14, {"offset": (_ENTRY.offset or 0) - 5}, f"file {_ENTRY.path!r} overlaps another entry"),
        (29, {"size": 10**6}, "lies beyond the end of its package"),
        # Shard boundaries: a file that is a directory of the next shard's first path, and
        # a case twin in another shard (each shard passes on its own).
        (10, {"path": "d1/F009.bin/x"}, "'d1/F009.bin' is a file and also a directory"),
        (0, {"path": "D1/F010.BIN"}, "collides with 'D1/F010.BIN'"),
    ],
)
def test_hostile_records_give_the_same_errors(
    checks: str, at: int, change: dict[str, Any], needle: str
) -> None:
    files = list(_BASE.files)
    files[at] = files[at]._replace(**change)
    if change.get("path") == "D1/F010.BIN":
        files[at] = files[at]._replace(offset=None, package=None)
        files.sort()
    # Shards of ten records as an attacker would write them (the writer refuses disorder).
    shards = [_raw_shard("s", files[i : i + 10]) for i in range(0, len(files), 10)]
    root = replace(
        encode_manifest(_BASE, _LIMITS)[0],
        shards=tuple(info for info, _ in shards),
        package_files=(sum(f.package is not None for f in files),),
    )
    with pytest.raises(UnsafePackage, match=re.escape(needle)):
        records = [decode_shard(data, info, obj=info.key) for info, data in shards]
        join_shards(root, root.shards, records, obj="root")


def test_sound_records_load_alike(checks: str) -> None:
    root, shards = encode_manifest(_BASE, _LIMITS)
    records = [decode_shard(data, info, obj=info.key) for info, data in shards]
    files = join_shards(root, root.shards, records, obj="root")
    assert files == _BASE.files
    assert make_entries(*records[0]) == _BASE.files[:10]
    assert all(not gc.is_tracked(f) for f in files) == (checks == "compiled")


def test_a_lone_surrogate_is_refused_alike(checks: str) -> None:
    """Bytes no UTF-8 encoder writes (json.loads reads them, as surrogatepass)."""
    text = _shard_json("a/xyz").replace(b"xyz", b"\xed\xa0\x80")
    data = gzip.compress(text, mtime=0)
    sha = hashlib.sha256(data).hexdigest()
    info = ShardInfo(shard_key("s", sha), sha, len(data), 1, 1, "a/\ud800", "a/\ud800")
    with pytest.raises(UnsafePackage, match=r"refusing path 'a/\\ud800': not valid UTF-8"):
        decode_shard(data, info, obj="s")


def test_the_collector_runs_again_when_the_last_pause_ends() -> None:
    """Shards decode in several threads, each pausing the collector: the first to finish
    must not start it under the others (nor the last start one that was off)."""
    first, second = collector_paused(), collector_paused()
    assert gc.isenabled()
    first.__enter__()
    assert not gc.isenabled()
    done = threading.Event()

    def other() -> None:
        with collector_paused():
            first.__exit__(None, None, None)  # the first pause ends: this one still holds
            assert not gc.isenabled()
        done.set()

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert done.is_set() and gc.isenabled()
    gc.disable()
    try:
        with second:
            assert not gc.isenabled()
        assert not gc.isenabled()  # it was off before: it stays off
    finally:
        gc.enable()
