"""Mounting and unmounting: is FUSE usable here, mount points, serving, mount processes.

A mount is served by a process of its own (``dspkg mount``, in the foreground), which
loads the manifest, pins the version in the cache while it runs and unmounts on
Ctrl-C, SIGTERM or ``dspkg unmount``. ``--background`` and the runner start that same
command as a child and wait until it says the mount is ready (a line on a pipe), so a
mount that fails reports its error line before anyone uses the mount point.

A mount process killed with SIGKILL leaves a mount point whose every access fails
with "transport endpoint is not connected"; ``dspkg unmount`` and the next mount at
that place detach it. The cache needs nothing: objects only ever enter it whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from dspkg.cache import Cache
from dspkg.concurrency import LoopThread
from dspkg.errors import DspkgError, MountError
from dspkg.loader import load_root
from dspkg.manifest import Manifest, ManifestRoot
from dspkg.names import VersionUri
from dspkg.pull_plan import Tuning
from dspkg.store import Store

if TYPE_CHECKING:
    from dspkg.fastread import FastRead
    from dspkg.mount import VersionFS
    from dspkg.ondemand import OnDemand
    from dspkg.versionview import VersionView

FSTYPE = "fuse.dspkg"
LIBFUSE3 = "libfuse3.so.3"
READY = b"ready\n"
# Seconds a mount whose files became readable waits for its first read before it builds
# the compiled READ's table anyway.
TABLE_DELAY = 1.0
# Seconds after its files became readable that a mount writes the version's record (for
# eviction; the pin protects the version meanwhile): its first reads need the CPU more.
RECORD_DELAY = 2.0
# How long a mount process may take to leave after SIGTERM before it is killed.
STOP_TIMEOUT = 30.0
_PR_SET_PDEATHSIG = 1

INSTALL_HINT = (
    "install FUSE (Debian/Ubuntu: apt-get install fuse3; then pip install 'dspkg[mount]'), "
    "or use dspkg pull to download the version instead"
)


def fuse_problem() -> str | None:
    """Why FUSE cannot be used on this machine, or None when it can."""
    if not os.path.exists("/dev/fuse"):
        return f"/dev/fuse does not exist (no FUSE in this kernel or container); {INSTALL_HINT}"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return (
            "/dev/fuse cannot be opened by this user; ask for access to it (group fuse) "
            "or use dspkg pull to download the version instead"
        )
    if importlib.util.find_spec("mfusepy") is None:
        return f"the Python package mfusepy is not installed; {INSTALL_HINT}"
    if os.geteuid() != 0 and _fusermount() is None:
        return f"fusermount3 is not installed; {INSTALL_HINT}"
    _name_libfuse()
    try:
        import mfusepy  # noqa: F401  (loads libfuse)
    except (OSError, AttributeError) as exc:
        return f"libfuse cannot be loaded ({exc}); {INSTALL_HINT}"
    return None


def _name_libfuse() -> None:
    """Tell mfusepy which libfuse to load when the dynamic loader finds libfuse 3 by its
    soname: mfusepy otherwise looks for it with ``ctypes.util.find_library``, which runs
    ``ldconfig`` (and a compiler) in subprocesses, twice (libfuse 2 first): tens of
    milliseconds of every mount's start, which the first byte waits for. A choice the
    user made (FUSE_LIBRARY_PATH, FUSE_LIBRARY_NAME) stands."""
    if "FUSE_LIBRARY_PATH" in os.environ or "FUSE_LIBRARY_NAME" in os.environ:
        return
    try:
        ctypes.CDLL(LIBFUSE3)
    except OSError:
        return
    os.environ["FUSE_LIBRARY_PATH"] = LIBFUSE3


def require_fuse(mountpoint: str) -> None:
    problem = fuse_problem()
    if problem is not None:
        raise MountError(f"cannot mount at {mountpoint}: {problem}", path=mountpoint)


def _fusermount() -> str | None:
    return shutil.which("fusermount3") or shutil.which("fusermount")


# --- mount points -------------------------------------------------------------------------


def mounted_fstype(path: Path) -> str | None:
    """The file system type mounted exactly at ``path`` (from /proc/self/mountinfo)."""
    target = os.path.abspath(path)
    found = None
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) < 10 or "-" not in fields:
            continue
        point = _unescape(fields[4])
        if point == target:
            found = fields[fields.index("-") + 1]  # the last mount there is the visible one
    return found


def _unescape(text: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    if "\\" not in text:
        return text
    return text.encode().decode("unicode_escape").encode("latin-1").decode()


def _stale(path: Path) -> bool:
    # statfs always reaches the file system's process; a stat could be answered from the
    # kernel's cache of attributes, which a mount keeps for a day.
    try:
        os.statvfs(path)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def prepare_mountpoint(path: Path) -> None:
    """Make ``path`` ready to mount on: created if absent, a stale dspkg mount detached."""
    shown = str(path)
    if _stale(path):
        kind = mounted_fstype(path)
        if kind != FSTYPE:
            raise MountError(
                f"{shown} is a dead {kind or 'FUSE'} mount of another program; unmount it "
                "first (fusermount3 -uz) or mount somewhere else",
                path=shown,
            )
        _detach(path, lazy=True)  # left by a mount process that was killed
    if mounted_fstype(path) == FSTYPE:
        raise MountError(
            f"{shown} is already a dspkg mount; run dspkg unmount {shown} first, "
            "or mount somewhere else",
            path=shown,
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise MountError(f"{shown} is not a directory; choose a directory", path=shown) from None
    except OSError as exc:
        raise MountError(
            f"cannot create the mount point {shown} ({exc.strerror})", path=shown
        ) from None
    if not path.is_dir():
        raise MountError(f"{shown} is not a directory; choose a directory", path=shown)


def unmount(path: Path) -> None:
    """Unmount the dspkg mount at ``path`` (also a stale one left by a killed process)."""
    shown = str(path)
    kind = mounted_fstype(path)
    if kind is None:
        raise MountError(f"nothing is mounted at {shown}", path=shown)
    if kind != FSTYPE:
        raise MountError(f"{shown} is a {kind} mount, not a dspkg mount; leaving it", path=shown)
    _detach(path, lazy=_stale(path))


def _detach(path: Path, *, lazy: bool) -> None:
    shown = str(path)
    tool = _fusermount()
    if tool is not None:
        argv = [tool, "-u", *(["-z"] if lazy else []), shown]
    elif shutil.which("umount"):
        argv = ["umount", *(["-l"] if lazy else []), shown]
    else:
        raise MountError(f"cannot unmount {shown}: {INSTALL_HINT}", path=shown)
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode == 0:
        return
    why = (done.stderr.strip().splitlines() or ["failed"])[-1]
    if "busy" in why.lower():
        raise MountError(
            f"cannot unmount {shown}: it is in use (a process has a file open there or "
            "works in it); close those and run dspkg unmount again",
            path=shown,
        )
    raise MountError(f"cannot unmount {shown}: {why}", path=shown)


# --- serving --------------------------------------------------------------------------------


@dataclass(frozen=True)
class MountSummary:
    uri: str
    mountpoint: str
    files: int
    bytes: int
    files_fetched: int
    bytes_downloaded: int
    requests: int
    refused: int
    seconds: float

    def describe(self) -> str:
        from dspkg.sizes import format_size

        refused = f", {self.refused} refused" if self.refused else ""
        return (
            f"unmounted {self.uri} from {self.mountpoint} after {self.seconds:.1f} s: "
            f"{self.files_fetched:,} of {self.files:,} files fetched{refused} "
            f"({format_size(self.bytes_downloaded)} = {self.bytes_downloaded:,} bytes downloaded "
            f"in {self.requests:,} requests)"
        )


def serve(
    uri: VersionUri,
    mountpoint: Path,
    store: Store,
    cache: Cache,
    *,
    prefetch: bool = False,
    tuning: Tuning | None = None,
    speedups: bool = True,
    log: Callable[[str], None] = lambda line: None,
    on_ready: Callable[[ManifestRoot], None] = lambda root: None,
) -> MountSummary:
    """Mount ``uri`` at ``mountpoint`` and serve it until it is unmounted. ``speedups``:
    the compiled READ and range extractor where they are built.

    The mount serves once the version's root is read; its shards load in the background
    (folders wait for theirs), then the core that reads files starts.
    """
    started = time.monotonic()
    loop = LoopThread("dspkg-mount")
    ready = threading.Event()
    files: _Files | None = None
    try:
        # The root's request flies while FUSE is checked (which loads libfuse and mfusepy).
        loading_root = loop.spawn(load_root(store, cache, uri))
        try:
            require_fuse(str(mountpoint))
            prepare_mountpoint(mountpoint)
        except BaseException:
            loading_root.cancel()
            raise
        from dspkg.fastread import compiled
        from dspkg.mount import VersionFS, run_fuse
        from dspkg.versionview import VersionView

        root = loading_root.result()
        view = VersionView(store, cache, root, log=log)
        # The packages' sizes are asked for now: the first read then waits for no HEAD.
        checks = loop.call(_check_packages(store, root))
        fast_read = speedups and compiled() is not None

        def mounted() -> None:
            ready.set()
            on_ready(root)

        with cache.pin(store.url, root.uri):
            fs = VersionFS(view, loop, on_ready=mounted, log=log)
            files = _Files(store, cache, view, fs, checks, tuning, speedups=fast_read, log=log)
            loading = loop.spawn(files.start(prefetch=prefetch))
            try:
                run_fuse(fs, str(mountpoint), fast_read=fast_read)
            finally:
                loading.cancel()
                loop.call(files.close())
    finally:
        loop.close()
    if not ready.is_set():
        raise MountError(
            f"could not mount {uri} at {mountpoint} (libfuse's message above says why)",
            path=str(mountpoint),
        )
    core = files.core if files is not None else None
    return MountSummary(
        uri=str(root.uri),
        mountpoint=str(mountpoint),
        files=root.files,
        bytes=root.bytes,
        files_fetched=core.fetched if core is not None else 0,
        bytes_downloaded=store.stats.bytes_down,
        requests=store.stats.requests,
        refused=len(core.bad_files) if core is not None else 0,
        seconds=time.monotonic() - started,
    )


async def _check_packages(store: Store, root: ManifestRoot) -> dict[int, asyncio.Task[Any]]:
    from dspkg.fetcher import check_package
    from dspkg.ondemand import EAGER_CHECKS

    return {
        i: asyncio.create_task(check_package(store, info))
        for i, info in enumerate(root.packages[:EAGER_CHECKS])
    }


class _Files:
    """What reads files, started once the whole manifest is in: the on-demand core, the
    compiled READ's table, the version's record in the cache (off the path to the first
    byte: the pin protects the version meanwhile)."""

    def __init__(
        self,
        store: Store,
        cache: Cache,
        view: VersionView,
        fs: VersionFS,
        checks: dict[int, asyncio.Task[Any]],
        tuning: Tuning | None,
        *,
        speedups: bool,
        log: Callable[[str], None],
    ) -> None:
        self.store = store
        self.cache = cache
        self.view = view
        self.fs = fs
        self.checks = checks
        self.tuning = tuning
        self.speedups = speedups
        self.log = log
        self.core: OnDemand | None = None
        self.fast: FastRead | None = None
        self.recorded = False

    async def start(self, *, prefetch: bool) -> None:
        from dspkg.fastread import FastRead
        from dspkg.ondemand import OnDemand

        try:
            manifest = await self.view.load_all()
        except DspkgError as exc:  # the view logged it
            self.fs.fail(exc)
            return
        loop = asyncio.get_running_loop()
        self.core = OnDemand(
            self.store,
            self.cache,
            manifest,
            tuning=self.tuning,
            log=self.log,
            speedups=self.speedups,
            checks=self.checks,
        )
        await self.core.start(prefetch=prefetch)
        self.fs.attach(manifest, self.core)
        if self.speedups:
            # Built once the first file was served, in Python (or a moment later): its
            # first byte does not wait for the table, nor share the CPU with it.
            await loop.run_in_executor(None, self.fs.served.wait, TABLE_DELAY)
            self.fast = await loop.run_in_executor(None, FastRead.build, manifest, self.cache)
            if self.fast is not None:
                for i, f in enumerate(manifest.files) if self.core.bad_files else ():
                    if self.core.refused(f.sha256):
                        self.fast.refuse(i)  # refused while the table was being built
                self.fast.start(loop, self.core.note_reads)
                self.fs.fast = self.fast
        await asyncio.sleep(RECORD_DELAY)
        await loop.run_in_executor(None, self._record, manifest)

    def _record(self, manifest: Manifest) -> None:
        if self.recorded:
            return
        self.recorded = True
        self.cache.record_version(
            self.store.url,
            manifest.uri,
            files=len(manifest.files),
            nbytes=manifest.total_bytes,
            objects=(f.sha256 for f in manifest.files),
        )

    async def close(self) -> None:
        """After the mount ended: nothing calls into the table or the core any more. The
        version's record is written now if it was not yet."""
        if self.fast is not None:
            self.fast.stop()
        manifest = self.view.manifest
        if manifest is not None and not self.recorded:
            await asyncio.get_running_loop().run_in_executor(None, self._record, manifest)
        await self.view.close()
        if self.core is not None:
            await self.core.close()
        for check in self.checks.values():
            check.cancel()
        await asyncio.gather(*self.checks.values(), return_exceptions=True)


