"""Makes a version's tree appear in a directory, from the cache.

The tree is built in a staging directory inside DEST and its top-level entries
are renamed into DEST at the end, so DEST never shows a half-written file, and
nothing is written outside DEST. Link modes form an ordered fallback: ``auto``
tries a reflink (a copy-on-write clone), then a hardlink, then a copy, and keeps
the first that works for the rest of the tree.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from dspkg.cache import CTIME_SLACK_NS, Cache, ObjectWriter, cache_error, fingerprint_ok
from dspkg.errors import DestinationError, DspkgError, InvalidArgument
from dspkg.manifest import FileEntry
from dspkg.speedups import compiled_module as speedups_module

STAGING_PREFIX = ".dspkg-staging-"
FICLONE = 0x40049409
# Errors meaning "this link kind does not work here", as opposed to real failures.
_UNSUPPORTED = {
    errno.EOPNOTSUPP,
    errno.ENOTTY,
    errno.EXDEV,
    errno.EINVAL,
    errno.ENOSYS,
    errno.EPERM,
    errno.EMLINK,
    errno.EBADF,
}


class LinkMode(StrEnum):
    AUTO = "auto"
    REFLINK = "reflink"
    HARDLINK = "hardlink"
    SYMLINK = "symlink"
    COPY = "copy"

    @classmethod
    def parse(cls, text: str) -> LinkMode:
        try:
            return cls(text)
        except ValueError:
            choices = ", ".join(m.value for m in cls)
            raise InvalidArgument(f"invalid link mode {text!r}: choose one of {choices}") from None


class MissingObject(Exception):
    """A cached object vanished (evicted or found changed) after the plan was made."""

    def __init__(self, entry: FileEntry) -> None:
        super().__init__(entry.path)
        self.entry = entry


@dataclass(frozen=True)
class TreePlan:
    dirs: tuple[str, ...]
    files: tuple[FileEntry, ...]


def plan_tree(files: Sequence[FileEntry]) -> TreePlan:
    """Directories to create (parents first) and files to link (pure)."""
    dirs: set[str] = set()
    for f in files:
        parent = f.path.rpartition("/")[0]
        while parent and parent not in dirs:
            dirs.add(parent)
            parent = parent.rpartition("/")[0]
    return TreePlan(dirs=tuple(sorted(dirs)), files=tuple(files))


def prepare_destination(dest: Path) -> None:
    """DEST must be absent or empty; leftovers of an interrupted pull are removed."""
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise DestinationError(
            f"destination {dest} exists and is not a directory; give a new or empty directory",
            path=str(dest),
        )
    if dest.is_dir():
        leftovers = []
        for entry in dest.iterdir():
            if entry.name.startswith(STAGING_PREFIX) and entry.is_dir():
                leftovers.append(entry)
            else:
                raise DestinationError(
                    f"destination {dest} is not empty; give a new or empty directory",
                    path=str(dest),
                )
        for entry in leftovers:
            shutil.rmtree(entry, ignore_errors=True)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DestinationError(
            f"destination {dest} cannot be created ({exc.strerror})", path=str(dest)
        ) from None


class TreeBuilder:
    """Builds a version's tree in a staging directory inside DEST, then moves it into place.

    ``begin`` creates every directory and settles the link mode with a probe (for
    ``auto``: reflink, then hardlink, then copy). The builder is then the fetcher's
    sink: ``put`` receives the verified bytes of each fetched object (from the disk
    threads) and makes them appear both in the cache and in the tree; ``link_cached``
    links objects the cache already holds. ``commit`` renames the staged top-level
    entries into DEST, ``abort`` removes the staging directory.

    With hardlinks, a fetched file is written once, where it ends up, and the cache's
    name is a link to it: four system calls per file (open, write, close, link).
    """

    links_targets = False  # settled by the probe: True with hardlinks

    def __init__(self, cache: Cache, dest: Path, mode: LinkMode, *, speedups: bool = True) -> None:
        self.cache = cache
        # The compiled warm-pull loop (hard links only), where it is built.
        self._linker = speedups_module() if speedups else None
        self.dest = dest
        self.requested = mode
        self.mode = mode
        self.staging = dest / f"{STAGING_PREFIX}{secrets.token_hex(4)}"
        self._base = str(self.staging)
        self._by_sha: dict[str, list[FileEntry]] = {}
        self.placed_objects: set[str] = set()  # objects put into the tree by this builder

    def begin(self, plan: TreePlan | None = None) -> None:
        """Create the staging directory and settle the link mode; then ``add(plan)``."""
        try:
            self.staging.mkdir()
            self.mode = self._probe()
            self.links_targets = self.mode is LinkMode.HARDLINK
        except OSError as exc:
            self.abort()
            raise self._error(exc) from None
        except BaseException:
            self.abort()
            raise
        if plan is not None:
            self.add(plan)

    def add(self, plan: TreePlan) -> None:
        """The files to place next (a pull's batch): their directories are created, and
        what the sink receives from now on is looked up among them alone. A directory
        made for an earlier batch is kept (sorted batches share only the ancestors of
        their boundary paths)."""
        self._by_sha = {}
        self.placed_objects = set()
        for f in plan.files:
            self._by_sha.setdefault(f.sha256, []).append(f)
        try:
            for d in plan.dirs:
                path = f"{self._base}/{d}"
                try:
                    os.mkdir(path)
                except FileExistsError:
                    if not os.path.isdir(path) or os.path.islink(path):
                        raise
        except OSError as exc:
            self.abort()
            raise self._error(exc) from None

    @property
    def groups(self) -> Mapping[str, list[FileEntry]]:
        """The files of the last :meth:`add` by object (sha256), in plan order: what a
        pull links each fetched object to. Read only."""
        return self._by_sha

    def forget(self) -> None:
        """Let go of the files of the last :meth:`add` (a batch is done)."""
        self._by_sha = {}
        self.placed_objects = set()

    def _probe(self) -> LinkMode:
        """The first link mode that works between the cache and DEST."""
        if self.requested in (LinkMode.SYMLINK, LinkMode.COPY):
            return self.requested
        order = (
            [LinkMode.REFLINK, LinkMode.HARDLINK, LinkMode.COPY]
            if self.requested is LinkMode.AUTO
            else [self.requested]
        )
        probe = self.cache.temp_path()
        probe.write_bytes(b"probe")
        target = f"{self._base}/.probe"
        try:
            for mode in order:
                try:
                    _LINKERS[mode](str(probe), target)
                except OSError as exc:
                    if exc.errno not in _UNSUPPORTED:
                        raise
                    if self.requested is not LinkMode.AUTO:
                        raise InvalidArgument(
                            f"--link {mode.value} does not work between the cache "
                            f"{self.cache.root} and {self.dest} ({exc.strerror}); "
                            "use --link auto or copy"
                        ) from None
                    continue
                os.unlink(target)
                return mode
        finally:
            probe.unlink(missing_ok=True)
        raise AssertionError("copy always works")

    # --- the fetcher's sink (called from the disk threads) ------------------------------

    def put(self, entry: FileEntry, pieces: Sequence[bytes | memoryview]) -> None:
        """Verified bytes of a fetched object: into the cache and into the tree."""
        group = self._by_sha[entry.sha256]
        try:
            if self.mode is LinkMode.HARDLINK:
                self._write_then_link(entry, group, pieces)
            else:
                self.cache.write_object(entry.sha256, pieces)
                for f in self.link(group):  # gone already (a concurrent prune): write it
                    _write_file(f"{self._base}/{f.path}", pieces)
        except OSError as exc:
            raise self.os_error(exc) from None
        self.placed_objects.add(entry.sha256)

    def _write_then_link(
        self, entry: FileEntry, group: Sequence[FileEntry], pieces: Sequence[bytes | memoryview]
    ) -> None:
        first = f"{self._base}/{group[0].path}"
        try:
            _write_file(first, pieces)
        except FileExistsError:
            return  # put in an earlier round
        with contextlib.suppress(FileExistsError):  # another process cached it meanwhile
            os.link(first, self.cache.object_path(entry.sha256))
        for f in group[1:]:
            os.link(first, f"{self._base}/{f.path}")

    def open_object(self, entry: FileEntry) -> ObjectWriter:
        """A writer for a big object; once committed, :meth:`committed` links it."""
        return self.cache.object_writer()

    def committed(self, entry: FileEntry) -> None:
        missing = self.link(self._by_sha[entry.sha256])
        if missing:
            raise MissingObject(missing[0])
        if self.mode is LinkMode.HARDLINK:
            self.cache.touch(entry.sha256)
        self.placed_objects.add(entry.sha256)

    def targets(self, entry: FileEntry) -> tuple[str, str]:
        """With hardlinks, the compiled extractor writes the entry where it ends up and
        links the cache's name to it; else it writes a temp file that becomes the object."""
        final = self.cache.object_path(entry.sha256)
        if self.links_targets:
            return f"{self._base}/{self._by_sha[entry.sha256][0].path}", final
        return self.cache.temp_name(), final

    def placed(self, entry: FileEntry) -> None:
        group = self._by_sha[entry.sha256]
        try:
            if self.links_targets:
                first = f"{self._base}/{group[0].path}"
                for f in group[1:]:
                    with contextlib.suppress(FileExistsError):
                        os.link(first, f"{self._base}/{f.path}")
            elif self.link(group):
                raise MissingObject(entry)  # pruned right away: the next round fetches it
        except OSError as exc:
            raise self.os_error(exc) from None
        self.placed_objects.add(entry.sha256)

    # --- linking what the cache holds ---------------------------------------------------

    def link(self, files: Sequence[FileEntry]) -> list[FileEntry]:
        """Make ``files`` appear in the staging tree; return those whose object is gone."""
        linker = _LINKERS[self.mode]
        object_path, base = self.cache.object_path, self._base
        missing: list[FileEntry] = []
        for f in files:
            src = object_path(f.sha256)
            dst = f"{base}/{f.path}"
            try:
                _link_retrying(linker, src, dst)
            except FileNotFoundError:
                if os.path.exists(src):
                    raise
                missing.append(f)
            except FileExistsError:
                continue  # linked already, in an earlier round
            except OSError as exc:
                if exc.errno == errno.EMLINK and self.mode is LinkMode.HARDLINK:
                    _copy(src, dst)  # this object has too many links; copy just this one
                    continue
                raise self._error(exc) from None
        return missing

    def link_cached(
        self, groups: Sequence[Sequence[FileEntry]], since: float | None = None
    ) -> list[str]:
        """Link each group (the files of one object) whose object is cached with its
        bytes; return the sha256 of the others. The hot loop of a warm pull: a ``stat``
        and a link per file, and with hardlinks a ``utime`` that marks the object
        checked again (the link moved its ctime; see the tamper check in the cache).
        With ``since`` (a pull told to ignore the cache), only objects written or checked
        after that time (as the file system stamps files) count: those this pull put there
        itself."""
        if self._linker is not None and self.mode is LinkMode.HARDLINK:
            return self._link_cached_compiled(self._linker, groups, since)
        return self._link_groups(groups, since)

    def _link_cached_compiled(
        self, compiled: Any, groups: Sequence[Sequence[FileEntry]], since: float | None
    ) -> list[str]:
        """:meth:`link_cached` in C: the groups it could not settle go through Python."""
        object_path, base = self.cache.object_path, self._base
        absent, careful = compiled.link_cached(
            [os.fsencode(object_path(g[0].sha256)) for g in groups],
            [g[0].size for g in groups],
            [len(g) for g in groups],
            [os.fsencode(f"{base}/{f.path}") for g in groups for f in g],
            -1 if since is None else int(since * 1e9),
            CTIME_SLACK_NS,
        )
        found = [groups[i][0].sha256 for i in absent]
        return found + self._link_groups([groups[i] for i in careful], since)

    def _link_groups(self, groups: Sequence[Sequence[FileEntry]], since: float | None) -> list[str]:
        linker = _LINKERS[self.mode]
        touch = self.cache.touch if self.mode is LinkMode.HARDLINK else None
        stat = os.stat
        object_path, base = self.cache.object_path, self._base
        absent: list[str] = []
        for group in groups:
            first = group[0]
            sha = first.sha256
            src = object_path(sha)
            try:
                info = stat(src)
            except FileNotFoundError:
                absent.append(sha)
                continue
            if since is not None and info.st_mtime <= since:
                absent.append(sha)
                continue
            if not fingerprint_ok(info, first.size) and not self.cache.recheck(sha, first.size):
                absent.append(sha)
                continue
            for f in group:
                try:
                    linker(src, f"{base}/{f.path}")
                except OSError:
                    if self.link([f]):  # the careful path: retries, fallbacks, errors
                        absent.append(sha)
                        break
            else:
                if touch is not None:
                    touch(sha)
        return absent

    def commit(self) -> None:
        try:
            for entry in sorted(os.listdir(self.staging)):
                os.rename(self.staging / entry, self.dest / entry)
            self.staging.rmdir()
        except OSError as exc:
            self.abort()
            raise self._error(exc) from None

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)

    def os_error(self, exc: OSError) -> DspkgError:
        """A failed write or link: the cache's fault or DEST's, by the path it names."""
        where = os.fsdecode(exc.filename) if exc.filename else ""
        if where.startswith(f"{self.cache.root}/"):
            return cache_error(exc, self.cache.root)
        return self._error(exc)

    def _error(self, exc: OSError) -> DestinationError:
        if exc.errno == errno.ENOSPC:
            return DestinationError(
                f"no space left on the device of {self.dest}; free space and pull again",
                path=str(self.dest),
            )
        return DestinationError(
            f"cannot write to destination {self.dest} ({exc.strerror})", path=str(self.dest)
        )


