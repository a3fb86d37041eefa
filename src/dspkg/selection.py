"""Which files of a version a pull takes: glob patterns and path lists (pure).

Patterns are matched against the manifest's paths, never the local disk, with the
rules of ``.gitignore`` that users know:

- ``*`` matches within one path component, ``?`` one character other than ``/``,
  ``[abc]``, ``[a-z]``, ``[!a]`` (or ``[^a]``) one character of a class (never ``/``);
  ``\\`` makes the next character literal.
- ``**`` as a whole component crosses folders: ``**/x`` (``x`` at any depth),
  ``a/**/b`` (``b`` anywhere under ``a``), ``dir/**`` (everything under ``dir``).
- A pattern with a ``/`` at its start or in its middle is anchored at the version's
  root (``/train`` or ``train/cat``); one without (``*.jpg``, ``cat``) matches at any
  depth.
- A pattern that matches a folder selects everything under it; a trailing ``/``
  (``cat/``) matches folders only.

Includes (patterns and listed paths together) pick files, then excludes remove some.
The patterns are compiled once into one regular expression that one scan in C runs
over all the paths joined by line breaks, so a million paths take a fraction of a
second.
"""

from __future__ import annotations

import bisect
import functools
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import chain, compress
from operator import itemgetter

from dspkg.errors import SelectionError, UsageError
from dspkg.manifest import FileEntry

# How many missing list entries an error names before it says "and N more".
NAMED_AT_MOST = 5
_CLASS_NEGATIONS = ("!", "^")

_Bad = Callable[[str], UsageError]
_PATH = itemgetter(0)  # a FileEntry's path


@dataclass(frozen=True)
class Pattern:
    """One glob, translated: ``regex`` matches whole paths, ``prefix`` is the literal text
    every matching path starts with ("" when the pattern is not anchored)."""

    text: str
    regex: str
    prefix: str


def compile_pattern(text: str, *, option: str = "--include") -> Pattern:
    """Translate one glob; a malformed one is a :class:`UsageError` naming it."""

    def bad(why: str) -> UsageError:
        return UsageError(f"{option} {text!r}: {why}")

    if not text or not text.strip():
        raise bad("an empty pattern; give a glob such as 'images/**' or '*.jpg'")
    if text.startswith("!"):
        raise bad("'!' negation is not supported here; use --exclude (or '\\!' for a literal !)")
    body = text
    anchored = body.startswith("/")
    body = body.lstrip("/")
    folder_only = body.endswith("/")
    body = body.rstrip("/")
    if not body:
        raise bad("matches every file; leave the option out to take the whole version")
    anchored = anchored or "/" in body
    regex, prefix = _translate(body, bad)
    head = "" if anchored else "(?:.*/)?"
    # A pattern that names a folder takes what is under it.
    tail = "/.*" if folder_only else "(?:/.*)?"
    # "Any folders, then any name" is any line: the shorter form saves the engine most of
    # its backtracking on `*.jpg` and `**/*x` (a third of the time on a million paths).
    full = f"{head}{regex}{tail}".replace("(?:.*/)?[^/\\n]*", ".*")
    try:
        re.compile(full)
    except re.error as exc:  # a reversed range such as [z-a]
        raise bad(f"malformed character class ({exc.msg})") from None
    return Pattern(text=text, regex=full, prefix=prefix if anchored else "")


def _translate(body: str, bad: _Bad) -> tuple[str, str]:
    """The regex of a pattern body (no leading or trailing ``/``) and its literal prefix."""
    out: list[str] = []
    prefix: list[str] = []
    literal = True  # still in the literal head of the pattern
    i, n = 0, len(body)
    while i < n:
        c = body[i]
        if c == "\\":
            if i + 1 == n:
                raise bad("ends with a lone '\\'")
            out.append(re.escape(body[i + 1]))
            if literal:
                prefix.append(body[i + 1])
            i += 2
            continue
        if c == "*":
            j = i
            while j < n and body[j] == "*":
                j += 1
            whole = (i == 0 or body[i - 1] == "/") and (j == n or body[j] == "/")
            if j - i >= 2 and whole:
                if j == n:  # `dir/**` or `**`: everything below
                    out.append(".*")
                else:  # `**/`: zero or more folders
                    out.append("(?:.*/)?")
                    j += 1
            else:  # `*`, or `**` inside a component, as .gitignore reads it
                out.append("[^/\\n]*")
            literal = False
            i = j
            continue
        if c == "?":
            out.append("[^/\\n]")
            literal = False
            i += 1
            continue
        if c == "[":
            regex, i = _char_class(body, i, bad)
            out.append(regex)
            literal = False
            continue
        out.append(re.escape(c))
        if literal:
            prefix.append(c)
        i += 1
    return "".join(out), "".join(prefix)


