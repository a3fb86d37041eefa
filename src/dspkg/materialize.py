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
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from dspkg.cache import Cache
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


def materialize(plan: TreePlan, cache: Cache, dest: Path, mode: LinkMode) -> LinkMode:
    """Build the tree in DEST; return the link mode actually used (for ``auto``, what worked)."""
    staging = dest / f"{STAGING_PREFIX}{secrets.token_hex(4)}"
    try:
        staging.mkdir()
        for d in plan.dirs:
            os.mkdir(staging / d)
        used = _link_all(plan.files, cache, staging, mode)
        for entry in sorted(os.listdir(staging)):
            os.rename(staging / entry, dest / entry)
        staging.rmdir()
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if exc.errno == errno.ENOSPC:
            raise DestinationError(
                f"no space left on the device of {dest}; free space and pull again", path=str(dest)
            ) from None
        raise DestinationError(
            f"cannot write to destination {dest} ({exc.strerror})", path=str(dest)
        ) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return used


def _link_all(files: Sequence[FileEntry], cache: Cache, staging: Path, mode: LinkMode) -> LinkMode:
    objects = str(cache.objects)
    base = str(staging)
    order = {
        LinkMode.AUTO: [LinkMode.REFLINK, LinkMode.HARDLINK, LinkMode.COPY],
        LinkMode.REFLINK: [LinkMode.REFLINK],
        LinkMode.HARDLINK: [LinkMode.HARDLINK],
        LinkMode.SYMLINK: [LinkMode.SYMLINK],
        LinkMode.COPY: [LinkMode.COPY],
    }[mode]
    current = order[0]
    for f in files:
        src = f"{objects}/{f.sha256[:2]}/{f.sha256[2:]}"
        dst = f"{base}/{f.path}"
        while True:
            try:
                _LINKERS[current](src, dst)
                break
            except FileNotFoundError:
                if not os.path.exists(src):
                    raise MissingObject(f) from None
                raise
            except OSError as exc:
                if (
                    exc.errno == errno.EMLINK
                    and current is LinkMode.HARDLINK
                    and mode is not LinkMode.HARDLINK
                ):
                    _copy(src, dst)  # this object has too many links; copy just this one
                    break
                if exc.errno not in _UNSUPPORTED or current is order[-1]:
                    if mode is not LinkMode.AUTO and exc.errno in _UNSUPPORTED:
                        raise InvalidArgument(
                            f"--link {mode.value} does not work between the cache "
                            f"{cache.root} and {staging.parent} ({exc.strerror}); "
                            "use --link auto or copy"
                        ) from None
                    raise
                current = order[order.index(current) + 1]
    return current if mode is LinkMode.AUTO else mode


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
