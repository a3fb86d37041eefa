"""The package's SHA-256: pieces handed to a thread of its own, hashed in order."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from dspkg.packager import _Digest

PIECES = [0, 1, 999, 1000, 1001, 5000, 0, 70_000]


async def _hexdigest(digest: _Digest, pieces: list[bytes]) -> str:
    try:
        for piece in pieces:
            digest.update(piece)
        return await digest.hexdigest()
    finally:
        digest.close()


@pytest.mark.parametrize("handoff", [1, 1000, 4096, 1 << 20])
def test_digest_is_the_sha256_of_the_pieces_in_order(handoff: int) -> None:
    pieces = [os.urandom(n) for n in PIECES]
    got = asyncio.run(_hexdigest(_Digest(handoff), pieces))
    assert got == hashlib.sha256(b"".join(pieces)).hexdigest()


def test_digest_of_nothing_is_the_sha256_of_no_bytes() -> None:
    assert asyncio.run(_hexdigest(_Digest(), [])) == hashlib.sha256().hexdigest()


def test_closing_midway_stops_the_thread() -> None:
    """A failed upload closes the digest with pieces still queued: the thread ends."""
    digest = _Digest(1)
    for _ in range(1000):
        digest.update(b"x" * 10_000)
    digest.close()
    assert not digest._thread.is_alive()
