"""Checks of untrusted file records, column by column (pure).

A manifest from the store (v1, or a v2 shard) is untrusted input. Its records arrive as
columns (paths, sizes, hashes, package indexes, offsets); checking a column in one C-level
pass instead of a million Python-level steps is what makes a million-file manifest load
in about a second. Where ``_speedups`` is built, ``_checks.c`` runs each check in one C loop
per column; it only ever answers "all clear", and otherwise the Python twin here
(``python_records_ok``, ``LayoutCheck.python_add``, ``paths.python_tree_problem``) runs
again: property tests hold the two together. When a fast check fails,
:func:`first_bad_record` walks the records one by one to name the first bad one.

Checks come in three kinds, by what they depend on:

- the records alone (:func:`records_ok`): paths follow the path rule and are sorted and
  unique, sizes and offsets are non-negative integers, hashes are lowercase hex. A v2
  shard passes these once; the cache keeps it under its hash and never checks it again.
- the packages of the version (:class:`LayoutCheck`): indexes name a package, every entry
  lies inside its package, the entries of a package follow one another in path order
  without overlapping (as the package writer lays them out), and no package holds more
  files than it declares. Shards are fed in path order, so this holds across shards.
- every path loaded together (:func:`tree_check`): no duplicate, no case or Unicode
  collision, no file that is also a directory. Across shards too: a boundary between
  shards must not hide a collision.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from array import array
from collections.abc import Callable, Iterable, Sequence
from itertools import groupby, islice, repeat
from operator import add, is_, is_not, le, sub
from typing import TYPE_CHECKING, Any

from dspkg import speedups
from dspkg import zipformat as zf
from dspkg.errors import UnsafePackage
from dspkg.paths import all_paths_ok, directories, path_problem, tree_problem

if TYPE_CHECKING:
    from dspkg.manifest import PackageInfo

Bad = Callable[..., UnsafePackage]  # bad(message, entry=None): the error naming the object

_SHA256 = re.compile(r"[0-9a-f]{64}")
_NONE = type(None)


def records_ok(
    paths: list[Any], sizes: list[Any], shas: list[Any], indexes: list[Any], offsets: list[Any]
) -> bool:
    """Whether every record is well formed on its own (see the module docstring)."""
    compiled = speedups.compiled_checks()
    if compiled is not None and all_lists(paths, sizes, shas, indexes, offsets):
        return compiled.records_ok(paths, sizes, shas, indexes, offsets)
    return python_records_ok(paths, sizes, shas, indexes, offsets)


def all_lists(*columns: Any) -> bool:
    """Whether every column is a list (what the compiled checks take)."""
    return all(type(c) is list for c in columns)


def python_records_ok(
    paths: list[Any], sizes: list[Any], shas: list[Any], indexes: list[Any], offsets: list[Any]
) -> bool:
    """:func:`records_ok` in Python (where ``_speedups`` is not built; the twin its
    property test holds it to)."""
    if not paths:
        return True
    if set(map(type, sizes)) != {int} or min(sizes) < 0:
        return False
    if set(map(type, shas)) != {str} or not _lowercase_hex64(shas):
        return False
    if not set(map(type, indexes)) <= {int, _NONE} or not set(map(type, offsets)) <= {int, _NONE}:
        return False
    # A record is packaged (index and offset) or not (neither).
    if list(map(is_, indexes, repeat(None))) != list(map(is_, offsets, repeat(None))):
        return False
    if min(filter(_present, offsets), default=zf.LOCAL.size) < zf.LOCAL.size:
        return False
    if min(filter(_present, indexes), default=0) < 0:
        return False
    return all_paths_ok(paths) and all(map(str.__lt__, paths, islice(paths, 1, None)))


_present = functools.partial(is_not, None)


def _lowercase_hex64(shas: list[str]) -> bool:
    """Every string is 64 lowercase hex digits (bytes.fromhex in C, instead of a regex)."""
    if set(map(len, shas)) != {64}:
        return False
    joined = "".join(shas)
    if any(c in joined for c in "ABCDEF"):
        return False
    try:
        # fromhex skips whitespace: a shorter result means some was there.
        return len(bytes.fromhex(joined)) * 2 == len(joined)
    except ValueError:
        return False


def first_bad_record(
    paths: list[Any], sizes: list[Any], shas: list[Any], indexes: list[Any], offsets: list[Any]
) -> tuple[str, str | None] | None:
    """``(message, path)`` for the first record that :func:`records_ok` refuses."""
    previous = ""
    for path, size, sha, index, offset in zip(paths, sizes, shas, indexes, offsets, strict=True):
        problem = path_problem(path)
        if problem:
            return f"refusing path {path!r}: {problem}", str(path)
        if path <= previous:
            return f"path {path!r} is out of order or duplicated", path
        previous = path
        if type(size) is not int or size < 0:
            return f"file {path!r} has a malformed size", path
        if type(sha) is not str or not _SHA256.fullmatch(sha):
            return f"file {path!r} has a malformed sha256", path
        if index is not None or offset is not None:
            if type(index) is not int or index < 0:
                return f"file {path!r} names package {index!r}, which does not exist", path
            if type(offset) is not int or offset < zf.LOCAL.size:
                return f"file {path!r} has a malformed offset", path
    return None


def check_records(
    paths: list[Any],
    sizes: list[Any],
    shas: list[Any],
    indexes: list[Any],
    offsets: list[Any],
    bad: Bad,
) -> None:
    """Raise ``bad(...)`` naming the first malformed record, if any."""
    if records_ok(paths, sizes, shas, indexes, offsets):
        return
    found = first_bad_record(paths, sizes, shas, indexes, offsets)
    if found is None:  # records_ok and the walk disagree: never name nothing
        raise bad("malformed file records")
    raise bad(found[0], found[1])


def tree_check(paths: list[str], bad: Bad) -> None:
    """No two paths loaded together collide (duplicates, case, directories); ``paths`` are
    strictly sorted (checked records, shards in order)."""
    collision = tree_problem(paths, strictly_sorted=True)
    if collision:
        raise bad(f"path {collision[0]!r} {collision[1]}", collision[0])


class LayoutCheck:
    """Where the files of a version lie in its packages, checked as records are fed in
    path order (one v1 manifest, or v2 shards one after another).

    Packages are written in path order, so the entries a version uses from one package
    must come one after another: each entry's local header starts at or after the end
    of the previous entry's data. That rules out overlapping entries (which would
    multiply a package's bytes in the output) in one pass, across shards, with one
    number per package kept between them.
    """

    def __init__(self, packages: Sequence[PackageInfo], bad: Bad) -> None:
        self._packages = packages
        self._bad = bad
        self._end = [0] * len(packages)
        self.used = [0] * len(packages)  # files of the version in each package
        self._sizes = [p.size for p in packages]
        self._entries = [p.entries for p in packages]

    def add(
        self, paths: list[str], sizes: list[int], indexes: list[Any], offsets: list[Any]
    ) -> None:
        compiled = speedups.compiled_checks()
        # The compiled check applies the records only when all of them pass; otherwise
        # the walk below runs from the same state and names the first bad one.
        if (
            compiled is not None
            and all_lists(paths, sizes, indexes, offsets)
            and compiled.layout_add(
                self._sizes, self._entries, self._end, self.used, paths, sizes, indexes, offsets
            )
        ):
            return
        self.python_add(paths, sizes, indexes, offsets)

    def python_add(
        self, paths: list[str], sizes: list[int], indexes: list[Any], offsets: list[Any]
    ) -> None:
        """:meth:`add` in Python (the twin of the compiled check)."""
        position = 0
        for index, run in groupby(indexes):
            count = len(list(run))
            if index is not None:
                self._run(index, position, position + count, paths, sizes, offsets)
            position += count

    def _run(
        self,
        index: int,
        start: int,
        stop: int,
        paths: list[str],
        sizes: list[int],
        offsets: list[int],
    ) -> None:
        bad = self._bad
        if not 0 <= index < len(self._packages):
            path = paths[start]
            raise bad(f"file {path!r} names package {index!r}, which does not exist", path)
        names = paths[start:stop]
        offs = offsets[start:stop]
        ends = list(map(add, offs, sizes[start:stop]))
        lengths = map(len, names) if "".join(names).isascii() else map(len, map(str.encode, names))
        heads = list(map(sub, offs, map(zf.LOCAL.size.__add__, lengths)))
        if heads[0] < self._end[index] or not all(map(le, ends, islice(heads, 1, None))):
            previous = self._end[index]
            for name, head, end in zip(names, heads, ends, strict=True):
                if head < previous:
                    raise bad(f"file {name!r} overlaps another entry of its package", name)
                previous = end
        package = self._packages[index]
        if ends[-1] > package.size:
            name = next(n for n, e in zip(names, ends, strict=True) if e > package.size)
            raise bad(f"file {name!r} lies beyond the end of its package", name)
        self._end[index] = ends[-1]
        self.used[index] += stop - start
        if self.used[index] > package.entries:
            raise bad(f"package {package.name!r} holds more files than it declares")


def _folded(paths: Sequence[str]) -> list[str]:
    joined = "\n".join(paths)
    if joined.isascii():
        return joined.lower().split("\n")
    return unicodedata.normalize("NFC", joined).casefold().split("\n")


_directories = directories


class CollisionCheck:
    """Collisions among paths fed in batches (shard by shard), in bounded memory.

    Holding every path of a ten-million-file version to compare them would take gigabytes;
    this keeps 8 bytes per file and per directory instead: the hash of each folded path
    (:func:`~dspkg.paths.fold`). :meth:`suspects` returns the hashes seen twice among files
    or among both files and directories; a second pass over the paths
    (:meth:`collision_among`) names the pair, or finds two different paths that merely
    share a hash (then there is no collision).
    """

    def __init__(self) -> None:
        self._files = array("q")
        self._dirs = array("q")

    def add(self, paths: Sequence[str]) -> None:
        folded = _folded(paths)
        self._files.extend(map(hash, folded))
        self._dirs.extend(map(hash, _directories(folded)))

    def suspects(self) -> frozenset[int]:
        files = sorted(self._files)
        twice = {a for a, b in zip(files, islice(files, 1, None), strict=False) if a == b}
        dirs = set(self._dirs)
        return frozenset(twice | dirs.intersection(files))

    @staticmethod
    def collision_among(paths: Iterable[str], suspects: frozenset[int]) -> tuple[str, str] | None:
        """The collision among ``paths`` (the same ones, again) whose folded hash or whose
        folded directories' hashes are suspect."""
        chosen = []
        for path in paths:
            folded = _folded([path])
            if hash(folded[0]) in suspects or suspects.intersection(
                map(hash, _directories(folded))
            ):
                chosen.append(path)
        return tree_problem(chosen)
