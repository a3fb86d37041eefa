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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from dspkg.cache import Cache, fingerprint_ok
from dspkg.errors import DestinationError, InvalidArgument
from dspkg.manifest import FileEntry

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
    ``auto``: reflink, then hardlink, then copy); ``link`` may then be called from
    several threads as objects reach the cache; ``commit`` renames the staged
    top-level entries into DEST, ``abort`` removes the staging directory.
    """

    def __init__(self, cache: Cache, dest: Path, mode: LinkMode) -> None:
        self.cache = cache
        self.dest = dest
        self.requested = mode
        self.mode = mode
        self.staging = dest / f"{STAGING_PREFIX}{secrets.token_hex(4)}"
        self._base = str(self.staging)

    def begin(self, plan: TreePlan) -> None:
        try:
            self.staging.mkdir()
            for d in plan.dirs:
                os.mkdir(f"{self._base}/{d}")
            self.mode = self._probe()
        except OSError as exc:
            self.abort()
            raise self._error(exc) from None
        except BaseException:
            self.abort()
            raise

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

    def link_cached(self, groups: Sequence[Sequence[FileEntry]]) -> list[str]:
        """Link each group (the files of one object) whose object is cached and intact;
        return the sha256 of the others. The hot loop of a warm pull: one ``stat`` and
        one link per file, nothing else."""
        linker = _LINKERS[self.mode]
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
            if not fingerprint_ok(info, first.size):
                self.cache.drop(sha)
                absent.append(sha)
                continue
            for f in group:
                try:
                    linker(src, f"{base}/{f.path}")
                except OSError:
                    if self.link([f]):  # the careful path: retries, fallbacks, errors
                        absent.append(sha)
                        break
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

    def _error(self, exc: OSError) -> DestinationError:
        if exc.errno == errno.ENOSPC:
            return DestinationError(
                f"no space left on the device of {self.dest}; free space and pull again",
                path=str(self.dest),
            )
        return DestinationError(
            f"cannot write to destination {self.dest} ({exc.strerror})", path=str(self.dest)
        )


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
