"""Downloads that send only verified bytes.

A file up to ``buffered_max`` bytes (8 MiB by default) is read whole with one ranged GET
and checked against the manifest before the first byte goes out, so a damaged one is an
error page. Larger
files and packages are streamed: the SHA-256 is computed on the way and the **last chunk
is held back** until the whole content matches the manifest. On a mismatch (or a store
error midway) the response ends without it and the server closes the connection, so the
client sees a truncated transfer against the announced ``Content-Length`` (curl: exit
18, browsers: a failed download) and never a complete file with wrong bytes.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from urllib.parse import quote

from starlette.responses import Response, StreamingResponse
from starlette.types import Send

from dspkg.errors import DspkgError
from dspkg.manifest import FileEntry, Manifest, PackageInfo
from dspkg.store import Store
from dspkg.web.preview import read_verified, source_of

CHUNK = 1 << 20

log = logging.getLogger("dspkg.web")


def _headers(name: str, size: int) -> dict[str, str]:
    ascii_name = name.encode("ascii", "replace").decode().replace('"', "_").replace("?", "_")
    return {
        "Content-Disposition": f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''"
        f"{quote(name, safe='')}",
        "Content-Length": str(size),
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "private, max-age=3600, immutable",
    }


async def file_response(
    store: Store, manifest: Manifest, entry: FileEntry, *, buffered_max: int
) -> Response:
    name = entry.path.rpartition("/")[2]
    if entry.size <= buffered_max:
        data = await read_verified(store, manifest, entry)
        headers = _headers(name, len(data))
        return Response(data, media_type="application/octet-stream", headers=headers)
    key, start = source_of(manifest, entry)
    chunks = store.stream_range(key, start, start + entry.size, chunk_size=CHUNK)
    return VerifiedStream(
        chunks,
        size=entry.size,
        sha256=entry.sha256,
        what=f"{manifest.uri} {entry.path}",
        headers=_headers(name, entry.size),
    )


def package_response(store: Store, package: PackageInfo) -> Response:
    chunks = store.stream_range(package.key, 0, package.size, chunk_size=CHUNK)
    return VerifiedStream(
        chunks,
        size=package.size,
        sha256=package.sha256,
        what=f"package {store.describe(package.key)}",
        headers=_headers(package.name, package.size),
    )


class VerifiedStream(StreamingResponse):
    """Streams ``chunks`` and sends the last one only if size and SHA-256 match."""

    def __init__(
        self,
        chunks: AsyncIterator[memoryview],
        *,
        size: int,
        sha256: str,
        what: str,
        headers: dict[str, str],
    ) -> None:
        super().__init__(chunks, headers=headers, media_type="application/octet-stream")
        self.size = size
        self.sha256 = sha256
        self.what = what
        self.chunks = chunks

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        digest = hashlib.sha256()
        received = 0
        held = b""
        try:
            async for chunk in self.chunks:
                if held:
                    await send({"type": "http.response.body", "body": held, "more_body": True})
                digest.update(chunk)
                received += len(chunk)
                held = bytes(chunk)
        except DspkgError as exc:
            log.warning("download of %s aborted: %s", self.what, exc)
            return
        if received != self.size or digest.hexdigest() != self.sha256:
            log.warning(
                "download of %s aborted: the bytes do not match the manifest "
                "(%d bytes, sha256 %s; expected %d, %s)",
                self.what,
                received,
                digest.hexdigest(),
                self.size,
                self.sha256,
            )
            return
        await send({"type": "http.response.body", "body": held, "more_body": False})
