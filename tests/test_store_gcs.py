"""Google Cloud Storage (``gs://``) through fake-gcs-server: the read side of the store suite.

"gs" is not among the store kinds of tests/test_store.py because no GCS emulator
installable here takes obstore's writes. obstore writes through GCS's XML API:
fake-gcs-server 1.54 answers the object PUT (plain and with
``x-goog-if-generation-match: 0``) and the multipart ``POST ?uploads`` with
``400 invalid uploadType`` (its XML upload support is fsouza/fake-gcs-server#1164,
unmerged); gcp-storage-emulator 2026.7.19 answers every obstore request, reads included,
with 501 (both tried again in December 2026; docs/cli.md says so). So these tests
write objects through the emulator's own JSON upload API and run dspkg's reads, listings
and deletes against them, through ``open_store`` configured as a user would.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from dspkg.bench.servers import LocalServer
from dspkg.errors import StoreError
from dspkg.store import Store, open_store
from tests.helpers import BUCKET, LISTED_KEYS, check_listing_and_delete, gcs_upload


def _store(server: LocalServer) -> tuple[Store, str]:
    prefix = uuid.uuid4().hex
    return open_store(f"gs://{BUCKET}/{prefix}", env=server.env()), prefix


def test_get_head_and_ranged_reads(gcs_server: LocalServer) -> None:
    store, prefix = _store(gcs_server)
    data = bytes(range(256)) * 100
    gcs_upload(gcs_server, f"{prefix}/r.bin", data)

    async def go() -> None:
        assert await store.get("r.bin") == data
        assert await store.get_range("r.bin", 10, 20) == data[10:20]
        got = b"".join(
            [bytes(c) async for c in store.stream_range("r.bin", 100, 20_000, chunk_size=1000)]
        )
        assert got == data[100:20_000]
        info = await store.head("r.bin")
        assert info is not None and info.size == len(data)
        assert await store.head("missing") is None
        assert await store.get_optional("missing") is None
        with pytest.raises(StoreError, match="and got 5 bytes; the object is shorter"):
            await store.get_range("r.bin", len(data) - 5, len(data) + 50)
        with pytest.raises(StoreError, match="not found"):
            await store.get("nope")

    asyncio.run(go())
    assert store.stats.bytes_down > len(data)


def test_list_and_dirs_and_delete(gcs_server: LocalServer) -> None:
    store, prefix = _store(gcs_server)
    for key in LISTED_KEYS:
        gcs_upload(gcs_server, f"{prefix}/{key}", b"{}")

    asyncio.run(check_listing_and_delete(store))


def test_a_request_the_server_refuses_is_not_retried(gcs_server: LocalServer) -> None:
    """fake-gcs-server answers obstore's XML PUT with 400: final, said at once, not retried
    as if the network were at fault."""
    store, _ = _store(gcs_server)
    with pytest.raises(StoreError, match="store request failed") as caught:
        asyncio.run(store.put("x.bin", b"data"))
    assert "times" not in str(caught.value)
    assert store.stats.retries == 0
