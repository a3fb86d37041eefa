"""The helper process behind :func:`dspkg.open_version`: the on-demand core, over a socket.

Why a process: the object-store client (obstore's runtime) does not survive ``fork``;
a DataLoader worker forked from a process that used it hangs on its first request.
So no reader process ever talks to the store: each asks this helper, started with
``python -m dspkg.reader_service`` (a fresh interpreter, never a fork), for "file i"
and gets back the path of the file's verified object in the cache, which it then
reads itself. One helper serves the process that opened the version and every
process forked from it, so they share one read-ahead and never fetch a file twice.

Protocol, one line each way on a Unix socket in the abstract namespace (no file to
clean up; only the same user may connect)::

    -> 17\\n
    <- /home/u/.cache/dspkg/objects/9f/86d0...\\n          or  !Integrity\\t<message>\\n

Start-up: one JSON line on stdin with what to open; one JSON line back on stdout,
``{"uri": ..., "socket": ...}`` or ``{"error": ..., "kind": ...}``. The helper exits
when its stdin reaches end of file: the opener and all its forked children are gone
(they hold the pipe) or the opener called ``close()``.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import struct
import sys
from pathlib import Path
from typing import Any

from dspkg.cache import Cache
from dspkg.errors import DspkgError
from dspkg.loader import load_manifest
from dspkg.names import VersionUri
from dspkg.ondemand import OnDemand
from dspkg.store import open_store

_UCRED = struct.Struct("3i")


def _log(line: str) -> None:
    print(f"dspkg reader: {line}", file=sys.stderr, flush=True)


def _reply(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


async def _serve(request: dict[str, Any]) -> None:
    env = dict(os.environ)
    env.update(request.get("env") or {})
    store = open_store(request["store"], request.get("store_options"), env)
    with Cache(Path(request["cache"])) as cache:
        manifest = await load_manifest(store, cache, VersionUri.parse(request["uri"]))
        core = OnDemand(store, cache, manifest, log=_log)
        name = f"dspkg-reader-{os.getpid()}-{secrets.token_hex(8)}"
        with cache.pin(store.url, manifest.uri):
            cache.record_version(
                store.url,
                manifest.uri,
                files=len(manifest.files),
                nbytes=manifest.total_bytes,
                objects=(f.sha256 for f in manifest.files),
            )
            await core.start()
            server = await asyncio.start_unix_server(
                lambda r, w: _client(core, len(manifest.files), r, w), path="\0" + name
            )
            _reply({"uri": str(manifest.uri), "socket": name})
            try:
                await _until_stdin_closes()
            finally:
                server.close()
                await core.close()


async def _client(
    core: OnDemand, count: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        sock = writer.get_extra_info("socket")
        _pid, uid, _gid = _UCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        )
        if uid != os.getuid():
            return  # another user's process: nothing to say to it
        while line := await reader.readline():
            try:
                index = int(line)
                if not 0 <= index < count:
                    raise IndexError(index)
                answer = await core.path(index) + "\n"
            except DspkgError as exc:
                answer = f"!{type(exc).__name__}\t{exc}\n"
            except (ValueError, IndexError):
                answer = f"!InvalidArgument\tno file {line.strip()!r} in this version\n"
            writer.write(answer.encode())
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def _until_stdin_closes() -> None:
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.buffer.read)


def main() -> int:
    line = sys.stdin.readline()
    try:
        request = json.loads(line)
        asyncio.run(_serve(request))
    except DspkgError as exc:
        _reply({"error": str(exc), "kind": type(exc).__name__})
        return 1
    except Exception as exc:
        _reply({"error": f"internal error: {type(exc).__name__}: {exc}", "kind": "DspkgError"})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
