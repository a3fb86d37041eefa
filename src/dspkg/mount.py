"""``dspkg mount``: a read-only FUSE file system of one dataset version.

The tree (names, sizes, modes 0444/0555, the version's creation time as every mtime)
comes from the manifest through :class:`~dspkg.dirindex.DirectoryIndex`, so listing and
walking cost no request. ``open`` asks the on-demand core for the file's cached object
(fetched and verified first when missing); ``read`` is a ``pread`` of that object, so a
file costs one fetch however small the kernel's reads are. A file that fails
verification opens as ``EIO``. Everything that would change the
tree is ``EROFS`` (the mount is also read-only for the kernel).

The files never change, so the kernel may keep names, attributes and pages for as long
as the mount lives (long timeouts, ``kernel_cache``, ``keep_cache``).

This module imports ``mfusepy`` (the ``mount`` extra); :mod:`dspkg.mounting` checks
that FUSE is usable before importing it.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any

import mfusepy

from dspkg.concurrency import LoopThread
from dspkg.dirindex import DIRECTORY, DirectoryIndex
from dspkg.errors import DspkgError
from dspkg.manifest import Manifest
from dspkg.ondemand import OnDemand

# Names, attributes and pages never change while mounted.
KERNEL_TIMEOUT = 24 * 3600.0


def _refuse(*_: Any) -> int:
    raise mfusepy.FuseOSError(errno.EROFS)


class VersionFS(mfusepy.Operations):  # type: ignore[misc]
    """The FUSE operations of one mounted version."""

    use_ns = True

    def __init__(
        self,
        manifest: Manifest,
        core: OnDemand,
        loop: LoopThread,
        *,
        on_ready: Callable[[], None] = lambda: None,
        log: Callable[[str], None] = lambda line: None,
    ) -> None:
        self.manifest = manifest
        self.index = DirectoryIndex.of(manifest)
        self.core = core
        self.loop = loop
        self.on_ready = on_ready
        self.log = log
        self.uid = os.getuid()
        self.gid = os.getgid()
        self.mtime_ns = _created_ns(manifest.created_at)
        self.total_bytes = manifest.total_bytes

    # --- set-up ---------------------------------------------------------------------------

    def init_with_config(self, conn: Any, config: Any) -> None:
        if config is not None:
            config.entry_timeout = KERNEL_TIMEOUT
            config.attr_timeout = KERNEL_TIMEOUT
            config.negative_timeout = KERNEL_TIMEOUT
            config.kernel_cache = 1
        self.on_ready()

    # --- the tree -------------------------------------------------------------------------

    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        index = self.index.file(path)
        if index is not None:
            size = self.manifest.files[index].size
            return self._attrs(stat.S_IFREG | 0o444, 1, size)
        if self.index.is_dir(path):
            return self._attrs(stat.S_IFDIR | 0o555, 2 + self.index.subdirectories(path), 0)
        raise mfusepy.FuseOSError(errno.ENOENT)

    def _attrs(self, mode: int, links: int, size: int) -> dict[str, Any]:
        t = self.mtime_ns
        return {
            "st_mode": mode,
            "st_nlink": links,
            "st_size": size,
            "st_blocks": (size + 511) // 512,
            "st_uid": self.uid,
            "st_gid": self.gid,
            "st_mtime": t,
        }

    def readdir(self, path: str, fh: int) -> list[Any]:
        if not self.index.is_dir(path):
            raise mfusepy.FuseOSError(errno.ENOTDIR)
        entries: list[Any] = [".", ".."]
        for name, index in self.index.listing(path):
            mode = stat.S_IFDIR if index == DIRECTORY else stat.S_IFREG
            entries.append((name, mode, 0))
        return entries

    def statfs(self, path: str) -> dict[str, int]:
        return {
            "f_bsize": 4096,
            "f_frsize": 4096,
            "f_blocks": (self.total_bytes + 4095) // 4096,
            "f_bfree": 0,
            "f_bavail": 0,
            "f_files": len(self.manifest.files) + len(self.index.children),
            "f_ffree": 0,
            "f_namemax": 255,
        }

    # --- files ----------------------------------------------------------------------------

    def open(self, path: str, fi: Any) -> int:
        if fi.flags & os.O_ACCMODE != os.O_RDONLY or fi.flags & os.O_TRUNC:
            raise mfusepy.FuseOSError(errno.EROFS)
        index = self.index.file(path)
        if index is None:
            raise mfusepy.FuseOSError(errno.EISDIR if self.index.is_dir(path) else errno.ENOENT)
        # Read-ahead hears of every open; a cached file is served without waiting for the
        # loop (the common case in a pass that read-ahead keeps ahead of).
        self.core.note_read(index)
        if self.core.cached(index) is None:
            self._fetch(index)
        # The handle is the file's index: reads open the cached object themselves, so no
        # descriptor is held and no release callback is needed (one Python call less per
        # file; the kernel keeps the pages, so a small file is read once).
        fi.fh = index
        fi.keep_cache = 1
        return 0

    def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
        index = fi.fh
        obj = self.core.cached(index) or self._fetch(index)  # pruned meanwhile: again
        try:
            fd = os.open(obj, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            self.log(f"cannot read {path[1:]}: {exc}")
            raise mfusepy.FuseOSError(errno.EIO) from None
        try:
            return os.pread(fd, size, offset)
        finally:
            os.close(fd)

    def _fetch(self, index: int) -> str:
        """The object of file ``index``, fetched and verified now; EIO if it cannot be."""
        try:
            return self.loop.call(self.core.path(index, noted=True))
        except DspkgError as exc:
            # The core logged a refused file already; this is for the store's errors.
            f = self.manifest.files[index]
            if not self.core.bad_files.get(f.sha256):
                self.log(f"cannot read {f.path}: {exc}")
            raise mfusepy.FuseOSError(errno.EIO) from None

    # --- nothing changes ------------------------------------------------------------------

    write = create = truncate = unlink = rmdir = mkdir = rename = _refuse
    chmod = chown = symlink = link = mknod = setxattr = removexattr = utimens = _refuse


def _created_ns(created_at: str) -> int:
    """The version's creation time as every entry's mtime (0 when unknown)."""
    try:
        stamp = datetime.fromisoformat(created_at.replace("Z", "+00:00"))
    except ValueError:
        return 0
    return int(stamp.timestamp()) * 10**9


def run_fuse(fs: VersionFS, mountpoint: str) -> None:
    """Serve ``fs`` at ``mountpoint`` until it is unmounted (or SIGINT/SIGTERM/SIGHUP,
    which libfuse answers by unmounting)."""
    try:
        mfusepy.FUSE(
            fs,
            mountpoint,
            foreground=True,
            raw_fi=True,
            ro=True,
            default_permissions=True,
            fsname="dspkg",
            subtype="dspkg",
        )
    except RuntimeError:
        # libfuse reports an exit by signal as a failure (status 8): that is how a mount
        # is meant to end. A mount that never started failed in the caller's checks or
        # printed libfuse's reason.
        sys.stderr.flush()
