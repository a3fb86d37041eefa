"""The local, content-addressed cache that pulls fill and later pulls reuse.

Layout under the cache root (``$DSPKG_CACHE`` or the user cache directory)::

    objects/<hex[0:2]>/<hex[2:]>     file contents by sha256: read-only, fixed mtime
    tmp/<host>-<pid>-<rand>/         one private directory per running process (.lock inside)
    manifests/<store-id>/<dataset>/<version>.json    copies of immutable manifests (v1, v2 roots)
    manifests/<store-id>/<dataset>/shards/<sha256>.json.gz   v2 manifest shards, checked
    versions/<store-id>/<dataset>/<version>.json     what a pulled version uses, last use
    versions/<store-id>/<dataset>/<version>.partial  beside a record of subset pulls only
    pins/<host>-<pid>-<rand>.json    a version a running pull or job uses (flock held)
    locks/<name>.lock                advisory locks: one download of a package at a time

Correctness never depends on a lock: every object appears whole under its name at
once (a link of an unnamed file written in its folder, of a file finished in DEST, or
a rename of a private temp file where unnamed files are not supported), so a reader
sees a whole object or none, and a process killed at any moment leaves only its temp
directory, which the next process sweeps.

The tamper check. A pull may hardlink an object into DEST, and then anything that
writes to the DEST file writes to the object. Objects have no write bits, but root
ignores them, and tools like ``cp -p`` or ``rsync --inplace -t`` restore the mtime
after writing. What no tool can set is the inode's change time (ctime): every write,
chmod, utime, link or unlink moves it to "now". dspkg keeps an object's mtime and
ctime together: it sets the mtime whenever it creates, links or checks an object, and
those acts set the ctime too. An object whose ctime has moved away from its mtime has
been touched by something else since, so it is hashed again before use: kept if its
bytes still match its name (a DEST deleted, a link added: the common, harmless case),
dropped and fetched again if not. See :func:`fingerprint_ok`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import itertools
import json
import os
import secrets
import shutil
import socket
import stat
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dspkg.errors import CacheError, DspkgError
from dspkg.locks import FileLock, holder_alive
from dspkg.names import VersionUri

# How far an object's ctime may run ahead of its mtime when only dspkg touched it: its
# own acts (write then link, link then utime) follow each other within milliseconds.
CTIME_SLACK_NS = 1_000_000_000
STALE_FOREIGN_TEMP = 24 * 3600
# Objects written to a version record at a time (its list is streamed, never held whole).
RECORD_CHUNK = 10_000


def store_id(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def cache_error(exc: OSError, where: Path | str) -> CacheError:
    if exc.errno == errno.ENOSPC or exc.errno == errno.EDQUOT:
        return CacheError(
            f"no space left in the cache directory {where}; free space, run "
            "'dspkg cache prune --max-size SIZE', or point DSPKG_CACHE elsewhere",
            path=str(where),
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return CacheError(
            f"cannot write to the cache directory {where} ({exc.strerror}); fix its permissions "
            "or point DSPKG_CACHE elsewhere",
            path=str(where),
        )
    return CacheError(f"cache directory {where}: {exc.strerror or exc}", path=str(where))


@dataclass(frozen=True)
class VersionRecord:
    """What the cache knows of a version it served: its objects and when it was last used."""

    store: str
    uri: str
    files: int
    nbytes: int
    objects: tuple[str, ...]
    last_used: float
    partial: bool = False  # only subsets were pulled: these objects are part of the version

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {
            "bytes": self.nbytes,
            "files": self.files,
            "last_used": self.last_used,
            "objects": list(self.objects),
            "schema_version": 1,
            "store": self.store,
            "uri": self.uri,
        }
        if self.partial:
            doc["partial"] = True
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> VersionRecord:
        doc = json.loads(data)
        return cls(
            store=str(doc["store"]),
            uri=str(doc["uri"]),
            files=int(doc["files"]),
            nbytes=int(doc["bytes"]),
            objects=tuple(str(o) for o in doc["objects"]),
            last_used=float(doc["last_used"]),
            partial=doc.get("partial") is True,
        )


# An unnamed file in a folder (Linux's O_TMPFILE), and the errors that say there is none.
_UNNAMED = (os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC) if hasattr(os, "O_TMPFILE") else 0
_NO_UNNAMED = (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL)


@functools.cache
def _root_fd() -> int:
    return os.open("/", os.O_PATH | os.O_CLOEXEC)


def _link_unnamed(fd: int, final: str) -> None:
    """Give the unnamed file ``fd`` the name ``final`` (linkat with AT_SYMLINK_FOLLOW
    through /proc: Python calls linkat, not link, only when given a folder descriptor,
    which an absolute path then ignores)."""
    os.link(f"/proc/self/fd/{fd}", final, src_dir_fd=_root_fd(), follow_symlinks=True)


class Cache:
    """One process's handle on the shared cache directory; use as a context manager."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects = root / "objects"
        self.tmp = root / "tmp"
        self.manifests = root / "manifests"
        self.versions = root / "versions"
        self.locks = root / "locks"
        self.pins = root / "pins"
        self._own: Path | None = None
        self._lock_fd: int | None = None
        self._names = itertools.count(1)  # next() is atomic: safe from worker threads
        self._own_str = ""
        self._objects_str = str(self.objects)
        # Objects are written unnamed while the file system allows it (write_object).
        self._unnamed = _UNNAMED != 0 and os.path.isdir("/proc/self/fd")

    def __enter__(self) -> Cache:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        try:
            for path in (self.objects, self.tmp, self.manifests, self.versions, self.pins):
                path.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):  # locks only save work: go on without them
                self.locks.mkdir(exist_ok=True)
            if not os.path.isdir(f"{self._objects_str}/ff"):
                for i in range(256):
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(f"{self._objects_str}/{i:02x}")
            self.sweep()
            name = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
            own = self.tmp / name
            own.mkdir()
            fd = os.open(own / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise cache_error(exc, self.root) from None
        self._lock_fd = fd
        self._own = own
        self._own_str = str(own)

    def close(self) -> None:
        if self._own is not None:
            shutil.rmtree(self._own, ignore_errors=True)
            self._own = None
            self._own_str = ""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def sweep(self) -> int:
        """Remove the temp directories of processes that are gone; return how many."""
        removed = 0
        host = socket.gethostname()
        for entry in self.tmp.iterdir():
            if _temp_owner_alive(entry, host):
                continue
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    entry.unlink()
            removed += 1
        return removed

    # --- objects -------------------------------------------------------------------

    def object_path(self, sha256: str) -> str:
        """Where the object ``sha256`` lives (a plain string: hot loops build millions)."""
        return f"{self._objects_str}/{sha256[:2]}/{sha256[2:]}"

    def lookup(self, sha256: str, size: int, *, read_only: bool = False) -> bool:
        """True if the object is cached with exactly its bytes. One ``stat`` when nothing
        else touched it since dspkg did; else its bytes are hashed again and the object
        kept (and marked checked) or dropped. ``read_only`` (a dry run) changes nothing
        and trusts only untouched objects."""
        path = self.object_path(sha256)
        try:
            info = os.stat(path)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise cache_error(exc, path) from None
        if fingerprint_ok(info, size):
            return True
        return not read_only and self.recheck(sha256, size)

    def named(self, shas: Collection[str], *, budget: int) -> set[str] | None:
        """Those of ``shas`` whose object's name is in the cache now, from one listing of
        each folder they fall in instead of a ``stat`` each (a cold pull into an empty or
        small cache); None once the folders held more than ``budget`` names (a big cache:
        a ``stat`` each is cheaper). A name found says nothing of its bytes: check it with
        :meth:`lookup`. A name not found is an object to fetch."""
        # The folders first, then one set operation: an empty cache costs 256 listings,
        # not a pass over every name in Python.
        held: set[str] = set()
        listed = 0
        for prefix in sorted({sha[:2] for sha in shas}):
            try:
                names = os.listdir(f"{self._objects_str}/{prefix}")
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise cache_error(exc, self.root) from None
            listed += len(names)
            if listed > budget:
                return None
            held.update(prefix + name for name in names)
        return held.intersection(shas) if held else set()

    def recheck(self, sha256: str, size: int) -> bool:
        """Hash an object that something touched: keep it if its bytes match its name
        (marking it checked now), drop it otherwise. True when kept."""
        path = self.object_path(sha256)
        if object_problem(path, sha256, size) is None:
            self.touch(sha256)
            return True
        self.drop(sha256)
        return False

    def touch(self, sha256: str) -> None:
        """Mark an object as checked now: its mtime and ctime meet again (see module doc).
        Called after dspkg itself links the object, which moves its ctime."""
        with contextlib.suppress(FileNotFoundError):
            os.utime(self.object_path(sha256))

    def drop(self, sha256: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.object_path(sha256))

    def temp_path(self) -> Path:
        return Path(self.temp_name())

    def temp_name(self) -> str:
        """A fresh path in this process's private temp directory."""
        if not self._own_str:
            raise RuntimeError("cache is not open")
        return f"{self._own_str}/{next(self._names)}"

    def write_object(self, sha256: str, pieces: Sequence[bytes | memoryview]) -> None:
        """Insert verified bytes under their sha256, atomically (safe from any thread).

        Written unnamed in the object's own folder (O_TMPFILE), then linked to its name:
        threads writing at once share no folder (a rename out of one temp folder makes
        them wait on its lock), and a crash leaves nothing behind. Where the file system
        has no unnamed files, a temp file renamed into place."""
        final = self.object_path(sha256)
        if self._unnamed:
            try:
                fd = os.open(os.path.dirname(final), _UNNAMED, 0o444)
            except OSError as exc:
                if exc.errno not in _NO_UNNAMED:
                    raise cache_error(exc, self.root) from None
                self._unnamed = False
            else:
                try:
                    for piece in pieces:
                        _write_all(fd, piece)
                    with contextlib.suppress(FileExistsError):  # another process cached it
                        _link_unnamed(fd, final)
                except OSError as exc:
                    raise cache_error(exc, self.root) from None
                finally:
                    os.close(fd)
                return
        tmp = self.temp_name()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
            try:
                for piece in pieces:
                    _write_all(fd, piece)
            finally:
                os.close(fd)
            os.rename(tmp, self.object_path(sha256))
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise cache_error(exc, self.root) from None

    def object_writer(self) -> ObjectWriter:
        """A new object written piece by piece (for objects too big to hold in memory)."""
        return ObjectWriter(self)

    def iter_objects(self) -> Iterable[tuple[str, Path]]:
        for sub in sorted(self.objects.iterdir()):
            if not sub.is_dir():
                continue
            for entry in os.scandir(sub):
                yield sub.name + entry.name, Path(entry.path)

    def log_file(self, name: str) -> Path:
        """Where a background process (a mount) writes its log: ``logs/<name>``."""
        logs = self.root / "logs"
        try:
            logs.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise cache_error(exc, logs) from None
        return logs / name

    # --- locks and pins ---------------------------------------------------------------

    def lock(self, *parts: str) -> FileLock:
        """The advisory lock named by ``parts`` (e.g. a store URL and a package key)."""
        name = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]
        return FileLock(self.locks / f"{name}.lock")

    @contextlib.contextmanager
    def pin(self, store: str, uri: VersionUri) -> Iterator[None]:
        """Keep ``uri``'s objects from eviction while the block runs."""
        name = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}.json"
        path = self.pins / name
        doc = {"schema_version": 1, "store": store, "uri": str(uri)}
        try:
            path.write_text(json.dumps(doc, sort_keys=True))
        except OSError as exc:
            raise cache_error(exc, self.pins) from None
        lock = FileLock(path)
        lock.acquire()
        try:
            yield
        finally:
            lock.release()
            with contextlib.suppress(OSError):
                path.unlink()

    def pinned(self) -> list[tuple[str, VersionUri]]:
        """Versions pinned by live processes; pins of dead ones are removed."""
        found = []
        for path in sorted(self.pins.glob("*.json")):
            if not holder_alive(path):
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            try:
                doc = json.loads(path.read_text())
                found.append((str(doc["store"]), VersionUri.parse(doc["uri"])))
            except (OSError, ValueError, KeyError, DspkgError):
                continue
        return found

    # --- manifests and version records ----------------------------------------------

    def _record_path(self, base: Path, store: str, uri: VersionUri) -> Path:
        return base / store_id(store) / uri.dataset / f"{uri.version}.json"

    def record_files(self, store: str, uri: VersionUri) -> tuple[Path, ...]:
        """The files the cache keeps about a version besides its objects."""
        manifest = self._record_path(self.manifests, store, uri)
        record = self._record_path(self.versions, store, uri)
        return (record, _part_marker(record), manifest, manifest.with_suffix(".checked"))

    def load_manifest(self, store: str, uri: VersionUri) -> tuple[bytes, bool] | None:
        """A cached manifest, and whether it is byte for byte the one checked when saved.

        Validation is a pure function of the bytes, so an unchanged copy (its sha256
        matches the note written beside it) need not be validated again.
        """
        path = self._record_path(self.manifests, store, uri)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise cache_error(exc, self.manifests) from None
        try:
            note = path.with_suffix(".checked").read_text().strip()
        except OSError:
            note = ""
        return data, note == hashlib.sha256(data).hexdigest()

    def save_manifest(
        self, store: str, uri: VersionUri, data: bytes, *, checked: bool = True
    ) -> None:
        """Keep a manifest and, when the whole version was just validated, a note saying so
        (a v2 root is noted only once all its shards were checked together)."""
        path = self._record_path(self.manifests, store, uri)
        self._write_atomic(path, data)
        if checked:
            self.note_manifest_checked(store, uri, data)

    def note_manifest_checked(self, store: str, uri: VersionUri, data: bytes) -> None:
        path = self._record_path(self.manifests, store, uri).with_suffix(".checked")
        self._write_atomic(path, hashlib.sha256(data).hexdigest().encode())

    def shard_path(self, store: str, dataset: str, name: str) -> Path:
        """Where the cache keeps the manifest shard stored as ``name`` (its hash and suffix)."""
        return self.manifests / store_id(store) / dataset / "shards" / name

    def load_shard(self, store: str, dataset: str, name: str) -> bytes | None:
        """A kept shard's bytes (checked when saved; the reader verifies their hash)."""
        try:
            return self.shard_path(store, dataset, name).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise cache_error(exc, self.manifests) from None

    def save_shard(self, store: str, dataset: str, name: str, data: bytes) -> None:
        """Keep a shard that passed every check of its records; its name is its hash, so a
        copy whose bytes still hash to its name is one that passed (no note needed)."""
        self._write_atomic(self.shard_path(store, dataset, name), data)

    def holds_record(self, store: str, uri: VersionUri) -> bool:
        """Whether a record of the whole of ``uri`` exists (:meth:`record_version` will
        only touch it, without reading the objects it is given)."""
        path = self._record_path(self.versions, store, uri)
        return path.exists() and not _part_marker(path).exists()

    def record_version(
        self,
        store: str,
        uri: VersionUri,
        *,
        files: int,
        nbytes: int,
        objects: Iterable[str],
        sort: bool = True,
    ) -> None:
        """Note that ``uri`` was used now; its object list is written the first time only
        (and again over a record of subsets, see :meth:`record_part`). Without ``sort``,
        ``objects`` are written as they come, streamed (duplicates are harmless: readers
        take the set): a pull of millions of files never holds them all."""
        path = self._record_path(self.versions, store, uri)
        try:
            os.utime(path)
            if not _part_marker(path).exists():
                return
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise cache_error(exc, self.versions) from None
        with self.lock(store, "record", str(uri)):
            listed = sorted(set(objects)) if sort else objects
            self._write_record(path, store, uri, files, nbytes, listed, partial=False)

    def record_part(
        self,
        store: str,
        uri: VersionUri,
        *,
        objects: Iterable[str],
        tally: Callable[[set[str]], tuple[int, int, bool]],
    ) -> None:
        """Note that a subset of ``uri`` (its ``objects``) was used now.

        The record then lists what every subset pulled so far linked, with a
        ``.partial`` file beside it, so eviction counts only those objects as held and
        ``cache info`` says the version is partly held. ``tally(objects)`` gives the
        version's files and bytes those objects hold and whether that is all of it
        (then the record becomes a whole one). A record of the whole version already
        covers any subset: it is only touched.
        """
        path = self._record_path(self.versions, store, uri)
        marker = _part_marker(path)
        with self.lock(store, "record", str(uri)):
            held: set[str] = set()
            try:
                if not marker.exists():
                    os.utime(path)  # a whole record
                    return
                held = set(VersionRecord.from_json(path.read_bytes()).objects)
            except FileNotFoundError:
                pass
            except (ValueError, KeyError, TypeError):
                pass  # a damaged record: start again from this subset
            except OSError as exc:
                raise cache_error(exc, self.versions) from None
            union = held | set(objects)
            if held and union == held:
                with contextlib.suppress(OSError):
                    os.utime(path)
                return
            files, nbytes, whole = tally(union)
            if not whole:
                # The marker first: a crash between the two leaves a marker beside an
                # older record, which the next pull of either kind rewrites.
                self._write_atomic(marker, b"")
            self._write_record(path, store, uri, files, nbytes, sorted(union), partial=not whole)

    def _write_record(
        self,
        path: Path,
        store: str,
        uri: VersionUri,
        files: int,
        nbytes: int,
        objects: Iterable[str],
        *,
        partial: bool,
    ) -> None:
        """The record (:class:`VersionRecord`'s JSON), its object list streamed."""
        record = VersionRecord(
            store=store,
            uri=str(uri),
            files=files,
            nbytes=nbytes,
            objects=(),
            last_used=time.time(),
            partial=partial,
        )
        head, _, tail = record.to_json().partition(b'"objects":[]')
        tmp = self.temp_path()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as out:
                out.write(head + b'"objects":[')
                listed = iter(objects)
                first = True
                while chunk := list(itertools.islice(listed, RECORD_CHUNK)):
                    out.write(b"" if first else b",")
                    out.write(",".join(f'"{sha}"' for sha in chunk).encode())
                    first = False
                out.write(b"]" + tail)
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise cache_error(exc, self.root) from None
        if not partial:
            with contextlib.suppress(FileNotFoundError):
                _part_marker(path).unlink()

    def forget_version(self, path: Path, record: VersionRecord) -> None:
        """Remove a version's record and cached manifest (its objects stay)."""
        for each in (*self.record_files(record.store, VersionUri.parse(record.uri)), path):
            with contextlib.suppress(OSError):
                each.unlink()

    def version_records(self) -> list[tuple[Path, VersionRecord]]:
        found: list[tuple[Path, VersionRecord]] = []
        for path in sorted(self.versions.glob("*/*/*.json")):
            try:
                record = VersionRecord.from_json(path.read_bytes())
                # Each use touches the file: its mtime is the last use.
                last = max(record.last_used, path.stat().st_mtime)
                found.append((path, replace(record, last_used=last)))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return found

    def _write_atomic(self, path: Path, data: bytes) -> None:
        tmp = self.temp_path()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise cache_error(exc, self.root) from None