def _write_file(path: str, pieces: Sequence[bytes | memoryview]) -> None:
    """A new read-only file holding ``pieces`` (it must not exist)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
    try:
        for piece in pieces:
            view = memoryview(piece)
            while view:
                view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _link_retrying(linker: Callable[[str, str], None], src: str, dst: str) -> None:
    """Link, retrying when another process replaced ``src`` at that very moment.

    Two processes may insert the same object; the second rename replaces the first
    inode, and a link of the old inode then fails with ENOENT although ``src`` exists.
    """
    for _ in range(3):
        try:
            linker(src, dst)
            return
        except FileNotFoundError:
            if not os.path.exists(src):
                raise
    linker(src, dst)


def _reflink(src: str, dst: str) -> None:
    s = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        d = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            fcntl.ioctl(d, FICLONE, s)
        except OSError:
            os.close(d)
            with contextlib.suppress(OSError):
                os.unlink(dst)
            raise
        os.close(d)
    finally:
        os.close(s)


def _copy(src: str, dst: str) -> None:
    s = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(s).st_size
        d = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            copied = 0
            while copied < size:
                n = os.sendfile(d, s, copied, size - copied)
                if n == 0:
                    break
                copied += n
        finally:
            os.close(d)
    finally:
        os.close(s)


_LINKERS = {
    LinkMode.REFLINK: _reflink,
    LinkMode.HARDLINK: os.link,
    LinkMode.SYMLINK: os.symlink,
    LinkMode.COPY: _copy,
}
