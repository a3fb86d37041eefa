"""Which relative paths dspkg accepts in a version (pure).

The same rules apply when publishing (so every version can be pulled anywhere) and
when reading a manifest or package from the store (untrusted input). A bad path is
refused, never rewritten: silently sanitizing ``../a`` into ``a`` hides attacks and
makes two entries collide.
"""

from __future__ import annotations

import bisect
import itertools
import re
import unicodedata
from array import array
from collections.abc import Iterable, Iterator, Sequence
from operator import itemgetter
from typing import overload

from dspkg import speedups

MAX_PATH_BYTES = 4096
MAX_COMPONENT_BYTES = 255

_BAD_CHARS = r"\x00-\x1f\x7f\\/"


def _component(end: str) -> str:
    """One component: no control characters, backslash or slash; not ending in "." or " "
    (which also rules out "." and ".."); no drive prefix like "C:"; no Windows device name."""
    return (
        r"(?![A-Za-z]:)"
        rf"(?!(?i:con|prn|aux|nul|com[0-9]|lpt[0-9])(?:/|{end}))"
        rf"[^{_BAD_CHARS}]*[^{_BAD_CHARS}. ]"
    )


_END = r"\Z"
_ONE = _component(_END)
_PATH = re.compile(f"(?:{_ONE}/)*{_ONE}")

# The same rules checked over many paths joined by newlines, in a few passes over one
# string instead of one regex match per path (a million paths: tenths of a second, not
# seconds). Each pass finds one kind of refusal; ``all_paths_ok`` must agree with
# ``path_problem`` (a property test holds them together).
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")
_DRIVE = re.compile(r"(?:\A|[/\n])[A-Za-z]:")
_DEVICE_STEMS = ("/co", "/prn", "/aux", "/nul", "/lpt")  # a component starting so
_DEVICE = re.compile(r"[/\n](?i:con|prn|aux|nul|com[0-9]|lpt[0-9])(?=[/\n])")


def path_problem(path: object) -> str | None:
    """Why ``path`` is not an acceptable relative file path, or None when it is."""
    if not isinstance(path, str) or not path:
        return "empty or not a string"
    if not _PATH.fullmatch(path):
        return _explain(path)
    if not path.isascii():
        try:
            encoded = path.encode("utf-8")
        except UnicodeEncodeError:
            return "not valid UTF-8"
        if len(encoded) > MAX_PATH_BYTES:
            return f"longer than {MAX_PATH_BYTES} bytes"
        if any(len(part.encode()) > MAX_COMPONENT_BYTES for part in path.split("/")):
            return f"a component is longer than {MAX_COMPONENT_BYTES} bytes"
    elif len(path) > MAX_COMPONENT_BYTES:
        if len(path) > MAX_PATH_BYTES:
            return f"longer than {MAX_PATH_BYTES} bytes"
        if any(len(part) > MAX_COMPONENT_BYTES for part in path.split("/")):
            return f"a component is longer than {MAX_COMPONENT_BYTES} bytes"
    return None


def all_paths_ok(paths: Sequence[str]) -> bool:
    """Whether every path is acceptable (``path_problem`` is None for each), fast."""
    compiled = speedups.compiled_checks()
    if compiled is not None and type(paths) is list:
        return compiled.paths_ok(paths)
    return python_all_paths_ok(paths)


def python_all_paths_ok(paths: Sequence[str]) -> bool:
    """:func:`all_paths_ok` in Python (the twin of the compiled check)."""
    if not paths:
        return True
    if set(map(type, paths)) != {str}:
        return False
    joined = "\n".join(paths)
    # A path holding a newline would hide among the separators: count them.
    if not joined or joined.count("\n") != len(paths) - 1:
        return False
    # With newlines as slashes, "//" is an empty component or path, "./" and " /" a
    # component ending in "." or " " (so also "." and "..").
    slashed = joined.replace("\n", "/")
    if slashed[0] == "/" or slashed[-1] in "/. " or "//" in slashed or "./" in slashed:
        return False
    if (" " in slashed and " /" in slashed) or "\\" in joined:
        return False
    # isprintable is a fast pass that is also false for harmless Unicode spaces.
    if not slashed.isprintable() and _CONTROL.search(joined):
        return False
    if ":" in joined and _DRIVE.search(joined):
        return False
    lowered = f"/{slashed.lower()}"
    if any(stem in lowered for stem in _DEVICE_STEMS) and _DEVICE.search(f"\n{joined}\n"):
        return False
    if joined.isascii():
        longest = max(map(len, paths))
    else:
        try:
            longest = max(map(len, map(str.encode, paths)))
        except UnicodeEncodeError:
            return False
    if longest <= MAX_COMPONENT_BYTES:
        return True
    return not any(path_problem(p) for p in paths)


def _explain(path: str) -> str:
    if path.startswith("/"):
        return "absolute path"
    if "\\" in path:
        return "contains a backslash"
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        return "contains a control character"
    parts = path.split("/")
    if "" in parts:
        return "empty path component (// or a trailing /)"
    if ".." in parts:
        return "contains '..'"
    if "." in parts:
        return "contains '.' as a component"
    if any(re.match(r"[A-Za-z]:", p) for p in parts):
        return "contains a drive letter"
    if any(p.endswith((".", " ")) for p in parts):
        return "a component ends with '.' or a space"
    return "a component is a reserved device name"


