"""The one thin adapter over obstore: the few operations dspkg needs, with our errors.

Every request goes through :class:`Store`, which counts requests and bytes (the
figures ``--json`` reports) and translates obstore's exceptions into
:mod:`dspkg.errors` at this boundary. :func:`open_store` turns a URL into a store;
only the public API and the command line call it.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import errno
import fcntl
import os
import random
import re
import secrets
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlparse

import obstore
from obstore import exceptions as obx
from obstore.store import AzureStore, GCSStore, LocalStore, MemoryStore, S3Store

from dspkg.errors import DspkgError, InvalidArgument, RetriesExceeded, StoreError

if TYPE_CHECKING:
    from obstore.store import ClientConfig, ObjectStore, RetryConfig

T = TypeVar("T")

# What stream_range yields at a time (the last piece of a range may be shorter).
STREAM_CHUNK = 1 << 20
# A streamed upload's parts, and how many of them are in flight (multipart).
PART_SIZE = 8 << 20
UPLOAD_CONCURRENCY = 8

# Errors worth another try: network trouble and server-side failures that obstore
# reports generically once its own request retries are used up, or that cut a body
# stream midway. Everything else (not found, denied, precondition) is final.
TRANSIENT: tuple[type[BaseException], ...] = (
    obx.GenericError,
    obx.JoinError,
    ConnectionError,
    TimeoutError,
)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6
    base_delay: float = 0.2
    max_delay: float = 5.0

    def delay(self, attempt: int) -> float:
        """Exponential backoff with full jitter."""
        return random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))


@dataclass
class StoreStats:
    requests: int = 0
    bytes_down: int = 0
    bytes_up: int = 0
    retries: int = 0
    in_flight: int = 0  # requests running now (uploads of a stream aside)
    peak_in_flight: int = 0  # the most that ran at once

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            yield
        finally:
            self.in_flight -= 1


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str | None = None
    modified: datetime | None = None


@dataclass(frozen=True)
class Revision:
    """Which state of an object a reader saw, for a conditional :meth:`Store.replace`:
    its ETag, and its version where the store has them (GCS generations)."""

    etag: str | None
    version: str | None = None


@dataclass
class Store:
    """A store of blobs, packages and manifests at ``url``."""

    inner: ObjectStore
    url: str
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    stats: StoreStats = field(default_factory=StoreStats)
    local_dir: Path | None = None  # the directory of a file:// store

    def describe(self, key: str) -> str:
        return f"{self.url.rstrip('/')}/{key}"

    @property
    def kind(self) -> str:
        """What kind of store this is, as a user calls it: S3, GCS, Azure, local, memory."""
        scheme = urlparse(self.url).scheme.lower()
        return _KINDS.get(scheme, scheme or "local")

    @property
    def bucket(self) -> str:
        """The bucket or container and prefix (``bucket/prefix``), or the local directory."""
        parsed = urlparse(self.url)
        if parsed.scheme.lower() in ("", "file"):
            return parsed.path or self.url
        return f"{parsed.netloc}{parsed.path}".rstrip("/")

    def _no_container(self, exc: BaseException) -> None:
        """A "not found" that means the bucket or container is missing is final."""
        if missing_container(exc):
            raise StoreError(_no_container_message(self.url), key=None) from exc

    async def _call(self, key: str, op: Callable[[], Awaitable[T]]) -> T:
        last: BaseException | None = None
        for attempt in range(self.retry.attempts):
            self.stats.requests += 1
            try:
                with self.stats.running():
                    return await op()
            except TRANSIENT as exc:
                if not transient(exc):
                    raise translate(exc, self.describe(key)) from exc
                last = exc
                self.stats.retries += 1
                await asyncio.sleep(self.retry.delay(attempt))
            except Exception as exc:
                raise translate(exc, self.describe(key)) from exc
        assert last is not None
        raise RetriesExceeded(
            f"{self.describe(key)}: store request failed {self.retry.attempts} times "
            f"({_first_line(last)}); check the network and the store, then retry",
            key=key,
            last=last,
        ) from last

    async def get(self, key: str) -> bytes:
        async def op() -> bytes:
            result = await obstore.get_async(self.inner, key)
            data = bytes(await result.bytes_async())
            self.stats.bytes_down += len(data)
            return data

        return await self._call(key, op)

    async def get_optional(self, key: str) -> bytes | None:
        """The object's bytes, or None when there is no object at ``key``."""
        found = await self.get_revision(key)
        return None if found is None else found[0]

    async def get_revision(self, key: str) -> tuple[bytes, Revision] | None:
        """The object's bytes and the revision they are, or None when there is none."""

        async def op() -> tuple[bytes, Revision] | None:
            try:
                result = await obstore.get_async(self.inner, key)
                data = bytes(await result.bytes_async())
            except FileNotFoundError as exc:
                self._no_container(exc)
                return None
            self.stats.bytes_down += len(data)
            meta = result.meta
            return data, Revision(meta.get("e_tag"), meta.get("version"))

        return await self._call(key, op)

    async def get_range(self, key: str, start: int, end: int) -> bytes:
        if end <= start:
            return b""

        async def op() -> bytes:
            data = bytes(await obstore.get_range_async(self.inner, key, start=start, end=end))
            self.stats.bytes_down += len(data)
            return data

        data = await self._call(key, op)
        if len(data) != end - start:
            raise StoreError(
                f"{self.describe(key)}: asked for bytes {start}-{end} and got {len(data)} bytes; "
                "the object is shorter than its manifest says (truncated?)",
                key=key,
            )
        return data

    async def stream_range(
        self, key: str, start: int, end: int, *, chunk_size: int = STREAM_CHUNK
    ) -> AsyncIterator[memoryview]:
        """Yield bytes ``[start, end)`` as they arrive; resume after a broken connection.

        A transient failure mid-body re-requests from the first byte not yet
        yielded, so the caller sees every byte exactly once.
        """
        position = start
        failures = 0
        while position < end:
            self.stats.requests += 1
            try:
                with self.stats.running():
                    result = await obstore.get_async(
                        self.inner, key, options={"range": (position, end)}
                    )
                    got = result.range
                    if got[0] != position or got[1] != end:
                        # A full 200 or a different range: never splice it, start over.
                        raise ConnectionError(
                            f"asked for bytes {position}-{end}, the store sent {got[0]}-{got[1]}"
                        )
                    async for chunk in result.stream(min_chunk_size=chunk_size):
                        view = memoryview(chunk)
                        if position + len(view) > end:
                            raise StoreError(
                                f"{self.describe(key)}: the store sent more bytes than asked for",
                                key=key,
                            )
                        position += len(view)
                        self.stats.bytes_down += len(view)
                        failures = 0
                        yield view
                if position < end:
                    raise ConnectionError(f"body ended at byte {position} of {end}")
            except TRANSIENT as exc:
                if not transient(exc):
                    raise translate(exc, self.describe(key)) from exc
                failures += 1
                self.stats.retries += 1
                if failures >= self.retry.attempts:
                    raise RetriesExceeded(
                        f"{self.describe(key)}: download failed {failures} times in a row "
                        f"({_first_line(exc)}); check the network and the store, then retry",
                        key=key,
                        last=exc,
                    ) from exc
                await asyncio.sleep(self.retry.delay(failures))
            except StoreError:
                raise
            except Exception as exc:
                raise translate(exc, self.describe(key)) from exc

    async def put(self, key: str, data: bytes, *, create: bool = False) -> bool:
        """Write ``data`` at ``key``; with ``create``, return False if ``key`` exists."""

        async def op() -> bool:
            try:
                await obstore.put_async(
                    self.inner,
                    key,
                    data,
                    mode="create" if create else "overwrite",
                    use_multipart=False,
                )
            except obx.AlreadyExistsError:
                return False
            self.stats.bytes_up += len(data)
            return True

        return await self._call(key, op)

    async def replace(self, key: str, data: bytes, revision: Revision) -> bool:
        """Overwrite ``key`` with ``data`` only if it is still at ``revision`` (the one a
        :meth:`get_revision` saw); False, writing nothing, if anything changed it since
        or it is gone. Of several writers replacing the same revision, exactly one wins.

        S3 (``If-Match``), Azure and memory stores check it in the store itself; GCS by
        generation. A local directory has no such request: there, writers on one machine
        (or a file system with working ``flock``) take a lock on the object's folder,
        compare, and rename a new file into place.
        """
        if revision.etag is None and revision.version is None:
            raise StoreError(
                f"{self.describe(key)}: the store gave no ETag or version to replace it by; "
                "this store cannot replace objects safely",
                key=key,
            )
        if isinstance(self.inner, LocalStore):
            return await self._replace_local(key, data, revision)
        mode: dict[str, str] = {}
        if revision.etag is not None:
            mode["e_tag"] = revision.etag
        if revision.version is not None:
            mode["version"] = revision.version

        async def op() -> bool:
            try:
                await obstore.put_async(
                    self.inner,
                    key,
                    data,
                    mode=mode,  # type: ignore[arg-type]
                    use_multipart=False,
                )
            except obx.PreconditionError:
                return False  # changed since, or gone (S3 answers 404, Azure 412)
            except NotImplementedError as exc:
                raise StoreError(
                    f"{self.describe(key)}: this store cannot replace objects conditionally "
                    f"({_first_line(exc)})",
                    key=key,
                ) from None
            self.stats.bytes_up += len(data)
            return True

        return await self._call(key, op)

    async def _replace_local(self, key: str, data: bytes, revision: Revision) -> bool:
        root = self.url.removeprefix("file://")
        path = Path(root, key)
        store = self.inner

        def swap() -> bool:
            try:
                fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except FileNotFoundError:
                return False  # gone, and its folder with it
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    current = obstore.head(store, key)
                except FileNotFoundError:
                    return False
                if current.get("e_tag") != revision.etag:
                    return False
                tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
                try:
                    tmp.write_bytes(data)
                    os.replace(tmp, path)
                finally:
                    tmp.unlink(missing_ok=True)
                return True
            finally:
                os.close(fd)  # releases the lock

        async def op() -> bool:
            done = await asyncio.to_thread(swap)
            if done:
                self.stats.bytes_up += len(data)
            return done

        return await self._call(key, op)

    async def put_stream(
        self,
        key: str,
        chunks: AsyncIterable[bytes],
        *,
        part_size: int = PART_SIZE,
        concurrency: int = UPLOAD_CONCURRENCY,
    ) -> None:
        """Upload a stream as one object (multipart); nothing appears at ``key`` on failure."""
        counted = self._count_up(chunks)
        self.stats.requests += 1
        try:
            await obstore.put_async(
                self.inner,
                key,
                counted,
                chunk_size=part_size,
                max_concurrency=concurrency,
            )
        except DspkgError:
            raise  # raised by the caller's stream, e.g. a source file that changed
        except Exception as exc:
            raise translate(exc, self.describe(key)) from exc

    async def _count_up(self, chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        async for chunk in chunks:
            self.stats.bytes_up += len(chunk)
            yield chunk

    async def head(self, key: str) -> ObjectInfo | None:
        async def op() -> ObjectInfo | None:
            try:
                meta = await obstore.head_async(self.inner, key)
            except FileNotFoundError as exc:
                self._no_container(exc)
                return None
            return ObjectInfo(key=meta["path"], size=meta["size"], etag=meta.get("e_tag"))

        return await self._call(key, op)

    async def list(self, prefix: str) -> builtins.list[ObjectInfo]:
        async def op() -> builtins.list[ObjectInfo]:
            found: builtins.list[ObjectInfo] = []
            stream = obstore.list(self.inner, prefix=prefix, chunk_size=1000)
            async for batch in stream:
                self.stats.requests += 1
                found.extend(
                    ObjectInfo(m["path"], m["size"], m.get("e_tag"), m.get("last_modified"))
                    for m in batch
                )
            return found

        return await self._call(prefix, op)

    async def list_dirs(self, prefix: str) -> builtins.list[str]:
        """Names of the immediate "subdirectories" under ``prefix/``."""

        async def op() -> builtins.list[str]:
            result = await obstore.list_with_delimiter_async(self.inner, prefix=prefix)
            return sorted(p.rstrip("/").rpartition("/")[2] for p in result["common_prefixes"])

        return await self._call(prefix, op)

    def incomplete_uploads(self, prefixes: tuple[str, ...]) -> builtins.list[ObjectInfo]:
        """What multipart uploads killed midway left under ``prefixes``, where it can be
        seen: obstore's local store writes ``<key>#<n>`` beside the key and renames it on
        completion, and its listings skip such names. Object stores keep incomplete
        uploads out of sight (an S3 lifecycle rule removes them; docs/cli.md)."""
        if self.local_dir is None:
            return []
        found: builtins.list[ObjectInfo] = []
        for prefix in prefixes:
            for dirpath, _dirs, names in os.walk(self.local_dir / prefix):
                for name in names:
                    if not _STAGING_NAME.fullmatch(name):
                        continue
                    path = Path(dirpath, name)
                    with contextlib.suppress(OSError):
                        st = path.lstat()
                        modified = datetime.fromtimestamp(st.st_mtime, UTC)
                        key = path.relative_to(self.local_dir).as_posix()
                        found.append(ObjectInfo(key, st.st_size, None, modified))
        return found

    def delete_incomplete(self, key: str) -> None:
        """Remove what :meth:`incomplete_uploads` found (nothing else)."""
        if self.local_dir is None or not _STAGING_NAME.fullmatch(key.rpartition("/")[2]):
            raise InvalidArgument(f"{self.describe(key)} is not an incomplete upload")
        with contextlib.suppress(FileNotFoundError):
            (self.local_dir / key).unlink()

    async def delete(self, key: str) -> None:
        async def op() -> None:
            try:
                await obstore.delete_async(self.inner, key)
            except FileNotFoundError as exc:
                self._no_container(exc)
                return

        await self._call(key, op)


_KINDS = {
    "s3": "S3",
    "s3a": "S3",
    "gs": "GCS",
    "gcs": "GCS",
    "az": "Azure",
    "azure": "Azure",
    "abfs": "Azure",
    "abfss": "Azure",
    "adl": "Azure",
    "file": "local",
    "memory": "memory",
}
# obstore's local store uploads in parts into "<key>#<n>", renamed to "<key>" at the end.
_STAGING_NAME = re.compile(r".+#[0-9]+")

# How S3, GCS and Azure say that the bucket or container itself does not exist.
_NO_CONTAINER = ("NoSuchBucket", "ContainerNotFound", "The specified bucket does not exist")


def missing_container(exc: BaseException) -> bool:
    text = str(exc)
    return any(code in text for code in _NO_CONTAINER)


def _no_container_message(url: str) -> str:
    return (
        f"the bucket or container of {url} does not exist; create it, "
        "or fix the store URL (--store or DSPKG_STORE) and the endpoint"
    )


def translate(exc: BaseException, where: str) -> StoreError:
    """Our error for an obstore (or OS) error raised while working on ``where``."""
    if isinstance(exc, StoreError):
        return exc
    if missing_container(exc):
        return StoreError(_no_container_message(where), key=where)
    detail = _first_line(exc)
    code = exc.errno if isinstance(exc, OSError) else _os_error(str(exc))
    if isinstance(exc, FileNotFoundError | obx.NotFoundError):
        return StoreError(f"{where}: not found in the store", key=where)
    if code == errno.ENOSPC:
        return StoreError(
            f"{where}: no space left on the store's disk; free space and run again", key=where
        )
    if code == errno.EROFS:
        return StoreError(f"{where}: the store is read-only; choose a writable store", key=where)
    if isinstance(exc, obx.PermissionDeniedError | obx.UnauthenticatedError | PermissionError) or (
        code in (errno.EACCES, errno.EPERM)
    ):
        return StoreError(
            f"{where}: the store refused access ({detail}); check credentials and permissions",
            key=where,
        )
    return StoreError(f"{where}: store request failed: {detail}", key=where)


def transient(exc: BaseException) -> bool:
    """Worth another try: network and server trouble; not a local disk error, a missing
    bucket, nor a request the server refused as such (a 4xx other than 408 and 429)."""
    text = str(exc)
    return (
        isinstance(exc, TRANSIENT)
        and _os_error(text) is None
        and not missing_container(exc)
        and _client_error(text) is None
    )


def _client_error(text: str) -> int | None:
    """A 4xx status the server answered with that a retry cannot change."""
    match = re.search(r"non-2xx status code: (4\d\d)", text)
    if match is None or match.group(1) in ("408", "429"):
        return None
    return int(match.group(1))


def _os_error(text: str) -> int | None:
    """The errno that obstore's local-file errors quote as "(os error N)"."""
    match = re.search(r"\(os error (\d+)\)", text)
    return int(match.group(1)) if match else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


# Stores made from memory:// URLs, so that one process sees one store per name.
_MEMORY: dict[str, MemoryStore] = {}


def open_store(
    url: str, options: Mapping[str, str] | None = None, env: Mapping[str, str] | None = None
) -> Store:
    """Build a store from a URL: ``file://DIR``, ``s3://bucket/prefix``, ``gs://``, ``az://``,
    ``memory://[name]``, or a plain directory path.

    ``options`` are obstore configuration keys (``region``, ``endpoint``,
    ``skip_signature`` ...); credentials otherwise come from the usual environment
    variables, read by obstore. The endpoint may also come from ``env``
    (``AWS_ENDPOINT_URL``, ``AZURE_STORAGE_ENDPOINT``, ``GOOGLE_BASE_URL``); with an
    ``http://`` one plain HTTP is allowed, for local servers and emulators.
    """
    options = dict(options or {})
    env = env or {}
    parsed = urlparse(url)
    scheme = parsed.scheme.lower()
    try:
        if scheme in ("", "file"):
            path = Path(url[len("file://") :] if scheme == "file" else url).expanduser()
            if not str(path):
                raise InvalidArgument(f"invalid store URL {url!r}: file:// needs a directory")
            path = path.resolve()
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise InvalidArgument(
                    f"store directory {path} cannot be created ({exc.strerror}); "
                    "choose another --store"
                ) from None
            inner: ObjectStore = LocalStore(prefix=path)
            return Store(inner, f"file://{path}", local_dir=path)
        if scheme == "memory":
            name = parsed.netloc + parsed.path
            inner = _MEMORY.setdefault(name, MemoryStore())
            return Store(inner, url)
        client: ClientConfig = {"connect_timeout": "10s", "timeout": "300s"}
        retry: RetryConfig = {
            "max_retries": 4,
            "retry_timeout": timedelta(seconds=120),
            "backoff": {
                "init_backoff": timedelta(milliseconds=100),
                "max_backoff": timedelta(seconds=5),
                "base": 2,
            },
        }
        if scheme in ("s3", "s3a"):
            endpoint = _endpoint(
                options, env, client, "endpoint", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"
            )
            if endpoint:
                # Most local S3 servers do not route virtual-hosted bucket names.
                options.setdefault("virtual_hosted_style_request", "false")
            if not (env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")):
                options.setdefault("region", "us-east-1")
            # Sign requests, not every uploaded byte (a SHA-256 pass over each package, 0.16
            # CPU-s per 200 MB here), as the AWS CLI does over HTTPS: TLS guards the bytes
            # on the way and every pull verifies each file's SHA-256.
            options.setdefault("unsigned_payload", "true")
            inner = S3Store.from_url(
                url,
                client_options=client,
                retry_config=retry,
                **options,  # type: ignore[arg-type]
            )
        elif scheme in ("gs", "gcs"):
            _endpoint(options, env, client, "base_url", "GOOGLE_BASE_URL")
            inner = GCSStore.from_url(
                url,
                client_options=client,
                retry_config=retry,
                **options,  # type: ignore[arg-type]
            )
        elif scheme in ("az", "azure", "abfs", "abfss", "adl"):
            _endpoint(options, env, client, "endpoint", "AZURE_STORAGE_ENDPOINT", "AZURE_ENDPOINT")
            inner = AzureStore.from_url(
                url,
                client_options=client,
                retry_config=retry,
                **options,  # type: ignore[arg-type]
            )
        else:
            raise InvalidArgument(
                f"unsupported store URL {url!r}: use file://DIR, s3://BUCKET/PREFIX, "
                "gs://BUCKET/PREFIX, az://CONTAINER/PREFIX or memory://"
            )
    except obx.BaseError as exc:
        raise InvalidArgument(f"store {url!r} cannot be configured: {_first_line(exc)}") from None
    return Store(inner, url)


def _endpoint(
    options: dict[str, str],
    env: Mapping[str, str],
    client: ClientConfig,
    option: str,
    *variables: str,
) -> str | None:
    """The endpoint from ``options[option]`` or the first of ``variables`` set in ``env``.

    It is passed on as that option, because obstore reads only the process
    environment, not ``env``. An ``http://`` endpoint is a local server or an
    emulator (moto, MinIO, Azurite, fake-gcs-server): obstore refuses plain HTTP
    unless told to allow it.
    """
    endpoint = options.get(option) or next((env[v] for v in variables if env.get(v)), None)
    if endpoint:
        options.setdefault(option, endpoint)
        if endpoint.startswith("http://"):
            client["allow_http"] = True
    return endpoint
