"""The store suite: the same behaviour on every store kind (memory, local directory, S3)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

import pytest

from dspkg.bench.servers import LocalServer
from dspkg.errors import DspkgError, InvalidArgument, StoreError
from dspkg.store import open_store
from tests.helpers import LISTED_KEYS, StoreCase, check_listing_and_delete

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def test_put_get_head_roundtrip(store_case: StoreCase) -> None:
    store = store_case.open()

    async def go() -> None:
        assert await store.put("a/b.bin", b"hello world")
        assert await store.get("a/b.bin") == b"hello world"
        info = await store.head("a/b.bin")
        assert info is not None and info.size == 11
        assert await store.head("a/missing") is None

    run(go())
    assert store.stats.bytes_up == 11
    assert store.stats.bytes_down == 11


def test_conditional_create_never_overwrites(store_case: StoreCase) -> None:
    store = store_case.open()

    async def go() -> None:
        assert await store.put("m.json", b"first", create=True) is True
        assert await store.put("m.json", b"second", create=True) is False
        assert await store.get("m.json") == b"first"

    run(go())


def test_conditional_replace_lets_exactly_one_writer_win(store_case: StoreCase) -> None:
    store = store_case.open()

    async def go() -> None:
        assert await store.get_revision("m.json") is None
        await store.put("m.json", b"first", create=True)
        found = await store.get_revision("m.json")
        assert found is not None and found[0] == b"first"
        seen = found[1]
        assert await store.replace("m.json", b"second", seen) is True
        # What the first reader saw is stale now: a second replace from it loses.
        assert await store.replace("m.json", b"third", seen) is False
        assert await store.get("m.json") == b"second"
        # Eight writers replace the same revision at once: exactly one wins.
        again = await store.get_revision("m.json")
        assert again is not None and again[1] != seen
        wins = await asyncio.gather(
            *(store.replace("m.json", f"writer {i}".encode(), again[1]) for i in range(8))
        )
        assert wins.count(True) == 1
        assert await store.get("m.json") == f"writer {wins.index(True)}".encode()
        # A replace never creates: a missing object stays missing.
        assert await store.replace("gone.json", b"x", again[1]) is False
        assert await store.head("gone.json") is None

    run(go())


def test_ranged_reads(store_case: StoreCase) -> None:
    store = store_case.open()
    data = bytes(range(256)) * 100

    async def go() -> None:
        await store.put("r.bin", data)
        assert await store.get_range("r.bin", 10, 20) == data[10:20]
        got = b"".join(
            [bytes(c) async for c in store.stream_range("r.bin", 100, 20_000, chunk_size=1000)]
        )
        assert got == data[100:20_000]

    run(go())


def test_range_past_the_end_is_an_error(store_case: StoreCase) -> None:
    store = store_case.open()

    async def go() -> None:
        await store.put("short.bin", b"0123456789")
        with pytest.raises(StoreError, match="asked for bytes 5-50 and got 5 bytes; the object is"):
            await store.get_range("short.bin", 5, 50)

    run(go())


def test_streamed_multipart_upload(store_case: StoreCase) -> None:
    store = store_case.open()
    parts = [bytes([i]) * (3 << 20) for i in range(4)]

    async def chunks() -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    async def go() -> None:
        await store.put_stream("big.bin", chunks(), part_size=5 << 20)
        assert await store.get("big.bin") == b"".join(parts)

    run(go())


def test_failed_stream_leaves_nothing(store_case: StoreCase) -> None:
    store = store_case.open()

    class Boom(DspkgError):
        pass

    async def chunks() -> AsyncIterator[bytes]:
        yield b"x" * (6 << 20)
        raise Boom("source went away")

    async def go() -> None:
        with pytest.raises(Boom, match="source went away"):
            await store.put_stream("partial.bin", chunks(), part_size=5 << 20)
        assert await store.head("partial.bin") is None

    run(go())


def test_list_and_dirs_and_delete(store_case: StoreCase) -> None:
    store = store_case.open()

    async def go() -> None:
        for key in LISTED_KEYS:
            await store.put(key, b"{}")
        await check_listing_and_delete(store)

    run(go())


def test_missing_object_is_a_store_error(store_case: StoreCase) -> None:
    store = store_case.open()
    with pytest.raises(StoreError, match="not found"):
        run(store.get("nope"))


def test_unknown_scheme_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="unsupported store URL"):
        open_store("ftp://host/x")


def test_bad_store_option_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="cannot be configured"):
        open_store("s3://bucket/prefix", {"no_such_option": "1"})


def test_seaweedfs_checks_signatures(seaweedfs_server: LocalServer) -> None:
    # moto accepts any signature; SeaweedFS, like S3, only the keys it knows. So the suite's
    # requests above were signed, and signed right.
    url = seaweedfs_server.url("signed")
    wrong = open_store(url, {"secret_access_key": "not-the-key"}, env=seaweedfs_server.env())
    with pytest.raises(StoreError, match="refused access"):
        run(wrong.put("k", b"x"))
    right = open_store(url, env=seaweedfs_server.env())
    assert run(right.put("k", b"x"))
