"""The download floor's child: read objects through the link and keep nothing.

``python -m dspkg.bench._drain BUCKET KEY:SIZE...`` reads each object whole in ranged
GETs cut and bounded as a cold pull cuts a package (:class:`~dspkg.pull_plan.Tuning`:
``range_limit`` long, ``range_requests`` in flight), and drops the bytes; it prints
``{"bytes": N, "requests": R}``. The endpoint and credentials come
from the usual ``AWS_*`` variables, as for any client the benchmark runs.

What it measures is what this server and this link give the bytes a pull must move, with
no file written and no byte parsed: the pull's own floor on this test bed, which the
theoretical one (bytes over the link rate) leaves out (the server's time to first byte
and its ramp, the requests' round trips).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import sys

import obstore
from obstore.store import S3Store

from dspkg.pull_plan import Tuning
from dspkg.store import STREAM_CHUNK


def parts(size: int, tuning: Tuning) -> list[tuple[int, int]]:
    """``[start, end)`` ranges that cover ``size`` bytes in nearly equal parts, each at most
    as long as the pull's ranges would be."""
    count = max(1, math.ceil(size / tuning.range_limit(size)))
    edges = [size * i // count for i in range(count + 1)]
    return [(a, b) for a, b in itertools.pairwise(edges) if b > a]


async def drain(store: S3Store, objects: list[tuple[str, int]], tuning: Tuning) -> tuple[int, int]:
    """Read every object in ranged GETs; return the bytes read and the requests made."""
    slots = asyncio.Semaphore(tuning.range_requests)
    total = requests = 0

    async def one(key: str, start: int, end: int) -> None:
        nonlocal total, requests
        async with slots:
            requests += 1
            result = await obstore.get_async(store, key, options={"range": (start, end)})
            async for chunk in result.stream(min_chunk_size=STREAM_CHUNK):
                total += len(chunk)

    await asyncio.gather(*(one(key, a, b) for key, size in objects for a, b in parts(size, tuning)))
    return total, requests


def main(argv: list[str]) -> int:
    bucket, *pairs = argv
    objects = [(key, int(size)) for key, _, size in (p.rpartition(":") for p in pairs)]
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    store = S3Store(bucket, endpoint=endpoint, client_options={"allow_http": True})
    got, requests = asyncio.run(drain(store, objects, Tuning()))
    expected = sum(size for _, size in objects)
    if got != expected:
        print(f"read {got} bytes of {expected}", file=sys.stderr)
        return 1
    print(json.dumps({"bytes": got, "requests": requests}))
    return 0


if __name__ == "__main__":
    sys.stdout.flush()
    code = main(sys.argv[1:])
    sys.stdout.flush()
    # The store client's runtime may abort in the interpreter's teardown: skip it.
    os._exit(code)