def exit_with_parent(parent: int) -> None:
    """Ask the kernel for SIGTERM when the parent (pid ``parent``) dies: a runner killed
    with SIGKILL still gets its mounts unmounted."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def announce_ready(fd: int) -> None:
    """Tell the process that started this mount that it is ready (then close the pipe)."""
    with contextlib.suppress(OSError):
        os.write(fd, READY)
    with contextlib.suppress(OSError):
        os.close(fd)


# --- mount processes ------------------------------------------------------------------------


@dataclass
class MountProcess:
    """A ``dspkg mount`` child serving ``mountpoint``."""

    proc: subprocess.Popen[bytes]
    mountpoint: Path

    def stop(self) -> None:
        """Unmount and wait for the process; kill it (and detach) if it does not leave."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # libfuse unmounts and returns
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if mounted_fstype(self.mountpoint) == FSTYPE:
            with contextlib.suppress(MountError):
                _detach(self.mountpoint, lazy=True)


def mount_argv(
    uri: str,
    mountpoint: Path,
    *,
    store: str,
    store_options: Mapping[str, str] | None = None,
    prefetch: bool = False,
) -> list[str]:
    """The command line of a foreground mount, in this interpreter."""
    argv = [sys.executable, "-m", "dspkg.cli", "mount", uri, str(mountpoint), "--store", store]
    for key, value in (store_options or {}).items():
        argv += ["--store-option", f"{key}={value}"]
    if prefetch:
        argv.append("--prefetch")
    return argv


