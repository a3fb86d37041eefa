"""Which relative paths dspkg accepts in a version (pure).

The same rules apply when publishing (so every version can be pulled anywhere) and
when reading a manifest or package from the store (untrusted input). A bad path is
refused, never rewritten: silently sanitizing ``../a`` into ``a`` hides attacks and
makes two entries collide.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence

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
_LINE_END = r"\n|\Z"
_ONE = _component(_END)
_PATH = re.compile(f"(?:{_ONE}/)*{_ONE}")
# Many paths joined by newlines, checked in one pass (components never hold a newline).
_IN_LINES = _component(_LINE_END)
_MANY = re.compile(f"(?:(?:{_IN_LINES}/)*{_IN_LINES}\n)*(?:{_IN_LINES}/)*{_ONE}")


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
    """Whether every path is acceptable; one regex pass instead of one call per path."""
    if not paths:
        return True
    joined = "\n".join(paths)
    if not _MANY.fullmatch(joined):
        return False
    if joined.isascii() and max(map(len, paths)) <= MAX_COMPONENT_BYTES:
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


def tree_problem(paths: Iterable[str]) -> tuple[str, str] | None:
    """Find the first pair of paths that cannot live in one tree together.

    Returns ``(path, reason)`` for a duplicate, a case or Unicode-normalization
    collision, or a file that is also a directory of another path; else None.
    """
    paths = list(paths)
    joined = "\n".join(paths)
    folded = (
        joined.lower() if joined.isascii() else unicodedata.normalize("NFC", joined).casefold()
    ).split("\n")
    files = set(folded)
    if len(files) == len(folded) and len(folded) == len(paths):
        dirs: set[str] = set()
        level = {f.rpartition("/")[0] for f in folded} - {""}
        while level:
            dirs |= level
            level = {d.rpartition("/")[0] for d in level} - dirs - {""}
        if not files & dirs:
            return None
    return _first_collision(paths)


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
