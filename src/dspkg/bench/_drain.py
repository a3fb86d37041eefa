"""The download and upload floors' child: move bytes through the link and nothing else.

``python -m dspkg.bench._drain get BUCKET KEY:SIZE...`` reads each object whole in ranged
GETs cut and bounded as a cold pull cuts a package (:class:`~dspkg.pull_plan.Tuning`:
``range_limit`` long, ``range_requests`` in flight) and drops the bytes.

``python -m dspkg.bench._drain put BUCKET KEY:SIZE...`` uploads SIZE bytes (one random
MiB repeated) to each KEY as a publish uploads a package: multipart, parts of
``PART_SIZE`` bytes, ``UPLOAD_CONCURRENCY`` in flight, the objects one after another.

Either prints ``{"bytes": N}``. The endpoint and credentials come from the usual
``AWS_*`` variables, as for any client the benchmark runs.

What it measures is what this server and this link give the bytes a pull or a publish
must move, with no file read or written and no byte parsed or hashed: their floor on this
test bed, which the theoretical one (bytes over the link rate) leaves out (the server's
time to first byte, its ramp and its work, the requests' round trips).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
from collections.abc import AsyncIterator

import obstore
from obstore.store import S3Store

from dspkg.pull_plan import Tuning, even_parts
from dspkg.store import PART_SIZE, STREAM_CHUNK, UPLOAD_CONCURRENCY

Objects = list[tuple[str, int]]


def parts(size: int, tuning: Tuning) -> list[tuple[int, int]]:
    """``[start, end)`` ranges that cover ``size`` bytes in nearly equal parts, each at most
    as long as the pull's ranges would be."""
    return even_parts(size, max(1, math.ceil(size / tuning.range_limit(size))))


async def drain(store: S3Store, objects: Objects, tuning: Tuning) -> int:
    """Read every object in ranged GETs; return the bytes read."""
    slots = asyncio.Semaphore(tuning.range_requests)
    total = 0

    async def one(key: str, start: int, end: int) -> None:
        nonlocal total
        async with slots:
            result = await obstore.get_async(store, key, options={"range": (start, end)})
            async for chunk in result.stream(min_chunk_size=STREAM_CHUNK):
                total += len(chunk)

    await asyncio.gather(*(one(key, a, b) for key, size in objects for a, b in parts(size, tuning)))
    return total


async def fill(store: S3Store, objects: Objects) -> int:
    """Upload every object; return the bytes sent."""
    block = os.urandom(STREAM_CHUNK)
    total = 0

    async def chunks(size: int) -> AsyncIterator[bytes]:
        nonlocal total
        sent = 0
        while sent < size:
            n = min(len(block), size - sent)
            sent += n
            total += n
            yield block if n == len(block) else block[:n]

    for key, size in objects:
        await obstore.put_async(
            store, key, chunks(size), chunk_size=PART_SIZE, max_concurrency=UPLOAD_CONCURRENCY
        )
    return total


def main(argv: list[str]) -> int:
    command, bucket, *pairs = argv
    objects = [(key, int(size)) for key, _, size in (p.rpartition(":") for p in pairs)]
    store = S3Store(
        bucket, endpoint=os.environ["AWS_ENDPOINT_URL"], client_options={"allow_http": True}
    )
    if command == "get":
        moved = asyncio.run(drain(store, objects, Tuning()))
    elif command == "put":
        moved = asyncio.run(fill(store, objects))
    else:
        print(f"unknown command {command!r}: get or put", file=sys.stderr)
        return 2
    expected = sum(size for _, size in objects)
    if moved != expected:
        print(f"moved {moved} bytes of {expected}", file=sys.stderr)
        return 1
    print(json.dumps({"bytes": moved}))
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    # The store client's runtime may abort in the interpreter's teardown: skip it.
    os._exit(code)
