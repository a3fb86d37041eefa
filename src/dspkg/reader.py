"""``dspkg.open_version``: a dataset version as files to open and a map-style dataset.

    >>> v = dspkg.open_version("dataset://images/train-v1")        # doctest: +SKIP
    >>> len(v), v.files()[0]                                        # doctest: +SKIP
    (3000, ('bird/bird_0000.jpg', 10240))
    >>> v[0] == v.read("bird/bird_0000.jpg")                        # doctest: +SKIP
    True

Files come through the shared cache, fetched and verified when first asked for, with
read-ahead when they are read in order, by the same core as ``dspkg mount``. The
fetching happens in a helper process (:mod:`dspkg.reader_service`); this object only
reads verified objects from the cache. It is safe in threads (a connection per
thread), across ``fork`` (a forked DataLoader worker opens its own connection to the
same helper) and across pickling (spawned workers connect by name).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from dspkg import errors
from dspkg.cache import Cache
from dspkg.errors import DspkgError, InvalidArgument, NotFound
from dspkg.loader import cached_manifest
from dspkg.manifest import Manifest
from dspkg.names import VersionUri

# How long close() waits for the helper to leave.
CLOSE_TIMEOUT = 10.0


class VersionReader:
    """One dataset version: ``files()``, ``open(path)``, ``read(path)``, ``len``, ``[i]``."""

    def __init__(
        self,
        manifest: Manifest,
        *,
        store_url: str,
        socket_name: str,
        cache_root: Path,
        helper: subprocess.Popen[bytes] | None = None,
    ) -> None:
        self.manifest = manifest
        self._store_url = store_url
        self.uri = str(manifest.uri)
        self._socket_name = socket_name
        self._cache_root = cache_root
        self._helper = helper
        self._owner = os.getpid()
        self._local = threading.local()
        self._conns: list[tuple[int, socket.socket]] = []  # every thread's, to close
        self._conns_lock = threading.Lock()
        self._indices: dict[str, int] | None = None

    # --- the dataset ------------------------------------------------------------------------

    def files(self) -> list[tuple[str, int]]:
        """Every file's path and size, in manifest order (the order of ``v[i]``)."""
        return [(f.path, f.size) for f in self.manifest.files]

    def __len__(self) -> int:
        return len(self.manifest.files)

    def __getitem__(self, index: int) -> bytes:
        """The bytes of the ``index``-th file in manifest order."""
        count = len(self.manifest.files)
        if not -count <= index < count:
            raise IndexError(f"file index {index} out of range for {count} files")
        return Path(self._object(index % count)).read_bytes()

    def __iter__(self) -> Iterator[bytes]:
        for index in range(len(self)):
            yield self[index]

    def read(self, path: str) -> bytes:
        """The bytes of the file at ``path``."""
        return Path(self._object(self._index(path))).read_bytes()

    def open(self, path: str) -> BinaryIO:
        """The file at ``path`` as a seekable binary file object (read-only)."""
        handle: io.BufferedReader = open(self._object(self._index(path)), "rb")  # noqa: SIM115
        return handle

    def _index(self, path: str) -> int:
        if self._indices is None:
            self._indices = {f.path: i for i, f in enumerate(self.manifest.files)}
        index = self._indices.get(path)
        if index is None:
            raise NotFound(f"{self.uri} has no file {path!r}", uri=self.uri)
        return index

    # --- the helper ---------------------------------------------------------------------------

    def _object(self, index: int) -> str:
        """The cached object of file ``index``, asked of the helper."""
        conn = self._connection()
        try:
            conn.sendall(b"%d\n" % index)
            line = _readline(conn)
        except OSError as exc:
            self._local.conn = None
            raise errors.StoreError(
                f"{self.uri}: the reader's helper process is gone ({exc}); open the version "
                "again (and see its error output)"
            ) from None
        text = line.decode(errors="replace").rstrip("\n")
        if not text.startswith("!"):
            return text
        kind, _, message = text[1:].partition("\t")
        raise _error(kind, message)

    def _connection(self) -> socket.socket:
        local = self._local
        conn: socket.socket | None = getattr(local, "conn", None)
        if conn is None or getattr(local, "pid", None) != os.getpid():
            # A new thread, or a forked child (its copy of the parent's socket would mix
            # answers with the parent's): a connection of its own.
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                conn.connect("\0" + self._socket_name)
            except OSError:
                conn.close()
                raise errors.StoreError(
                    f"{self.uri}: cannot reach the reader's helper process (it exits when the "
                    "process that opened the version closes it or ends); open the version again"
                ) from None
            local.conn = conn
            local.pid = os.getpid()
            with self._conns_lock:
                self._conns.append((os.getpid(), conn))
        return conn

    def close(self) -> None:
        """Stop the helper (in the process that opened the version; elsewhere only this
        process's connection is closed)."""
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for pid, conn in conns:
            if pid == os.getpid():  # a forked parent's sockets are the parent's to close
                conn.close()
        self._local = threading.local()
        helper = self._helper
        if helper is not None and os.getpid() == self._owner:
            self._helper = None
            if helper.stdin is not None:
                with contextlib.suppress(OSError):
                    helper.stdin.close()
            try:
                helper.wait(timeout=CLOSE_TIMEOUT)
            except subprocess.TimeoutExpired:
                helper.kill()
                helper.wait()

    def __enter__(self) -> VersionReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- pickling (spawned workers) -----------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        # The manifest travels through the cache, not the pickle: a million files would
        # make every spawned worker's start slow.
        return {
            "uri": self.uri,
            "store": self._store_url,
            "socket": self._socket_name,
            "cache": str(self._cache_root),
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        root = Path(state["cache"])
        manifest = _cached(root, state["store"], VersionUri.parse(state["uri"]))
        VersionReader.__init__(
            self, manifest, store_url=state["store"], socket_name=state["socket"], cache_root=root
        )


def _readline(conn: socket.socket) -> bytes:
    chunks = []
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionResetError("the helper closed the connection")
        chunks.append(chunk)
        if chunk.endswith(b"\n"):
            return b"".join(chunks)


def _error(kind: str, message: str) -> DspkgError:
    """The helper's error as the class it was raised as there (its fields unknown here)."""
    cls = getattr(errors, kind, None)
    if not (isinstance(cls, type) and issubclass(cls, DspkgError)):
        cls = DspkgError
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    for name in inspect.signature(cls.__init__).parameters:
        if name not in ("self", "message"):
            setattr(exc, name, None)
    return exc


def _cached(root: Path, store_url: str, uri: VersionUri) -> Manifest:
    """The manifest the helper saved in the cache (read only: nothing is written)."""
    manifest = cached_manifest(Cache(root), store_url, uri, read_only=True)
    if manifest is None:
        raise InvalidArgument(
            f"{uri}: its manifest is no longer in the cache at {root}; open the version again"
        )
    return manifest


def start_reader(
    uri: str,
    *,
    store_url: str,
    store_options: dict[str, str],
    cache_root: Path,
    env: dict[str, str],
) -> VersionReader:
    """Start the helper for ``uri`` and return a reader connected to it."""
    helper = subprocess.Popen(
        [sys.executable, "-m", "dspkg.reader_service"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    assert helper.stdin is not None and helper.stdout is not None
    request = {
        "uri": uri,
        "store": store_url,
        "store_options": store_options,
        "cache": str(cache_root),
    }
    try:
        helper.stdin.write(json.dumps(request).encode() + b"\n")
        helper.stdin.flush()
        line = helper.stdout.readline()
    except OSError:
        line = b""
    try:
        doc = json.loads(line) if line else {"error": "the helper process exited at start"}
    except ValueError:
        doc = {"error": f"the helper process said {line[:200]!r}"}
    if "error" in doc:
        with contextlib.suppress(OSError):
            helper.stdin.close()
        helper.stdout.close()
        helper.wait()
        raise _error(str(doc.get("kind", "")), str(doc["error"]))
    helper.stdout.close()
    try:
        manifest = _cached(cache_root, store_url, VersionUri.parse(doc["uri"]))
    except DspkgError:
        helper.stdin.close()
        helper.wait()
        raise
    return VersionReader(
        manifest,
        store_url=store_url,
        socket_name=doc["socket"],
        cache_root=cache_root,
        helper=helper,
    )