def fold(path: str) -> str:
    """The form under which two paths collide on case-insensitive or normalizing file systems."""
    if path.isascii():
        return path.lower()
    return unicodedata.normalize("NFC", path).casefold()


class PathList(Sequence[str]):
    """Paths held as one string with a newline between them (no path holds a control
    character) and where each starts: the paths' length and 8 bytes each, where a list
    of strings costs about 60 bytes more a path (a million paths of 20 characters: 28 MB,
    not 88). A path is a new string each time it is asked for; they come a few thousand
    at a time when iterated (one split each)."""

    __slots__ = ("_starts", "_text")

    def __init__(self, paths: Iterable[str] = ()) -> None:
        items = paths if isinstance(paths, list) else list(paths)
        self._text = "\n".join(items)
        if self._text.count("\n") != max(0, len(items) - 1) or (items and not all(items)):
            raise ValueError("a path is empty or holds a newline")
        self._starts = array("q", itertools.accumulate(map(len, items), _next_start, initial=0))

    @property
    def text(self) -> str:
        """Every path, a newline between each two."""
        return self._text

    def __len__(self) -> int:
        return len(self._starts) - 1

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step == 1:
                return list(self.range(start, max(start, stop)))
            return [self[i] for i in range(start, stop, step)]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("PathList index out of range")
        return self._text[self._starts[index] : self._starts[index + 1] - 1]

    def __iter__(self) -> Iterator[str]:
        return self.range(0, len(self))

    def __repr__(self) -> str:
        return f"<PathList: {len(self):,} paths>"

    def range(self, start: int, stop: int) -> Iterator[str]:
        """The paths from ``start`` to ``stop``, in order."""
        starts = self._starts
        for at in range(start, stop, _SPLIT):
            end = min(at + _SPLIT, stop)
            yield from self._text[starts[at] : starts[end] - 1].split("\n")


_SPLIT = 4096  # paths made at once when a PathList is iterated


def _next_start(start: int, length: int) -> int:
    return start + length + 1


def tree_problem(paths: Iterable[str], *, strictly_sorted: bool = False) -> tuple[str, str] | None:
    """Find the first pair of paths that cannot live in one tree together.

    Returns ``(path, reason)`` for a duplicate, a case or Unicode-normalization
    collision, or a file that is also a directory of another path; else None.
    ``strictly_sorted`` says the caller checked that the paths are sorted and unique.
    """
    paths = paths if isinstance(paths, list) else list(paths)
    compiled = speedups.compiled_checks()
    if compiled is not None and compiled.tree_clear(paths, fold):
        return None
    return python_tree_problem(paths, strictly_sorted=strictly_sorted)


def python_tree_problem(
    paths: list[str], *, strictly_sorted: bool = False
) -> tuple[str, str] | None:
    """:func:`tree_problem` in Python (what names a collision, and the twin of the compiled
    check, which only ever says there is none)."""
    joined = "\n".join(paths)
    if (
        joined.isascii()
        and joined == joined.lower()
        and (strictly_sorted or _strictly_sorted(paths))
    ):
        # Nothing folds and nothing repeats: only a file that is also a directory is
        # left to find, by looking each directory up among the sorted paths.
        if not any(_found(paths, d) for d in directories(paths)):
            return None
        return _first_collision(paths)
    folded = (
        joined.lower() if joined.isascii() else unicodedata.normalize("NFC", joined).casefold()
    ).split("\n")
    files = set(folded)
    if len(files) == len(folded) == len(paths) and not files & directories(folded):
        return None
    return _first_collision(paths)


def _strictly_sorted(paths: Sequence[str]) -> bool:
    return all(map(str.__lt__, paths, itertools.islice(paths, 1, None)))


def directories(paths: Iterable[str]) -> set[str]:
    """Every directory the paths need, ancestors included."""
    dirs: set[str] = set()
    level = set(map(itemgetter(0), map(str.rpartition, paths, itertools.repeat("/")))) - {""}
    while level:
        dirs |= level
        level = {d.rpartition("/")[0] for d in level} - dirs - {""}
    return dirs


def _found(paths: Sequence[str], path: str) -> bool:
    at = bisect.bisect_left(paths, path)
    return at < len(paths) and paths[at] == path


def _first_collision(paths: Iterable[str]) -> tuple[str, str] | None:
    seen: dict[str, str] = {}
    dirs: dict[str, str] = {}
    for path in paths:
        key = fold(path)
        other = seen.get(key)
        if other is not None:
            what = "duplicate path" if other == path else f"collides with {other!r}"
            return path, what
        seen[key] = path
        parent = key.rpartition("/")[0]
        while parent and parent not in dirs:
            dirs[parent] = path
            parent = parent.rpartition("/")[0]
    for key, path in seen.items():
        if key in dirs:
            return path, f"is a file and also a directory of {dirs[key]!r}"
    return None
