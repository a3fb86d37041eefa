"""Glob patterns over relative paths, with the rules of ``.gitignore`` (pure).

What ``dspkg publish DIR --to`` takes from DIR (``--include``) and leaves out of the
version (``--exclude``):

- ``*`` matches within one path component, ``?`` one character other than ``/``,
  ``[abc]``, ``[a-z]``, ``[!a]`` one character of a class (never ``/``); ``\\`` makes
  the next character literal.
- ``**`` as a whole component crosses folders: ``**/x``, ``a/**/b``, ``dir/**``.
- A pattern with a ``/`` at its start or in its middle is anchored at the root
  (``/train``, ``train/cat``); one without (``*.jpg``, ``cat``) matches at any depth.
- A pattern that matches a folder takes everything under it; a trailing ``/`` (``cat/``)
  matches folders only.

These are the rules of the pull selection (``--include``/``--exclude`` of ``dspkg
pull``), kept behind :func:`compile_glob` and :func:`matching` so that one module
can own them for both.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from dspkg.errors import InvalidArgument


@dataclass(frozen=True)
class Glob:
    text: str
    regex: re.Pattern[str]

    def matches(self, path: str) -> bool:
        return self.regex.fullmatch(path) is not None


def compile_glob(text: str, *, option: str = "--include") -> Glob:
    """One pattern, checked; :class:`InvalidArgument` naming the option when malformed."""

    def bad(why: str) -> InvalidArgument:
        return InvalidArgument(f"{option} {text!r}: {why}")

    if not text or not text.strip():
        raise bad("an empty pattern; give a glob such as 'images/**' or '*.jpg'")
    body = text.lstrip("/")
    anchored = body != text
    folder_only = body.endswith("/")
    body = body.rstrip("/")
    if not body:
        raise bad("matches every file; leave the option out instead")
    anchored = anchored or "/" in body
    head = "" if anchored else "(?:.*/)?"
    tail = "/.*" if folder_only else "(?:/.*)?"
    try:
        regex = re.compile(f"{head}{_translate(body, bad)}{tail}", re.DOTALL)
    except re.error as exc:  # a reversed range such as [z-a]
        raise bad(f"malformed character class ({exc.msg})") from None
    return Glob(text, regex)


def matching(paths: Iterable[str], globs: Sequence[Glob]) -> list[str]:
    """The ``paths`` that any of ``globs`` matches, in their order."""
    if not globs:
        return []
    one = re.compile("|".join(f"(?:{g.regex.pattern})" for g in globs), re.DOTALL).fullmatch
    return [p for p in paths if one(p)]


def _translate(body: str, bad: Callable[[str], InvalidArgument]) -> str:
    out: list[str] = []
    i, n = 0, len(body)
    while i < n:
        c = body[i]
        if c == "\\":
            if i + 1 == n:
                raise bad("ends with a lone '\\'")
            out.append(re.escape(body[i + 1]))
            i += 2
        elif c == "*":
            j = i
            while j < n and body[j] == "*":
                j += 1
            whole = (i == 0 or body[i - 1] == "/") and (j == n or body[j] == "/")
            if j - i >= 2 and whole:
                if j == n:
                    out.append(".*")  # `dir/**`: everything below
                else:
                    out.append("(?:.*/)?")  # `**/`: zero or more folders
                    j += 1
            else:
                out.append("[^/]*")
            i = j
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            end = body.find("]", i + 2)
            if end < 0:
                raise bad(f"'[' at position {i + 1} is never closed; write '\\[' for a literal [")
            inner = body[i + 1 : end]
            negate = inner[0] in "!^"
            content = re.escape(inner[1:] if negate else inner).replace("\\-", "-")
            out.append(f"[^/{content}]" if negate else f"(?!/)[{content}]")
            i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)