class ObjectWriter:
    """Writes one object into a private temp file; ``commit`` puts it in place under its
    sha256 once the caller has verified the bytes, ``abort`` (or leaving the ``with``
    block without committing) removes it. The cache never shows the object half-written.
    """

    def __init__(self, cache: Cache) -> None:
        self._cache = cache
        self._tmp = cache.temp_name()
        try:
            # Read-write: an object written in parts is read back to be verified.
            self._fd: int | None = os.open(
                self._tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
            )
        except OSError as exc:
            raise cache_error(exc, cache.root) from None

    def __enter__(self) -> ObjectWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()

    def write(self, piece: bytes | memoryview) -> None:
        assert self._fd is not None, "object writer is closed"
        try:
            _write_all(self._fd, piece)
        except OSError as exc:
            raise cache_error(exc, self._cache.root) from None

    def allocate(self, size: int) -> None:
        """Give the object its final length up front, for :meth:`write_at` in any order."""
        assert self._fd is not None, "object writer is closed"
        try:
            os.ftruncate(self._fd, size)
        except OSError as exc:
            raise cache_error(exc, self._cache.root) from None

    def write_at(self, offset: int, piece: bytes | memoryview) -> None:
        """Write ``piece`` at ``offset`` (parts of an object arriving in parallel; safe
        from several threads at once, as each part has its own offsets)."""
        assert self._fd is not None, "object writer is closed"
        view = memoryview(piece)
        try:
            while view:
                written = os.pwrite(self._fd, view, offset)
                view = view[written:]
                offset += written
        except OSError as exc:
            raise cache_error(exc, self._cache.root) from None

    def sha256(self) -> str:
        """The SHA-256 of what was written (read back: parts arrive out of order)."""
        assert self._fd is not None, "object writer is closed"
        digest = hashlib.sha256()
        offset = 0
        try:
            while block := os.pread(self._fd, 1 << 20, offset):
                digest.update(block)
                offset += len(block)
        except OSError as exc:
            raise cache_error(exc, self._cache.root) from None
        return digest.hexdigest()

    def commit(self, sha256: str) -> None:
        """Insert the written bytes as object ``sha256`` (verified by the caller)."""
        fd, self._fd = self._fd, None
        assert fd is not None, "object writer is closed"
        try:
            try:
                os.fchmod(fd, 0o444)
                os.utime(fd)  # mtime and ctime together (see module doc)
            finally:
                os.close(fd)
            os.rename(self._tmp, self._cache.object_path(sha256))
        except OSError as exc:
            self.abort()
            raise cache_error(exc, self._cache.root) from None
        self._tmp = ""

    def abort(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        if self._tmp:
            with contextlib.suppress(OSError):
                os.unlink(self._tmp)
            self._tmp = ""


def _temp_owner_alive(entry: Path, host: str) -> bool:
    """Whether the process named by a temp directory ``<host>-<pid>-<rand>`` may still run.

    On this machine the pid decides: a live pid keeps its directory (a reused pid only
    delays the sweep). Another machine sharing the cache is judged by its lock and age.
    """
    owner_host, _, pid_text = entry.name.rpartition("-")[0].rpartition("-")
    if owner_host == host:
        try:
            os.kill(int(pid_text), 0)
        except (ValueError, ProcessLookupError):
            return False
        except PermissionError:
            return True
        return True
    if holder_alive(entry / ".lock"):
        return True
    try:
        return time.time() - entry.stat().st_mtime < STALE_FOREIGN_TEMP
    except OSError:
        return False


def _part_marker(record: Path) -> Path:
    """The file beside a version record that says only subsets were pulled."""
    return record.with_suffix(".partial")


def fingerprint_ok(info: os.stat_result, size: int) -> bool:
    """Whether an object is as dspkg left it: a read-only regular file of the right size
    whose ctime has not moved away from its mtime (see the module docstring)."""
    return (
        info.st_size == size
        and stat.S_ISREG(info.st_mode)
        and not info.st_mode & 0o222
        and 0 <= info.st_ctime_ns - info.st_mtime_ns <= CTIME_SLACK_NS
    )


def object_problem(path: str, sha256: str, size: int | None = None) -> str | None:
    """Why the file at ``path`` is not exactly the object ``sha256`` (of ``size`` bytes,
    when known); None when it is."""
    try:
        with open(path, "rb", buffering=0) as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                return "not a regular file"
            if size is not None and info.st_size != size:
                return f"has {info.st_size} bytes, expected {size}"
            digest = hashlib.sha256()
            while block := handle.read(1 << 20):
                digest.update(block)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if digest.hexdigest() != sha256:
        return "content does not match its sha256"
    return None


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
