"""Reads which dataset versions a directory of outputs asks for.

Two sources, as on the platform dspkg is compatible with, usable together:

- ``valohai.metadata.jsonl`` at the root: lines ``{"file": "<relative path>", "metadata": {...}}``;
- ``<file>.metadata.json`` sidecars: one JSON object, the metadata of ``<file>``.

``metadata["valohai.dataset-versions"]`` lists the versions a file joins, each a
``dataset://<dataset>/<version>`` string or an object with ``uri`` and optionally
``packaging``, ``from``, ``exclude``, ``start_fresh`` and ``targeting_aliases``.

Everything is validated here, before anything is uploaded; errors name the file
and line.
"""

from __future__ import annotations

import errno
import functools
import itertools
import json
import os
import stat
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from dspkg.errors import InvalidMetadata, InvalidName
from dspkg.layout import LATEST
from dspkg.names import VersionUri, check_name
from dspkg.paths import PathList, all_paths_ok, path_problem
from dspkg.sources import LocalFiles, sorted_files

JSONL_NAME = "valohai.metadata.jsonl"
SIDECAR_SUFFIX = ".metadata.json"
VERSIONS_KEY = "valohai.dataset-versions"
_ENTRY_KEYS = {"uri", "packaging", "from", "exclude", "start_fresh", "targeting_aliases"}


@dataclass(frozen=True)
class VersionRequest:
    """One version the outputs ask for, merged over every file that names it."""

    uri: VersionUri
    files: Sequence[str]  # sorted, each once (a PathList when read from a directory)
    packaging: bool = False
    parent: VersionUri | None = None
    exclude: tuple[str, ...] = ()
    start_fresh: bool = False
    aliases: tuple[str, ...] = ()
    source: str = ""


@dataclass
class _Draft:
    uri: VersionUri
    source: Where
    # Every file named for it, in the order named (a file named twice is there twice
    # until _finish): a list costs 8 bytes a file, a set four times that.
    files: list[str] = field(default_factory=list)
    packaging: bool = False
    parent: VersionUri | None = None
    parent_source: str = ""
    exclude: set[str] = field(default_factory=set)
    start_fresh: bool = False
    aliases: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Outputs:
    """A directory of outputs and the versions its metadata asks for."""

    root: Path
    versions: tuple[VersionRequest, ...]
    # Every file the metadata names, with its size and real path (inside the root).
    named: LocalFiles = field(default_factory=lambda: LocalFiles([], array("q")))

    def files(self) -> list[str]:
        """Every data file under the root (metadata files aside), sorted, as relative paths."""
        return sorted(_walk_data_files(self.root))

    def local(self, request: VersionRequest) -> LocalFiles:
        """The files of ``request`` (which these outputs ask for)."""
        return self.named.subset(request.files)


class Where(NamedTuple):
    """Where a metadata record comes from: a file, and its line in a ``.jsonl``."""

    path: str
    line: int | None = None

    def __str__(self) -> str:
        return self.path if self.line is None else f"{self.path}, line {self.line}"


def read_outputs(root: Path) -> Outputs:
    """Parse and validate the metadata of the outputs directory ``root``."""
    if not root.is_dir():
        raise InvalidMetadata("not a directory; give the directory of outputs", path=str(root))
    root = root.resolve()
    seen: set[str] = set()
    files = _FileColumns(root)
    drafts: dict[VersionUri, _Draft] = {}
    last: tuple[Any, _Draft] = (None, _Draft(VersionUri("_", "_"), Where("")))
    folders: dict[str, str] = {}
    named: list[tuple[str, Where]] = []  # files named since the last check

    def check_named() -> None:
        # Paths are checked many at a time (one pass over a joined string); the files
        # behind them then one by one, in the order the metadata names them.
        if not all_paths_ok([rel for rel, _ in named]):
            for rel, where in named:
                problem = path_problem(rel)
                if problem:
                    raise _invalid(where, f"file {rel!r} cannot be published: {problem}")
        for rel, where in named:
            files.add(rel, *_check_file(root, rel, where, folders, checked=True))
        named.clear()

    for rel, meta, where in _read_sources(root):
        if rel not in seen:
            seen.add(rel)  # named; checked with the next batch
            named.append((rel, where))
            if len(named) >= _CHECK_BATCH:
                check_named()
        entries = meta.get(VERSIONS_KEY, [])
        if not isinstance(entries, list):
            raise _invalid(where, f"{VERSIONS_KEY} must be a list")
        for entry in entries:
            if entry == last[0]:  # the same entry as the line before: just one more file
                last[1].files.append(rel)
                continue
            last = (entry, _merge_entry(drafts, rel, entry, where))
    check_named()
    del seen, last
    columns = files.done()
    versions = tuple(_finish(d, columns) for d in sorted(drafts.values(), key=lambda d: d.uri))
    return Outputs(root=root, versions=versions, named=columns)