def start_mount(
    argv: Sequence[str],
    mountpoint: Path,
    *,
    env: Mapping[str, str],
    output: IO[bytes] | int | None = None,
    detach: bool = False,
    with_parent: bool = False,
) -> MountProcess:
    """Start a mount process and return once it serves ``mountpoint``.

    Its output goes to ``output`` (inherited by default). ``detach`` puts it in a session
    of its own (``--background``); ``with_parent`` makes it unmount when this process
    dies. A process that exits before it is ready raises :class:`MountError` with its
    last line of error output when that went to a file.
    """
    read_end, write_end = os.pipe()
    extra = ["--ready-fd", str(write_end)]
    if with_parent:
        extra += ["--exit-with-parent", str(os.getpid())]
    try:
        proc = subprocess.Popen(
            [*argv, *extra],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            pass_fds=(write_end,),
            start_new_session=detach,
        )
    finally:
        os.close(write_end)
    with os.fdopen(read_end, "rb") as ready:
        said = ready.read(len(READY))
    if said == READY:
        return MountProcess(proc, mountpoint)
    code = proc.wait()
    why = _last_error(output) or f"the mount process exited with status {code}"
    raise MountError(why.removeprefix("dspkg: error: "), path=str(mountpoint))


def _last_error(output: IO[bytes] | int | None) -> str | None:
    name = getattr(output, "name", None)
    if not isinstance(name, str):
        return None
    with contextlib.suppress(OSError):
        lines = Path(name).read_text(errors="replace").strip().splitlines()
        errors = [line for line in lines if line.startswith("dspkg: error: ")]
        if errors:
            return errors[-1]
        if lines:
            return lines[-1]
    return None
