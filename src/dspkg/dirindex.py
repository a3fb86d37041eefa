"""A version's directory tree, read off its sorted paths one folder at a time (pure).

The mount answers ``stat``, ``ls`` and ``os.walk`` from this index alone: a listing
never costs a request. Paths are absolute within the mount (``/cat/1.jpg``), as FUSE
passes them.

Files arrive in *segments*: the records of one manifest shard (or a whole v1 manifest),
sorted paths with the manifest index of their first file. A mount adds each shard's
segment as it loads, and asks about a folder only once every shard that may hold its
paths is in (``ManifestRoot.shards_for``), so an answer is never partial. Nothing is
built up front: a folder's listing is computed when first asked for, by bisection over
the sorted paths, stepping over each subfolder in one step (the top of a tree of
100,000 files in 100 folders costs 100 steps), and kept.

A name that is both a file and a folder (``a`` and ``a/b``, in one shard or across
two) is refused with :class:`~dspkg.errors.UnsafePackage`, never listed.
"""

from __future__ import annotations

import bisect
import threading

from dspkg.errors import UnsafePackage
from dspkg.manifest import Manifest
from dspkg.paths import directories

DIRECTORY = -1
# The character after "/": paths under "a/" are those from "a/" up to "a0", excluded.
_AFTER_SLASH = chr(ord("/") + 1)


class _Segment:
    """Sorted paths, the manifest index of the first, and (when first asked) the folders
    they hold, by parent."""

    __slots__ = ("_folders", "base", "paths")

    def __init__(self, base: int, paths: list[str]) -> None:
        self.base = base
        self.paths = paths
        self._folders: dict[str, set[str]] | None = None

    def folders(self) -> dict[str, set[str]]:
        """Each folder's subfolder names ("/" for the top): from every path's parent
        at C speed, then one step per folder, not one per file."""
        if self._folders is None:
            folders: dict[str, set[str]] = {}
            for d in directories(self.paths):
                parent, _, name = d.rpartition("/")
                folders.setdefault("/" + parent, set()).add(name)
            self._folders = folders
        return self._folders


class DirectoryIndex:
    """Listings and lookups over the segments added so far. Safe to read from many
    threads while one adds segments (each add replaces the list of segments whole)."""

    def __init__(self, *, obj: str = "the manifest") -> None:
        self.obj = obj  # what a refusal names
        self._segments: tuple[_Segment, ...] = ()  # sorted by first path
        self._listings: dict[str, list[tuple[str, int]]] = {}
        self._adding = threading.Lock()

    @classmethod
    def of(cls, manifest: Manifest) -> DirectoryIndex:
        """The index of every file of ``manifest``."""
        index = cls(obj=f"manifest of {manifest.uri}")
        index.add(0, [f.path for f in manifest.files])
        return index

    def add(self, base: int, paths: list[str]) -> None:
        """Add the files ``paths`` (sorted, checked), the first of which is file ``base``
        of the manifest; their range must not overlap a segment's already added."""
        if not paths:
            return
        with self._adding:
            segments = list(self._segments)
            firsts = [s.paths[0] for s in segments]
            segments.insert(bisect.bisect_left(firsts, paths[0]), _Segment(base, paths))
            self._segments = tuple(segments)

    def file(self, path: str) -> int | None:
        """The manifest index of the file at ``path``, or None."""
        rel = path[1:]
        for segment in self._segments:
            paths = segment.paths
            if paths[0] <= rel <= paths[-1]:
                at = bisect.bisect_left(paths, rel)
                if at < len(paths) and paths[at] == rel:
                    return segment.base + at
                return None
        return None

    def is_dir(self, path: str) -> bool:
        if path == "/":
            return True
        prefix = path[1:] + "/"
        for segment in self._segments:
            paths = segment.paths
            at = bisect.bisect_left(paths, prefix)
            if at < len(paths) and paths[at].startswith(prefix):
                return True
        return False

    def listing(self, path: str) -> list[tuple[str, int]]:
        """The entries of directory ``path``, sorted by name: (name, manifest index, or
        DIRECTORY). Kept once computed."""
        listing = self._listings.get(path)
        if listing is None:
            listing = self._listings[path] = self._list(path)
        return listing

    def subdirectories(self, path: str) -> int:
        """How many folders directory ``path`` holds (a mount's link count of a folder,
        asked for every folder of a listing: no listing of each is computed for it)."""
        listing = self._listings.get(path)
        if listing is not None:
            return sum(1 for _, index in listing if index == DIRECTORY)
        names: set[str] = set()
        for segment in self._segments:
            names |= segment.folders().get(path, set())
        return len(names)

    def _list(self, path: str) -> list[tuple[str, int]]:
        prefix = "" if path == "/" else path[1:] + "/"
        cut = len(prefix)
        entries: dict[str, int] = {}
        for segment in self._segments:
            base, paths = segment.base, segment.paths
            if prefix:
                at = bisect.bisect_left(paths, prefix)
                end = bisect.bisect_left(paths, prefix[:-1] + _AFTER_SLASH, at)
            else:
                at, end = 0, len(paths)
            while at < end:
                rest = paths[at][cut:]
                slash = rest.find("/")
                if slash < 0:
                    if rest in entries:
                        raise self._both(prefix + rest)
                    entries[rest] = base + at
                    at += 1
                    continue
                name = rest[:slash]
                if entries.get(name, DIRECTORY) != DIRECTORY:
                    raise self._both(prefix + name)
                entries[name] = DIRECTORY
                # Step over the subfolder: its paths run up to "name0", excluded.
                at = bisect.bisect_left(paths, prefix + name + _AFTER_SLASH, at, end)
        return sorted(entries.items())

    def _both(self, path: str) -> UnsafePackage:
        return UnsafePackage(
            f"{self.obj}: path {path!r} is both a file and a directory", obj=self.obj, entry=path
        )
