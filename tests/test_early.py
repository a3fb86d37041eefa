"""A cold pull sends its packages' GETs before its plan (dspkg.early): the planned ranges
take exactly their bytes, the tree and the cache come out as without them, a tampered
package is refused all the same, a pull that is not cold sends none, and a pull that
fails before its plan stops them. Real stores: a directory and SeaweedFS (S3)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import time
from pathlib import Path

import pytest

from dspkg import api
from dspkg.cache import Cache
from dspkg.catalog import Catalog
from dspkg.early import EarlyReads
from dspkg.errors import DestinationError, Integrity
from dspkg.manifest import Manifest
from dspkg.names import VersionUri
from dspkg.pull_plan import EARLY_MARGIN, Tuning, plan_fetch
from dspkg.puller import PullOptions, PullResult, pull_version
from dspkg.store import Store
from tests.helpers import StoreCase, make_store_url, read_tree
from tests.helpers import write_outputs as write

URI = "dataset://early/v1"
VERSION = VersionUri("early", "v1")
# Small cuts, so that a package of a few hundred kB is read as several early spans.
TUNING = Tuning(min_range=64 << 10, range_requests=6, early_buffer=8 << 20)


def some_files(seed: int, count: int = 240) -> dict[str, bytes]:
    """Files of 0-12 kB, and two longer than EARLY_MARGIN: they straddle cuts."""
    rng = random.Random(seed)
    files = {f"d{i % 4}/f{i:04d}.bin": rng.randbytes(rng.randrange(12_000)) for i in range(count)}
    files["d1/long-a.bin"] = rng.randbytes(EARLY_MARGIN + 70_000)
    files["d2/long-b.bin"] = rng.randbytes(EARLY_MARGIN + 5_000)
    return files


@pytest.fixture(params=["file", "seaweedfs"])
def store_case(request: pytest.FixtureRequest, tmp_path: Path) -> StoreCase:
    url, env = make_store_url(request.param, tmp_path, request)
    return StoreCase(request.param, url, env)


def publish(case: StoreCase, tmp_path: Path, files: dict[str, bytes], **options: object) -> None:
    outputs = write(tmp_path / "outputs", files, [URI])
    api.publish(
        outputs,
        store=case.url,
        packaging=True,
        package_size="1MB",
        env={**case.env, "DSPKG_CACHE": str(tmp_path / "publish-cache")},
        **options,  # type: ignore[arg-type]
    )


def pull(case: StoreCase, cache_dir: Path, dest: Path, uri: VersionUri = VERSION) -> PullResult:
    """A pull with early GETs on (they are off by default) and small cuts."""

    async def run() -> PullResult:
        with Cache(cache_dir) as cache:
            return await pull_version(uri, dest, case.open(), cache, PullOptions(tuning=TUNING))

    return asyncio.run(run())


def test_planned_ranges_take_exactly_their_bytes_from_the_early_spans(
    store_case: StoreCase, tmp_path: Path
) -> None:
    publish(store_case, tmp_path, some_files(1))

    async def check() -> tuple[int, int]:
        store = store_case.open()
        manifest = await Catalog(store).read_manifest(VERSION)
        assert len(manifest.packages) >= 2
        with Cache(tmp_path / "cache") as cache:
            return await read_early(store, cache, manifest)

    async def read_early(store: Store, cache: Cache, manifest: Manifest) -> tuple[int, int]:
        early = EarlyReads(store, cache, manifest.packages, TUNING, time.time())
        # Another process's early reads of the same packages: none while these hold them.
        other = EarlyReads(store, cache, manifest.packages, TUNING, time.time())
        assert other.cuts == {}
        await other.close()
        try:
            plan = plan_fetch(manifest, lambda f: False, TUNING, early.cuts)
            early.keep(plan.ranges)
            taken = 0
            for r in plan.ranges:
                source = early.take(r)
                if source is None:
                    continue
                taken += 1
                data = b"".join([bytes(chunk) async for chunk in source])
                assert data == await store.get_range(r.key, r.start, r.end)
        finally:
            await early.close()
        # Closed: the locks are free again.
        again = EarlyReads(store, cache, manifest.packages, TUNING, time.time())
        assert again.cuts == early.cuts
        await again.close()
        return taken, len(plan.ranges)

    taken, ranges = asyncio.run(check())
    # Every early span is taken (the cuts fall on entries of the first packages).
    assert taken == TUNING.range_requests < ranges


def test_a_cold_pull_with_early_spans_makes_the_tree_and_the_cache(
    store_case: StoreCase, tmp_path: Path
) -> None:
    files = some_files(2)
    publish(store_case, tmp_path, files)
    result = pull(store_case, tmp_path / "cache", tmp_path / "dest")
    assert read_tree(tmp_path / "dest") == files
    assert (result.files_fetched, result.files_from_cache) == (len(files), 0)
    # Every byte of the packages once at most, and a little of the spans' margins.
    stored = sum(p.size for p in (result.manifest.packages if result.manifest else ()))
    assert result.bytes_downloaded <= stored + TUNING.range_requests * EARLY_MARGIN + (1 << 20)
    with Cache(tmp_path / "cache") as cache:
        for data in files.values():
            path = cache.object_path(hashlib.sha256(data).hexdigest())
            assert Path(path).read_bytes() == data
    warm = pull(store_case, tmp_path / "cache", tmp_path / "again")
    assert (warm.files_fetched, warm.requests) == (0, 0)


def test_a_tampered_package_is_refused_with_early_spans(tmp_path: Path) -> None:
    files = some_files(3)
    case = StoreCase("file", f"file://{tmp_path / 'store'}", {})
    publish(case, tmp_path, files, packages_only=True)
    # Change one byte of an entry's data far from the start of its package, size kept.
    manifest = asyncio.run(Catalog(case.open()).read_manifest(VERSION))
    victim = max(
        (f for f in manifest.files if f.package == 0 and f.size > 100),
        key=lambda f: f.offset or 0,
    )
    assert victim.offset is not None and victim.offset > 2 * TUNING.min_range
    package = tmp_path / "store" / manifest.packages[0].key
    data = bytearray(package.read_bytes())
    data[victim.offset + victim.size // 2] ^= 0xFF
    package.write_bytes(bytes(data))

    with pytest.raises(Integrity) as caught:
        pull(case, tmp_path / "cache", tmp_path / "dest")
    assert manifest.packages[0].name in str(caught.value) and victim.path in str(caught.value)
    assert not (tmp_path / "dest").exists()
    with Cache(tmp_path / "cache") as cache:
        assert not cache.lookup(victim.sha256, victim.size)


def test_a_version_built_on_a_cached_one_sends_no_early_gets(tmp_path: Path) -> None:
    """The cache holds most of v2 (v1 was pulled): v2's pull downloads its new file and
    the ranges around it, not its packages whole."""
    files = some_files(4)
    case = StoreCase("file", f"file://{tmp_path / 'store'}", {})
    publish(case, tmp_path, files)
    env = {"DSPKG_CACHE": str(tmp_path / "cache"), "PATH": os.environ.get("PATH", "")}
    pull(case, tmp_path / "cache", tmp_path / "v1")
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "new.bin").write_bytes(os.urandom(5_000))
    api.publish(
        tmp_path / "more",
        store=case.url,
        to="dataset://early/v2",
        from_=URI,
        packaging=True,
        package_size="1MB",
        env=env,
    )
    v2 = pull(case, tmp_path / "cache", tmp_path / "v2", VersionUri("early", "v2"))
    assert read_tree(tmp_path / "v2") == {
        **files,
        "new.bin": read_tree(tmp_path / "more")["new.bin"],
    }
    assert v2.files_fetched == 1
    assert v2.bytes_downloaded < 200_000  # the manifest and one coalesced range


def test_a_pull_failing_before_its_plan_stops_its_early_gets(tmp_path: Path) -> None:
    """DEST is not empty: the pull fails after the GETs went out, before its plan."""
    case = StoreCase("file", f"file://{tmp_path / 'store'}", {})
    publish(case, tmp_path, some_files(5))
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "mine.txt").write_text("kept")

    async def run() -> None:
        with Cache(tmp_path / "cache") as cache:
            options = PullOptions(tuning=TUNING)
            with pytest.raises(DestinationError, match="is not empty"):
                await pull_version(VERSION, tmp_path / "dest", case.open(), cache, options)
            assert not any(cache.iter_objects())  # nothing fetched
        assert asyncio.all_tasks() == {asyncio.current_task()}  # no early GET left running

    asyncio.run(run())
    assert read_tree(tmp_path / "dest") == {"mine.txt": b"kept"}
