"""A version from any directory, no metadata needed (``dspkg publish DIR --to URI``).

Every file under DIR joins the version (or those an ``--include`` glob picks), minus
those an ``--exclude`` glob matches; with ``--from`` the version also keeps the parent's
files that no ``--exclude`` matches, and a file of DIR replaces the parent's file of the
same path. The directory is read into the same :class:`~dspkg.metadata.Outputs` a
metadata publish makes, with one :class:`~dspkg.metadata.VersionRequest`, so the
publisher treats both alike.

Links follow the rule of metadata publishing: a link is published as its target when
that lies inside DIR (a linked folder as the files under it); a link that leads outside
DIR, a loop, and anything other than regular files and folders are errors naming the
path, found before anything is uploaded.
"""

from __future__ import annotations

import os
import re
import stat
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from dspkg.errors import InvalidArgument, InvalidMetadata
from dspkg.layout import LATEST
from dspkg.metadata import Outputs, VersionRequest, Where, inside_root
from dspkg.names import VersionUri, check_name
from dspkg.paths import path_problem
from dspkg.selection import Pattern, compile_pattern
from dspkg.sources import sorted_files


@dataclass(frozen=True)
class DirectoryVersion:
    """What ``--to``, ``--from``, ``--include``, ``--exclude`` and ``--alias`` ask for;
    build it with :meth:`parse`, which checks every value. Whether it is packaged is the
    publish's choice (``--packaging``): there is no metadata to ask for it."""

    uri: VersionUri
    parent: VersionUri | None = None
    include: tuple[Pattern, ...] = ()
    exclude: tuple[Pattern, ...] = ()
    aliases: tuple[str, ...] = ()

    @classmethod
    def parse(
        cls,
        to: str,
        *,
        from_: str | None = None,
        include: Iterable[str] = (),
        exclude: Iterable[str] = (),
        aliases: Iterable[str] = (),
    ) -> DirectoryVersion:
        uri = VersionUri.parse(to)
        if uri.version == LATEST:
            raise InvalidArgument(
                f"{uri}: '{LATEST}' is kept by dspkg and cannot name a version; choose a name"
            )
        parent = VersionUri.parse(from_) if from_ else None
        if parent is not None and parent.dataset != uri.dataset:
            raise InvalidArgument(
                f"--from {parent} is not a version of dataset {uri.dataset}; "
                "a version is built from one of its own dataset"
            )
        if parent == uri:
            raise InvalidArgument(f"{uri} cannot be built from itself; give another --from")
        return cls(
            uri=uri,
            parent=parent,
            include=tuple(compile_pattern(g, option="--include") for g in include),
            exclude=tuple(compile_pattern(g, option="--exclude") for g in exclude),
            aliases=tuple(sorted({check_name(a, what="alias") for a in aliases} - {LATEST})),
        )


def read_directory(root: Path, target: DirectoryVersion) -> tuple[Outputs, frozenset[str]]:
    """The files of ``root`` that ``target`` takes, checked, and the ``--exclude``
    patterns that left some file of ``root`` out. The request comes once the parent is
    known: :func:`version_request`."""
    if not root.is_dir():
        raise InvalidMetadata("not a directory; give the directory to publish", path=str(root))
    root = root.resolve()
    used: set[str] = set()
    base = f"{root}/"
    rels: list[str] = []
    sizes = array("q")
    moved: dict[str, str] = {}  # real paths that are not base + rel (links on the way)
    for rel, real, size in _walk(root, target.exclude, used):
        rels.append(rel)
        sizes.append(size)
        if real != base + rel:
            moved[rel] = real
    found = sorted_files(rels, sizes, base=base, moved=moved)
    del rels, sizes
    if target.include:
        chosen = matching(found.rels(), target.include)
        for glob in target.include:
            if not any(map(_matcher(glob), chosen)):
                raise InvalidMetadata(
                    f"--include {glob.text!r} matches no file; check the pattern", path=str(root)
                )
        found = found.subset(chosen)
    return Outputs(root=root, versions=(), named=found), frozenset(used)