def _char_class(body: str, start: int, bad: _Bad) -> tuple[str, int]:
    """``[...]`` at ``start``: its regex (never matching ``/``) and the index after it."""
    i = start + 1
    negate = i < len(body) and body[i] in _CLASS_NEGATIONS
    if negate:
        i += 1
    items: list[str] = []
    first = True
    while i < len(body) and (body[i] != "]" or first):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            items.append(re.escape(body[i + 1]))
            i += 2
        else:
            # '-' between two characters is a range; anywhere else a literal.
            between = c == "-" and not first and i + 1 < len(body) and body[i + 1] != "]"
            items.append("-" if between else re.escape(c))
            i += 1
        first = False
    if i >= len(body):
        raise bad(f"'[' at position {start + 1} is never closed; write '\\[' for a literal [")
    content = "".join(items)
    if negate:
        return f"[^/\\n{content}]", i + 1
    return f"(?![/\\n])[{content}]", i + 1


def parse_list(text: str) -> tuple[str, ...]:
    """The paths of a ``--files-from`` list: one a line, taken verbatim except a leading
    ``./`` (as ``find .`` prints them) and the line ending; blank lines and lines
    starting with ``#`` are skipped."""
    paths = []
    for raw in text.split("\n"):  # not splitlines(): a path may hold U+2028 and the like
        line = raw.removesuffix("\r")
        if not line.strip() or line.startswith("#"):
            continue
        paths.append(line.removeprefix("./"))
    return tuple(paths)