class _FileColumns:
    """The files named so far, as columns; a real path is kept only where it is not the
    root joined with the file's path (a link on the way)."""

    def __init__(self, root: Path) -> None:
        self.base = f"{root}/"
        self.rels: list[str] = []
        self.sizes = array("q")
        self.moved: dict[str, str] = {}

    def add(self, rel: str, real: str, size: int) -> None:
        self.rels.append(rel)
        self.sizes.append(size)
        if len(real) != len(self.base) + len(rel) or real != self.base + rel:
            self.moved[rel] = real

    def done(self) -> LocalFiles:
        return sorted_files(self.rels, self.sizes, base=self.base, moved=self.moved)


def _read_sources(root: Path) -> Iterator[tuple[str, dict[str, Any], Where]]:
    """(relative file path, its metadata, where it was said) for every metadata record."""
    jsonl = root / JSONL_NAME
    if os.path.lexists(jsonl):
        for number, line in _jsonl_lines(root, Where(str(jsonl))):
            if not line.strip():
                continue
            where = Where(str(jsonl), number)
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise _invalid(where, f"not valid JSON ({exc.args[0]})") from None
            if not isinstance(record, dict) or not isinstance(record.get("file"), str):
                raise _invalid(where, 'expected {"file": "<path>", "metadata": {...}}')
            meta = record.get("metadata", {})
            if not isinstance(meta, dict):
                raise _invalid(where, '"metadata" must be a JSON object')
            yield record["file"], meta, where
    for rel in sorted(_walk(root, sidecars=True)):
        where = Where(str(root / rel))
        try:
            meta = json.loads(_read_inside(root, rel, where))
        except ValueError as exc:
            raise _invalid(where, f"not valid JSON ({exc})") from None
        if not isinstance(meta, dict):
            raise _invalid(where, "must hold one JSON object")
        yield rel[: -len(SIDECAR_SUFFIX)], meta, where


def _jsonl_lines(root: Path, where: Where) -> Iterator[tuple[int, str]]:
    """``(number, text)`` of each line of the metadata file, read as it goes: a million
    lines are never in memory at once. Lines end at "\n" only (binary lines split there
    alone; text would also split at U+2028 and U+0085, which JSON allows raw in strings,
    and shift line numbers)."""
    path = inside_root(root, JSONL_NAME, where, "metadata file")
    try:
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    yield number, raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise _invalid(
                        Where(where.path, number), f"not valid UTF-8 ({exc.reason})"
                    ) from None
    except OSError as exc:
        raise _invalid(where, f"cannot be read ({exc.strerror or exc})") from None


def _read_inside(root: Path, rel: str, where: Where) -> str:
    """The text of a metadata file that is (or whose links lead) inside ``root``."""
    path = inside_root(root, rel, where, "metadata file")
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _invalid(where, f"cannot be read ({exc})") from None


def _invalid(where: Where, message: str) -> InvalidMetadata:
    return InvalidMetadata(message, path=where.path, line=where.line)


def inside_root(root: Path, rel: str, where: Where, what: str) -> str:
    """The real path of ``root/rel``, which must stay inside ``root`` at every component:
    a link to a directory elsewhere (``dirlink -> /etc``) publishes nothing of it."""
    try:
        real = os.path.realpath(f"{root}/{rel}", strict=True)
    except FileNotFoundError:
        raise _invalid(where, f"{what} {rel!r} does not exist in {root}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _invalid(
                where, f"{what} {rel!r} is a symbolic link loop; remove the link"
            ) from None
        raise _invalid(where, f"{what} {rel!r} cannot be read ({exc.strerror})") from None
    if not Path(real).is_relative_to(root):
        raise _invalid(
            where,
            f"{what} {rel!r} leads outside {root} through a link; "
            "copy what it points to into the directory, or remove the link",
        )
    return real


_EUID = os.geteuid()
_CHECK_BATCH = 4096  # files named, then checked together