def version_request(
    target: DirectoryVersion,
    outputs: Outputs,
    parent: VersionUri | None,
    parent_paths: Sequence[str],
) -> tuple[VersionRequest, tuple[str, ...]]:
    """The request for ``target`` once its parent is known (``parent``: resolved when
    ``--from`` named an alias); ``parent_paths`` are the parent's files. Also returns
    the parent's paths that ``--exclude`` leaves out."""
    if not outputs.named and parent is None:
        raise InvalidMetadata(
            f"no file to publish as {target.uri}; give a directory with files, or --from "
            "a version to build on",
            path=str(outputs.root),
        )
    excluded = tuple(matching(parent_paths, target.exclude))
    request = VersionRequest(
        uri=target.uri,
        files=outputs.named.paths(),
        parent=parent,
        exclude=excluded,
        aliases=target.aliases,
        source=str(outputs.root),
    )
    return request, excluded


def matching(paths: Iterable[str], patterns: Sequence[Pattern]) -> list[str]:
    """The ``paths`` that any of ``patterns`` matches, in their order (the rules of
    :mod:`dspkg.selection`, which pulls use too)."""
    if not patterns:
        return []
    one = re.compile("|".join(f"(?:{p.regex})" for p in patterns)).fullmatch
    return [p for p in paths if one(p)]


def _matcher(pattern: Pattern) -> Callable[[str], bool]:
    one = re.compile(pattern.regex).fullmatch
    return lambda path: one(path) is not None


def _walk(root: Path, exclude: Sequence[Pattern], used: set[str]) -> Iterator[tuple[str, str, int]]:
    """``(relative path, real path, size)`` of every file under ``root``; links resolved
    and checked to stay inside ``root``. What ``exclude`` matches (a file, or a folder
    and all under it) is skipped before any check, and its pattern noted in ``used``."""
    base = str(root)
    # (relative prefix, real folder, real folders above it: a link to one is a loop)
    stack: list[tuple[str, str, tuple[str, ...]]] = [("", base, (base,))]
    where = Where(base)

    tests = [(g.text, _matcher(g)) for g in exclude]

    def skipped(rel: str) -> bool:
        hit = [text for text, matches in tests if matches(rel) or matches(rel + "/")]
        used.update(hit)
        return bool(hit)

    while stack:
        prefix, folder, above = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name, reverse=True)
        except OSError as exc:
            raise InvalidMetadata(
                f"folder {prefix.rstrip('/') or '.'!r} cannot be listed ({exc.strerror}); "
                "fix its permissions",
                path=base,
            ) from None
        for entry in entries:
            rel = prefix + entry.name
            if exclude and skipped(rel):
                continue
            problem = path_problem(rel)
            if problem:
                raise InvalidMetadata(f"file {rel!r} cannot be published: {problem}", path=base)
            real = entry.path
            try:
                if entry.is_symlink():
                    real = inside_root(root, rel, where, "file")
                    info = os.stat(real)
                else:
                    info = entry.stat(follow_symlinks=False)
            except OSError as exc:
                raise InvalidMetadata(
                    f"file {rel!r} cannot be read ({exc.strerror})", path=base
                ) from None
            if stat.S_ISDIR(info.st_mode):
                if real in above:
                    raise InvalidMetadata(
                        f"folder {rel!r} links back to a folder above it (a loop); "
                        "remove the link or --exclude it",
                        path=base,
                    )
                stack.append((rel + "/", real, (*above, real)))
            elif not stat.S_ISREG(info.st_mode):
                raise InvalidMetadata(
                    f"file {rel!r} is not a regular file (a device, socket or pipe); "
                    "move it out or --exclude it",
                    path=base,
                )
            elif not os.access(real, os.R_OK):
                raise InvalidMetadata(f"file {rel!r} is not readable", path=base)
            else:
                yield rel, real, info.st_size