@dataclass(frozen=True)
class Selection:
    """Includes (patterns and listed paths) then excludes; empty includes take every file.

    Build with :meth:`build`, which checks and compiles every pattern up front.
    """

    include: tuple[Pattern, ...] = ()
    exclude: tuple[Pattern, ...] = ()
    listed: tuple[str, ...] | None = None  # the --files-from paths, if a list was given
    list_name: str = "--files-from"
    allow_empty: bool = False

    @classmethod
    def build(
        cls,
        include: Iterable[str] = (),
        exclude: Iterable[str] = (),
        listed: Iterable[str] | None = None,
        *,
        list_name: str = "--files-from",
        allow_empty: bool = False,
    ) -> Selection:
        return cls(
            include=tuple(compile_pattern(p, option="--include") for p in include),
            exclude=tuple(compile_pattern(p, option="--exclude") for p in exclude),
            listed=None if listed is None else tuple(dict.fromkeys(listed)),
            list_name=list_name,
            allow_empty=allow_empty,
        )

    @property
    def everything(self) -> bool:
        """No pattern and no list: the whole version."""
        return not self.include and not self.exclude and self.listed is None

    def matches(self, path: str) -> bool:
        """Whether ``path`` is selected (:meth:`apply` does many at once, and checks)."""
        if self.listed is not None and path in self.listed:
            return _hit(_line_regex((), self.exclude), path)
        if self.listed is not None and not self.include:
            return False
        return _hit(_line_regex(self.include, self.exclude), path)

    def apply(self, files: Sequence[FileEntry], *, where: str) -> tuple[FileEntry, ...]:
        """The selected ``files`` (sorted by path, as a manifest's are), in their order.

        An include or a listed path that matches nothing, or an empty result, is a
        :class:`SelectionError` naming it (unless ``allow_empty``); ``where`` names the
        version in messages.
        """
        if self.everything or not files:
            return tuple(files)
        at: list[int] = []
        if self.listed is not None:
            at = self._locate(files, where)
        # Only the runs of paths that start with an include's literal prefix can match
        # it. Each run is joined into one text that one regex scans in C (manifest paths
        # hold no line break): far cheaper than a call per path.
        runs = []
        if self.include or self.listed is None:
            for lo, hi in self._spans(files):
                run = files[lo:hi]
                runs.append((lo, run, "\n".join([f.path for f in run])))
        if self.listed is None:
            fused = _line_regex(self.include, self.exclude)  # yields "" for lines not taken
            chosen = tuple(chain.from_iterable(compress(r, fused.findall(t)) for _, r, t in runs))
        else:
            taken = set(at)
            if self.include:
                found = _line_regex(self.include, ())
                for lo, run, text in runs:
                    taken.update(compress(range(lo, lo + len(run)), found.findall(text)))
            chosen = tuple(files[i] for i in sorted(taken))
            if self.exclude and chosen:
                kept = _line_regex((), self.exclude)
                chosen = tuple(compress(chosen, kept.findall("\n".join(f.path for f in chosen))))
        if self.include and not self.allow_empty:
            self._check_includes(chosen, [text for _, _, text in runs], where)
        if not chosen and not self.allow_empty:
            raise SelectionError(
                f"the selection of {where} is empty: {self._describe()} leave no file; "
                "check the patterns (dspkg show --files lists the paths), or give --allow-empty",
                items=(),
            )
        return chosen

    def _spans(self, files: Sequence[FileEntry]) -> list[tuple[int, int]]:
        """Index ranges of ``files`` that the includes may match, sorted and disjoint."""
        prefixes = {p.prefix for p in self.include}
        if not prefixes or "" in prefixes:
            return [(0, len(files))]
        spans: list[tuple[int, int]] = []
        for prefix in sorted(prefixes):
            lo = bisect.bisect_left(files, prefix, key=_PATH)
            last = ord(prefix[-1])
            hi = (
                bisect.bisect_left(files, prefix[:-1] + chr(last + 1), key=_PATH)
                if last < sys.maxunicode
                else len(files)
            )
            if spans and lo <= spans[-1][1]:
                spans[-1] = (spans[-1][0], max(hi, spans[-1][1]))
            elif lo < hi:
                spans.append((lo, hi))
        return spans

    def _locate(self, files: Sequence[FileEntry], where: str) -> list[int]:
        """Where each listed path is in ``files``; missing ones are an error naming them."""
        assert self.listed is not None
        at = []
        missing = []
        for path in self.listed:
            i = bisect.bisect_left(files, path, key=_PATH)
            if i < len(files) and files[i].path == path:
                at.append(i)
            else:
                missing.append(path)
        if missing and not self.allow_empty:
            named = ", ".join(repr(p) for p in missing[:NAMED_AT_MOST])
            more = len(missing) - NAMED_AT_MOST
            rest = f" and {more:,} more" if more > 0 else ""
            raise SelectionError(
                f"{len(missing):,} path(s) of {self.list_name} are not in {where}: "
                f"{named}{rest}; list the version's files with dspkg show --files, "
                "or give --allow-empty to skip them",
                items=tuple(missing),
            )
        return at

    def _check_includes(self, chosen: Sequence[FileEntry], texts: list[str], where: str) -> None:
        """Each include pattern must match some path of ``texts``. The chosen files come
        first, where each pattern usually matches within a few paths; only a pattern
        whose files were all excluded, or that matches nothing, costs a full search."""
        idle = []
        for p in self.include:
            one = re.compile(p.regex).fullmatch
            if any(map(one, map(_PATH, chosen))):
                continue
            rx = re.compile(f"^(?:{p.regex})$", re.MULTILINE)
            if not any(rx.search(text) for text in texts if text):
                idle.append(p.text)
        if idle:
            names = ", ".join(repr(t) for t in idle)
            raise SelectionError(
                f"--include {names} matches no file of {where}; check the pattern "
                "(dspkg show --files lists the paths), or give --allow-empty",
                items=tuple(idle),
            )

    def _describe(self) -> str:
        parts = []
        if self.include:
            parts.append("--include " + " ".join(repr(p.text) for p in self.include))
        if self.listed is not None:
            parts.append(self.list_name)
        if self.exclude:
            parts.append("--exclude " + " ".join(repr(p.text) for p in self.exclude))
        return " then ".join(parts)

    # --- for a reader of manifest parts -------------------------------------------------

    @property
    def prefixes(self) -> tuple[str, ...] | None:
        """Literal prefixes: every selected path starts with one of them; None when
        any path may be selected (no include, or an include that is not anchored)."""
        if not self.include and self.listed is None:
            return None
        found = [p.prefix for p in self.include]
        if "" in found:
            return None
        found.extend(self.listed or ())
        return tuple(sorted(set(found)))

    def may_match_range(self, first: str, last: str) -> bool:
        """Whether a selected path may lie in ``[first, last]`` (paths in sorted order):
        False lets a reader skip a manifest part that holds only such paths.
        Conservative: True may still select nothing there (excludes are ignored)."""
        prefixes = self.prefixes
        if prefixes is None:
            return True
        # A prefix inside the range, or one that the range's first path starts with.
        at = bisect.bisect_left(prefixes, first)
        if at < len(prefixes) and prefixes[at] <= last:
            return True
        known = frozenset(prefixes)
        return any(first[:cut] in known for cut in range(len(first) + 1))


def _hit(line_regex: re.Pattern[str], path: str) -> bool:
    found = line_regex.match(path)
    return bool(found and found.group(1))


@functools.lru_cache(maxsize=64)
def _line_regex(include: tuple[Pattern, ...], exclude: tuple[Pattern, ...]) -> re.Pattern[str]:
    """Matches every line of a text of paths, capturing its first character when the line
    matches an include (or there are none) and no exclude."""
    inc = "|".join(f"(?:{p.regex})" for p in include)
    exc = "|".join(f"(?:{p.regex})" for p in exclude)
    test = (f"(?=(?:{inc})$)" if inc else "") + (f"(?!(?:{exc})$)" if exc else "")
    return re.compile(f"^(?:{test}(.))?.*$", re.MULTILINE)
