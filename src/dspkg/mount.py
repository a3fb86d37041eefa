"""``dspkg mount``: a read-only FUSE file system of one dataset version.

The tree (names, sizes, modes 0444/0555, the version's creation time as every mtime)
comes from the manifest through :class:`~dspkg.dirindex.DirectoryIndex`, so listing and
walking cost no request. The mount serves as soon as the version's root is read: a
folder's listing or lookup waits only for the manifest shards that can hold its paths
(:class:`~dspkg.versionview.VersionView`), a file's read for the whole manifest. A shard
that cannot be loaded or checked makes what needs it ``EIO`` (logged once), never a
listing without it.

``read`` asks the on-demand core for the file's cached object (fetched and verified
first when missing) and ``pread``s it, so a file costs one fetch however small the
kernel's reads are, and no byte of a file is returned before all of its bytes verified.
A file that fails verification reads as ``EIO``. Everything that would change the tree
is ``EROFS`` (the mount is also read-only for the kernel).

The files never change, so the kernel may keep names, attributes and pages for as long
as the mount lives (long timeouts, ``kernel_cache``). A pass over every file is bound by
this process's CPU, one Python callback per request the kernel sends, so the mount asks
for as few requests per file as the kernel allows:

- listings are READDIRPLUS with every entry's attributes, so the kernel knows each
  name before it is opened (no LOOKUP per file);
- ``open`` answers ENOSYS once, FUSE's "no open" mode: the kernel sends no OPEN and no
  RELEASE from then on, and keeps each file's pages (``flush`` is left to libfuse,
  which answers ENOSYS once too);
- what is left per file is one READ for a small file (and an IOCTL, answered by
  libfuse, when the reader asks ``isatty``), which C answers when the file's object is
  in the cache (:mod:`dspkg.fastread`); this Python ``read`` gets the rest.

This module imports ``mfusepy`` (the ``mount`` extra); :mod:`dspkg.mounting` checks
that FUSE is usable before importing it.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import stat
import sys
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import mfusepy

from dspkg.concurrency import LoopThread
from dspkg.dirindex import DIRECTORY
from dspkg.errors import DspkgError
from dspkg.fastread import FastRead, install
from dspkg.manifest import Manifest
from dspkg.ondemand import OnDemand
from dspkg.versionview import VersionView

# fill(name, attributes, offset of the next entry, flags): True once the buffer is full.
Filler = Callable[[bytes, Any, int, int], bool]

_T = TypeVar("_T")

# Names, attributes and pages never change while mounted.
KERNEL_TIMEOUT = 24 * 3600.0

# libfuse 3 (fuse_common.h): capabilities in fuse_conn_info.want / .capable.
CAP_READDIRPLUS = 1 << 13
CAP_READDIRPLUS_AUTO = 1 << 14
CAP_NO_OPEN_SUPPORT = 1 << 17
# libfuse keeps its worker threads for the mount's life from 3.12 on (before, idle ones
# come and go, and a kept thread state would outlive each).
PIN_THREAD_STATES = (mfusepy.fuse_version_major, mfusepy.fuse_version_minor) >= (3, 12)
# fuse.h: readdir's flags, and the filler's flag for an entry with all its attributes.
READDIR_PLUS = 1 << 0
FILL_DIR_PLUS = 1 << 1


def _refuse(*_: Any) -> int:
    raise mfusepy.FuseOSError(errno.EROFS)


class VersionFS(mfusepy.Operations):  # type: ignore[misc]
    """The FUSE operations of one mounted version: the tree from ``view`` as its shards
    load, files once :meth:`attach` hands over the core (or :meth:`fail` says why not)."""

    use_ns = True

    def __init__(
        self,
        view: VersionView,
        loop: LoopThread,
        *,
        on_ready: Callable[[], None] = lambda: None,
        log: Callable[[str], None] = lambda line: None,
    ) -> None:
        self.view = view
        self.index = view.index
        self.loop = loop
        self.on_ready = on_ready
        self.log = log
        self.uid = os.getuid()
        self.gid = os.getgid()
        self.mtime_ns = _created_ns(view.root.created_at)
        self.total_bytes = view.root.bytes
        self.no_open = False  # set in init when the kernel can do without OPEN
        self.manifest: Manifest | None = None
        self.core: OnDemand | None = None
        # The compiled READ's table, told of every refused file.
        self.fast: FastRead | None = None
        self._attached = threading.Event()
        self.served = threading.Event()  # a file's bytes went out (or one failed)
        self._failure: DspkgError | None = None
        self._told: set[str] = set()  # refusals of the tree logged already

    def attach(self, manifest: Manifest, core: OnDemand) -> None:
        """The whole manifest is in: files can be read (``fast`` may follow)."""
        self.manifest = manifest
        self.core = core
        self._attached.set()

    def fail(self, exc: DspkgError) -> None:
        """The manifest cannot be had whole: every read is EIO."""
        self._failure = exc
        self._attached.set()

    # --- set-up ---------------------------------------------------------------------------

    def init_with_config(self, conn: Any, config: Any) -> None:
        if config is not None:
            config.entry_timeout = KERNEL_TIMEOUT
            config.attr_timeout = KERNEL_TIMEOUT
            config.negative_timeout = KERNEL_TIMEOUT
            config.kernel_cache = 1
        if conn is not None:
            self.no_open = bool(conn.capable & CAP_NO_OPEN_SUPPORT)
            if conn.capable & CAP_READDIRPLUS:
                # Every chunk of a listing with attributes, not only the first one ("auto"
                # sends plain READDIR after it): a name the kernel learnt from a listing
                # costs no LOOKUP when it is opened.
                conn.want = (conn.want | CAP_READDIRPLUS) & ~CAP_READDIRPLUS_AUTO
        self.on_ready()

    # --- the tree -------------------------------------------------------------------------

    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        if path == "/":
            # Every path walk through the mount starts here: the top waits for no shard
            # (its count of subfolders needs them all: "1", unknown, until they are in).
            known = self.view.holds("")
            links = 2 + self._tree(self.index.subdirectories, path) if known else 1
            return self._attrs(stat.S_IFDIR | 0o555, links, 0)
        self._need(path)
        index = self.index.file(path)
        if index is not None:
            return self._attrs(stat.S_IFREG | 0o444, 1, self.view.size(index))
        if self.index.is_dir(path):
            links = 2 + self._tree(self.index.subdirectories, path)
            return self._attrs(stat.S_IFDIR | 0o555, links, 0)
        raise mfusepy.FuseOSError(errno.ENOENT)

    def _need(self, path: str) -> None:
        """Wait until the shards that may hold ``path`` (as a file or a folder) are in;
        EIO if one cannot be had (the view logged why)."""
        prefix = path[1:]
        if self.view.holds(prefix):
            return
        try:
            self.loop.call(self.view.need(prefix))
        except DspkgError:
            raise mfusepy.FuseOSError(errno.EIO) from None

    def _tree(self, question: Callable[[str], _T], path: str) -> _T:
        """The index's answer; EIO (logged once) for a name that is both a file and a
        folder."""
        try:
            return question(path)
        except DspkgError as exc:
            if str(exc) not in self._told:
                self._told.add(str(exc))
                self.log(f"cannot list {path}: {exc}")
            raise mfusepy.FuseOSError(errno.EIO) from None

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
        """The plain listing (libfuse 2, or a libfuse that asks without "plus")."""
        entries: list[Any] = [".", ".."]
        for name, index in self._listing(path):
            mode = stat.S_IFDIR if index == DIRECTORY else stat.S_IFREG
            entries.append((name, mode, 0))
        return entries

    def fill_directory(self, path: str, offset: int, fill: Filler, plus: bool) -> None:
        """Entries of ``path`` from position ``offset`` on, each with the offset of the one
        after it, until ``fill`` says the kernel's buffer is full. With ``plus`` every
        entry carries its attributes, as a LOOKUP would answer (libfuse records the
        node; the kernel caches name and attributes for KERNEL_TIMEOUT)."""
        listing = self._listing(path)
        st = mfusepy.c_stat()
        st.st_uid = self.uid
        st.st_gid = self.gid
        st.st_mtimespec.tv_sec, st.st_mtimespec.tv_nsec = divmod(self.mtime_ns, 10**9)
        flags = FILL_DIR_PLUS if plus else 0
        if offset < 2:
            st.st_mode = stat.S_IFDIR | 0o555
            for position, name in ((0, "."), (1, ".."))[offset:]:
                if fill(name.encode(), st, position + 1, 0):
                    return
        size_of = self.view.size
        for position in range(max(offset, 2), len(listing) + 2):
            name, index = listing[position - 2]
            if index == DIRECTORY:
                st.st_mode = stat.S_IFDIR | 0o555
                st.st_nlink = 2 + self._tree(self.index.subdirectories, _join(path, name))
                st.st_size = st.st_blocks = 0
            else:
                size = size_of(index)
                st.st_mode = stat.S_IFREG | 0o444
                st.st_nlink = 1
                st.st_size = size
                st.st_blocks = (size + 511) // 512
            if fill(name.encode("utf-8", "surrogateescape"), st, position + 1, flags):
                return

    def _listing(self, path: str) -> list[tuple[str, int]]:
        """The sorted entries of directory ``path`` (the index keeps them: a listing
        comes in chunks)."""
        self._need(path)
        if not self.index.is_dir(path):
            raise mfusepy.FuseOSError(errno.ENOTDIR)
        return self._tree(self.index.listing, path)

    def statfs(self, path: str) -> dict[str, int]:
        return {
            "f_bsize": 4096,
            "f_frsize": 4096,
            "f_blocks": (self.total_bytes + 4095) // 4096,
            "f_bfree": 0,
            "f_bavail": 0,
            "f_files": self.view.root.files,
            "f_ffree": 0,
            "f_namemax": 255,
        }

    # --- files ----------------------------------------------------------------------------

    def open(self, path: str, fi: Any) -> int:
        if fi.flags & os.O_ACCMODE != os.O_RDONLY or fi.flags & os.O_TRUNC:
            raise mfusepy.FuseOSError(errno.EROFS)
        if self.no_open:
            # "No open": the kernel treats this and every later open as done, and sends
            # neither OPEN nor RELEASE again. Nothing is lost: writes never get this far
            # on a read-only mount, and read verifies before it returns a byte.
            raise mfusepy.FuseOSError(errno.ENOSYS)
        fi.keep_cache = 1
        return 0

    def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
        core = self.core
        if core is None:
            self._attached.wait()  # the manifest is loading: its shards, then the checks
            core = self.core
            if core is None:
                raise mfusepy.FuseOSError(errno.EIO)  # the view logged why
        index = self.index.file(path)
        if index is None:
            raise mfusepy.FuseOSError(errno.EISDIR if self.index.is_dir(path) else errno.ENOENT)
        if offset == 0:
            # A reader starts this file: read-ahead hears of it (once per file, as the
            # kernel keeps the pages).
            core.note_read(index)
        fd = core.open_cached(index)
        if fd is None:
            obj = self._fetch(index)
            try:
                fd = os.open(obj, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:  # pruned meanwhile
                self.log(f"cannot read {path[1:]}: {exc}")
                raise mfusepy.FuseOSError(errno.EIO) from None
        try:
            return os.pread(fd, size, offset)
        finally:
            os.close(fd)
            self.served.set()

    def _fetch(self, index: int) -> str:
        """The object of file ``index``, fetched and verified now; EIO if it cannot be."""
        assert self.core is not None and self.manifest is not None
        try:
            return self.loop.call(self.core.path(index, noted=True))
        except DspkgError as exc:
            # The core logged a refused file already; this is for the store's errors.
            f = self.manifest.files[index]
            if self.core.refused(f.sha256):
                if self.fast is not None:
                    self.fast.refuse(index)  # never served, even if it turns up later
            else:
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


class _FUSE(mfusepy.FUSE):  # type: ignore[misc]
    """mfusepy's bridge, with listings that carry attributes (mfusepy fills only the
    mode, so the kernel would LOOKUP every name again), and with ``fast_read`` libfuse's
    read operation in C (:mod:`dspkg.fastread`), which passes what it does not serve to
    mfusepy's Python read."""

    def __init__(
        self, operations: VersionFS, mountpoint: str, *, fast_read: bool, **options: Any
    ) -> None:
        self._pinned: set[int] = set()
        self._python_read: Any = None  # the ctypes callback the compiled READ passes on to
        if not fast_read:
            super().__init__(operations, mountpoint, **options)  # serves until unmounted
            return
        # mfusepy builds libfuse's table of operations and mounts in one call: the read
        # entry is swapped on its way to libfuse.
        real = mfusepy.fuse_main_real

        def main(argc: int, argv: Any, ops: Any, size: int, data: Any) -> int:
            mfusepy.fuse_main_real = real
            self._python_read = install(ops.contents, functools.partial(self._wrapper, self.read))
            return int(real(argc, argv, ops, size, data))

        mfusepy.fuse_main_real = main
        try:
            super().__init__(operations, mountpoint, **options)  # serves until unmounted
        finally:
            mfusepy.fuse_main_real = real

    def _wrapper(self, func: Any, *args: Any, **kwargs: Any) -> Any:
        # libfuse calls from its own worker threads, which Python does not know: for
        # each callback ctypes makes a thread state and drops it after, a good part of
        # a READ's cost. One extra PyGILState_Ensure per worker, never released, keeps
        # its state for the mount's life (libfuse >= 3.12 keeps its workers, at most 10).
        if PIN_THREAD_STATES:
            ident = threading.get_ident()
            if ident not in self._pinned:
                self._pinned.add(ident)
                ctypes.pythonapi.PyGILState_Ensure()
        return super()._wrapper(func, *args, **kwargs)

    def readdir_fuse_3(
        self, path: bytes | None, buf: Any, filler: Any, offset: int, fip: Any, flags: int
    ) -> int:
        def fill(name: bytes, st: Any, next_offset: int, fill_flags: int) -> bool:
            return bool(filler(buf, name, ctypes.byref(st), next_offset, fill_flags))

        decoded = "/" if path is None else path.decode("utf-8", "surrogateescape")
        self.operations.fill_directory(decoded, offset, fill, bool(flags & READDIR_PLUS))
        return 0


def run_fuse(fs: VersionFS, mountpoint: str, *, fast_read: bool = False) -> None:
    """Serve ``fs`` at ``mountpoint`` until it is unmounted (or SIGINT/SIGTERM/SIGHUP,
    which libfuse answers by unmounting); ``fast_read``: READs go to the compiled read
    first (it serves from ``fs.fast`` once that is active)."""
    try:
        _FUSE(
            fs,
            mountpoint,
            fast_read=fast_read,
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


def _join(directory: str, name: str) -> str:
    return f"/{name}" if directory == "/" else f"{directory}/{name}"