def _check_file(
    root: Path, rel: str, where: Where, folders: dict[str, str], *, checked: bool = False
) -> tuple[str, int]:
    """Validate one named file (its path too, unless ``checked``); return its real path
    and size. ``folders`` keeps the real path of each folder checked in this run: a file
    that is no link (one ``lstat``) in a folder whose real path is inside ``root`` is
    inside ``root``, so the walk through every component (``inside_root``) runs once a
    folder, not once a file."""
    problem = None if checked else path_problem(rel)
    if problem:
        raise _invalid(where, f"file {rel!r} cannot be published: {problem}")
    folder, _, name = rel.rpartition("/")
    try:
        info = os.lstat(f"{root}/{rel}")
    except OSError:
        info = None  # the careful path below says why
    if info is not None and stat.S_ISREG(info.st_mode):
        parent = folders.get(folder)
        if parent is None:
            # The first file of a folder takes the careful path (its errors name the file).
            real = inside_root(root, rel, where, "file")
            folders[folder] = os.path.dirname(real)
        else:
            real = f"{parent}/{name}"
    else:
        real = inside_root(root, rel, where, "file")
        try:
            info = os.stat(real)
        except OSError as exc:
            raise _invalid(where, f"file {rel!r} cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise _invalid(where, f"file {rel!r} is not a regular file")
    # A file whose owner may read it is readable by its owner without asking the kernel
    # again; other cases (group, others, ACLs, capabilities) ask.
    owned = info.st_uid == _EUID and info.st_mode & stat.S_IRUSR
    if not (owned or os.access(real, os.R_OK)):
        raise _invalid(where, f"file {rel!r} is not readable")
    return real, info.st_size


# The same entry repeats on every line of a version: parse and check each text once.
@functools.lru_cache(maxsize=4096)
def _parse_uri(text: str) -> VersionUri:
    return VersionUri.parse(text)


@functools.lru_cache(maxsize=1024)
def _check_excludes(values: tuple[str, ...]) -> str | None:
    for value in values:
        problem = path_problem(value)
        if problem:
            return f"excluded path {value!r} is invalid: {problem}"
    return None


@functools.lru_cache(maxsize=1024)
def _check_aliases(values: tuple[str, ...]) -> None:
    for value in values:
        check_name(value, what="alias")


def _merge_entry(drafts: dict[VersionUri, _Draft], rel: str, entry: Any, where: Where) -> _Draft:
    try:
        if isinstance(entry, str):
            entry = {"uri": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("uri"), str):
            raise _invalid(where, f"each {VERSIONS_KEY} item must be a URI or an object with 'uri'")
        uri = _parse_uri(entry["uri"])
        if uri.version == LATEST:
            raise _invalid(where, f"{uri}: '{LATEST}' is kept by dspkg and cannot name a version")
        draft = drafts.setdefault(uri, _Draft(uri=uri, source=where))
        draft.files.append(rel)
        if entry.get("packaging") is True:
            draft.packaging = True
        if entry.get("start_fresh") is True:
            draft.start_fresh = True
        parent = entry.get("from")
        if parent is not None:
            parent_uri = _parse_uri(parent) if isinstance(parent, str) else None
            if parent_uri is None or parent_uri.dataset != uri.dataset:
                raise _invalid(where, f"'from' of {uri} must be a version of dataset {uri.dataset}")
            if draft.parent is not None and draft.parent != parent_uri:
                raise _invalid(
                    where,
                    f"{uri} is built from {parent_uri} here but from {draft.parent} elsewhere",
                )
            draft.parent = parent_uri
        for key, target in (("exclude", draft.exclude), ("targeting_aliases", draft.aliases)):
            values = entry.get(key) or []
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise _invalid(where, f"'{key}' of {uri} must be a list of strings")
            if not values:
                continue
            if key == "exclude":
                problem = _check_excludes(tuple(values))
                if problem:
                    raise _invalid(where, problem)
            else:
                _check_aliases(tuple(values))
            target.update(values)
    except InvalidName as exc:
        raise _invalid(where, str(exc)) from None
    return draft


def _finish(draft: _Draft, named: LocalFiles) -> VersionRequest:
    files = draft.files
    files.sort()
    if any(map(str.__eq__, files, itertools.islice(files, 1, None))):
        files = list(dict.fromkeys(files))  # a file named twice for the version
    # A version of every file named (the usual case) shares the outputs' paths.
    paths = named.paths() if len(files) == len(named) else PathList(files)
    draft.files = []
    return VersionRequest(
        uri=draft.uri,
        files=paths,
        packaging=draft.packaging,
        parent=draft.parent,
        exclude=tuple(sorted(draft.exclude)),
        start_fresh=draft.start_fresh,
        aliases=tuple(sorted(draft.aliases)),
        source=str(draft.source),
    )


def _walk(root: Path, *, sidecars: bool) -> Iterator[str]:
    """Relative paths of sidecars (or of data files) under ``root``, not following links.
    A directory that cannot be listed is an error: its sidecars would be missed silently."""

    def refuse(exc: OSError) -> None:
        raise InvalidMetadata(
            f"cannot be listed ({exc.strerror}); fix its permissions", path=str(exc.filename)
        )

    for dirpath, dirnames, filenames in os.walk(root, onerror=refuse):
        dirnames.sort()
        base = os.path.relpath(dirpath, root)
        for name in filenames:
            rel = name if base == "." else f"{base}/{name}"
            is_meta = name.endswith(SIDECAR_SUFFIX) or rel == JSONL_NAME
            if is_meta == sidecars and (not sidecars or rel != JSONL_NAME):
                yield rel


def _walk_data_files(root: Path) -> Iterator[str]:
    return _walk(root, sidecars=False)


def directory_files(root: Path) -> dict[str, tuple[str, int]]:
    """Every data file under ``root`` (metadata files aside), checked as publish checks the
    files metadata names: relative path -> (real path inside ``root``, size)."""
    if not root.is_dir():
        raise InvalidMetadata("not a directory", path=str(root))
    root = root.resolve()
    where = Where(str(root))
    folders: dict[str, str] = {}
    return {rel: _check_file(root, rel, where, folders) for rel in sorted(_walk_data_files(root))}
