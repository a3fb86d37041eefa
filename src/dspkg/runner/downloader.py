"""Fetches plain (non-dataset) input URIs as single files: object stores, ``file://``, HTTP.

``s3://``, ``gs://``, ``az://`` and ``file://`` go through obstore: the store is
opened on the URI's parent "directory" and the object is streamed with ranged,
resumable GETs. A ``*`` or ``?`` in the path (``**`` crosses ``/``) lists the
objects under the part before the first wildcard and fetches every match.
``http(s)://`` URLs are fetched with urllib, so presigned URLs keep their query.
Each file is hashed while it is written, for ``inputs.json``.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import re
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

from dspkg.concurrency import BoundedTasks
from dspkg.errors import NotFound, RunError, StoreError
from dspkg.paths import path_problem
from dspkg.store import Store, open_store

OBJECT_SCHEMES = ("s3", "gs", "az", "azure", "file")
HTTP_SCHEMES = ("http", "https")
_WILDCARD = re.compile(r"[*?]")
_HTTP_ATTEMPTS = 4


@dataclass(frozen=True)
class InputFile:
    """One file placed in an input directory."""

    name: str  # path relative to the input directory
    uri: str
    size: int
    sha256: str


@dataclass(frozen=True)
class PlainSource:
    """A plain URI split into the store to open and the key (or key pattern) in it."""

    uri: str
    scheme: str
    store_url: str
    key: str  # a key, or a pattern when ``wildcard``
    wildcard: bool
    full_prefix: str  # the path in the bucket above ``key``, for keep-directories "full"

    @classmethod
    def parse(cls, uri: str) -> PlainSource:
        # Split by hand: in object keys "?" and "#" are characters (here "?" is a
        # wildcard), not the start of a query or fragment as urlparse would have it.
        scheme, sep, rest = uri.partition("://")
        scheme = scheme.lower()
        if not sep or scheme not in OBJECT_SCHEMES:
            raise RunError(f"unsupported input URI {uri!r}", path=uri)
        netloc, _, path = rest.partition("/")
        if scheme == "file":
            path = unquote(path)
        parts = [p for p in path.split("/") if p]
        if not parts or (scheme != "file" and not netloc):
            raise RunError(f"input URI {uri!r} names no object", path=uri)
        if scheme == "file" and netloc not in ("", "localhost"):
            raise RunError(
                f"input URI {uri!r} is not an absolute file URI; write file:///absolute/path",
                path=uri,
            )
        wild = next((i for i, p in enumerate(parts) if _WILDCARD.search(p)), None)
        cut = len(parts) - 1 if wild is None else wild
        parent = "/".join(parts[:cut])
        if scheme == "file":
            store_url = f"file:///{parent}"
        else:
            store_url = f"{scheme}://{netloc}/{parent}".rstrip("/")
        return cls(
            uri=uri,
            scheme=scheme,
            store_url=store_url,
            key="/".join(parts[cut:]),
            wildcard=wild is not None,
            full_prefix=parent,
        )

    def object_uri(self, key: str) -> str:
        return f"{self.store_url.rstrip('/')}/{key}"

    def pattern(self) -> re.Pattern[str]:
        out = []
        for token in re.split(r"(\*\*|\*|\?)", self.key):
            if token == "**":
                out.append(".*")
            elif token == "*":
                out.append("[^/]*")
            elif token == "?":
                out.append("[^/]")
            else:
                out.append(re.escape(token))
        return re.compile("".join(out))


def is_plain(uri: str) -> bool:
    return urlparse(uri).scheme.lower() in OBJECT_SCHEMES + HTTP_SCHEMES


def local_name(input_name: str, uri: str, key: str, full_path: str, keep: str) -> str:
    """The file's path in the input directory under the platform's ``keep-directories``."""
    if keep == "full":
        name = full_path
    elif keep == "suffix":
        name = key
    else:
        name = PurePosixPath(key).name
    problem = path_problem(name)
    if problem:
        raise RunError(
            f"input {input_name!r}: {uri} gives the file name {name!r}, which cannot be used "
            f"({problem}); set filename: in the step",
            path=uri,
        )
    return name


async def fetch_plain(
    input_name: str,
    uri: str,
    dest: Path,
    *,
    keep: str = "none",
    env: Mapping[str, str] | None = None,
    jobs: int = 16,
) -> list[InputFile]:
    """Fetch ``uri`` (one object, or every match of a wildcard) into the directory ``dest``."""
    if urlparse(uri).scheme.lower() in HTTP_SCHEMES:
        return [await asyncio.to_thread(_fetch_http, input_name, uri, dest, keep)]
    source = PlainSource.parse(uri)
    store = _open(source, env or {})
    if source.wildcard:
        regex = source.pattern()
        listing = await store.list("")
        matches = sorted((o.key, o.size) for o in listing if regex.fullmatch(o.key))
        if not matches:
            raise NotFound(
                f"input {input_name!r}: {uri} matches no object; check the URI "
                f"or give --input {input_name}=URI",
                uri=uri,
            )
    else:
        info = await store.head(source.key)
        if info is None:
            raise NotFound(
                f"input {input_name!r}: {uri} not found; check the URI "
                f"or give --input {input_name}=URI",
                uri=uri,
            )
        matches = [(source.key, info.size)]
    found: list[InputFile] = []

    async def one(key: str, size: int) -> None:
        full = f"{source.full_prefix}/{key}" if source.full_prefix else key
        name = local_name(input_name, uri, key, full, keep)
        sha256 = await _fetch_object(store, key, size, dest / name)
        found.append(InputFile(name, source.object_uri(key), size, sha256))

    async with BoundedTasks(jobs) as tasks:
        for key, size in matches:
            await tasks.spawn(one(key, size))
    return sorted(found, key=lambda f: f.name)


def _open(source: PlainSource, env: Mapping[str, str]) -> Store:
    if source.scheme == "file":
        # open_store creates a missing directory, which an input must never do.
        directory = Path(source.store_url[len("file://") :])
        if not directory.is_dir():
            raise NotFound(
                f"input {source.uri} not found: no directory {directory}", uri=source.uri
            )
    return open_store(source.store_url, None, env)


async def _fetch_object(store: Store, key: str, size: int, target: Path) -> str:
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with target.open("wb") as f:
        if size:
            async for chunk in store.stream_range(key, 0, size):
                digest.update(chunk)
                f.write(chunk)
    return digest.hexdigest()


def _fetch_http(input_name: str, url: str, dest: Path, keep: str) -> InputFile:
    parsed = urlparse(url)
    path = unquote(parsed.path).lstrip("/")
    key = PurePosixPath(path).name
    if not key:
        raise RunError(
            f"input {input_name!r}: {url} names no file; set filename: in the step", path=url
        )
    name = local_name(input_name, url, key, path, keep)
    target = dest / name
    target.parent.mkdir(parents=True, exist_ok=True)
    last: BaseException | None = None
    for attempt in range(_HTTP_ATTEMPTS):
        if attempt:
            time.sleep(min(0.5 * 2**attempt, 5.0))
        request = urllib.request.Request(url, headers={"User-Agent": "dspkg"})
        digest = hashlib.sha256()
        size = 0
        try:
            with urllib.request.urlopen(request, timeout=60) as response, target.open("wb") as f:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    f.write(chunk)
                    size += len(chunk)
            return InputFile(name, url, size, digest.hexdigest())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise NotFound(
                    f"input {input_name!r}: {url} not found (HTTP 404); check the URL", uri=url
                ) from None
            if exc.code != 429 and exc.code < 500:
                raise StoreError(
                    f"input {input_name!r}: {url}: HTTP {exc.code} {exc.reason}; check the URL "
                    "and its permissions",
                    key=url,
                ) from None
            last = exc
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            last = exc
    reason = getattr(last, "reason", None) or last
    raise StoreError(
        f"input {input_name!r}: {url}: download failed {_HTTP_ATTEMPTS} times ({reason}); "
        "check the URL and the network",
        key=url,
    )
