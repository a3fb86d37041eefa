"""A cache that many jobs on one machine share: real processes, kills, tampering, limits."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dspkg.bench.wan import WanConfig, WanEmulator
from dspkg.cache import Cache
from dspkg.fetcher import Fetcher
from dspkg.loader import load_manifest
from dspkg.names import VersionUri
from dspkg.pull_plan import plan_fetch
from dspkg.store import open_store
from dspkg.upkeep import disk_usage
from tests.helpers import (
    BUCKET,
    S3Server,
    assert_one_line_error,
    loop_mount,
    read_tree,
    run_cli,
    write_outputs,
)

URI = "dataset://shared/v1"


def dataset(count: int, seed: int, size: tuple[int, int] = (500, 4000)) -> dict[str, bytes]:
    rng = random.Random(seed)
    return {f"c{i % 5}/{i:05d}.jpg": rng.randbytes(rng.randint(*size)) for i in range(count)}


def publish(
    tmp_path: Path, env: dict[str, str], files: dict[str, bytes], uri: str = URI
) -> dict[str, object]:
    name = uri.rpartition("/")[2]
    write_outputs(tmp_path / f"out-{name}", files, [{"uri": uri, "packaging": True}])
    result = run_cli(["publish", str(tmp_path / f"out-{name}"), "--packaging", "--json"], env)
    assert result.returncode == 0, result.stderr
    version: dict[str, object] = json.loads(result.stdout)["versions"][0]
    return version


def spawn_pull(uri: str, dest: Path, env: dict[str, str], *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "dspkg.cli", "pull", uri, str(dest), "--json", *extra],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def local_env(tmp_path: Path) -> dict[str, str]:
    return {"DSPKG_STORE": f"file://{tmp_path / 'store'}", "DSPKG_CACHE": str(tmp_path / "cache")}


def test_four_concurrent_cold_pulls_download_each_byte_once(tmp_path: Path) -> None:
    env = local_env(tmp_path)
    files = dataset(5000, seed=1)
    version = publish(tmp_path, env, files)
    package_bytes = sum(p["size"] for p in version["packages"])  # type: ignore[attr-defined]
    procs = [spawn_pull(URI, tmp_path / f"dest{i}", env) for i in range(4)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    for i in range(4):
        assert read_tree(tmp_path / f"dest{i}") == files
    downloaded = sum(r["bytes_downloaded"] for r in results)
    assert downloaded <= 1.25 * package_bytes, (downloaded, package_bytes)


def test_concurrent_pulls_stay_correct_without_locks(tmp_path: Path) -> None:
    """Where file locks cannot be taken, processes duplicate work but never corrupt."""
    env = local_env(tmp_path)
    files = dataset(800, seed=2)
    publish(tmp_path, env, files)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "locks").write_text("not a directory: no lock can be made")
    procs = [spawn_pull(URI, tmp_path / f"dest{i}", env) for i in range(4)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    for i in range(4):
        assert read_tree(tmp_path / f"dest{i}") == files
    assert run_cli(["cache", "verify"], env).returncode == 0


def test_versions_sharing_files_share_them_in_the_cache(tmp_path: Path) -> None:
    env = local_env(tmp_path)
    files = dataset(300, seed=3)
    publish(tmp_path, env, files)
    changed = dict(list(files.items())[:270]) | dataset(30, seed=4, size=(100, 200))
    publish(tmp_path, env, changed, "dataset://shared/v2")
    assert run_cli(["pull", URI, str(tmp_path / "a")], env).returncode == 0
    second = run_cli(["pull", "dataset://shared/v2", str(tmp_path / "b"), "--json"], env)
    assert json.loads(second.stdout)["files_fetched"] == 30
    info = json.loads(run_cli(["cache", "info", "--json"], env).stdout)
    assert info["objects"] == len(set(files.values()) | set(changed.values()))
    assert {v["uri"] for v in info["versions"]} == {URI, "dataset://shared/v2"}


@pytest.fixture
def slow_store(s3_server: S3Server) -> tuple[dict[str, str], WanEmulator]:
    """S3 behind a slow link, so that a pull lasts long enough to be killed midway."""
    wan = WanEmulator(("127.0.0.1", s3_server.port), WanConfig(rtt_ms=0, mbit=0))
    wan.start()
    env = {
        **s3_server.env(),
        "AWS_ENDPOINT_URL": wan.url,
        "DSPKG_STORE": f"s3://{BUCKET}/killed-{os.getpid()}-{time.monotonic_ns()}",
    }
    return env, wan


def test_kill_9_at_random_moments_never_corrupts(
    tmp_path: Path, slow_store: tuple[dict[str, str], WanEmulator]
) -> None:
    store_env, wan = slow_store
    try:
        files = dataset(1500, seed=5)
        publish(tmp_path, {**store_env, "DSPKG_CACHE": str(tmp_path / "pubcache")}, files)
        wan.set_config(WanConfig(rtt_ms=20, mbit=16))  # about 2 s for this version
        rng = random.Random(11)
        for round_ in range(10):
            env = {**store_env, "DSPKG_CACHE": str(tmp_path / f"cache{round_ % 3}")}
            dest = tmp_path / f"killed{round_}"
            proc = spawn_pull(URI, dest, env)
            time.sleep(rng.uniform(0.05, 2.5))
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=60)
            verified = run_cli(["cache", "verify", "--json"], env)
            assert verified.returncode == 0, verified.stdout + verified.stderr
            # DEST shows no partial file at a final path: only whole files, or nothing.
            if dest.exists():
                for path in dest.rglob("*"):
                    if path.is_file() and ".dspkg-staging-" not in str(path):
                        assert path.read_bytes() == files[path.relative_to(dest).as_posix()]
            again = run_cli(["pull", URI, str(tmp_path / f"again{round_}")], env)
            assert again.returncode == 0, again.stderr
            assert read_tree(tmp_path / f"again{round_}") == files
            # Pulling into the interrupted DEST works too: its leftovers are removed.
            if dest.exists() and all(p.name.startswith(".dspkg-") for p in dest.iterdir()):
                assert run_cli(["pull", URI, str(dest)], env).returncode == 0
                assert read_tree(dest) == files
    finally:
        wan.stop()


def count_objects(cache: Path) -> int:
    total = 0
    for sub in os.scandir(cache / "objects"):
        with os.scandir(sub.path) as entries:
            total += sum(1 for _ in entries)
    return total


def test_kill_9_during_prune(tmp_path: Path) -> None:
    """SIGKILL while prune is deleting (seen: the object count dropped), not at start-up."""
    env = local_env(tmp_path)
    versions = {
        f"dataset://shared/p{i}": dataset(2500, seed=20 + i, size=(50, 300)) for i in range(4)
    }
    for uri, files in versions.items():
        publish(tmp_path, env, files, uri)
        assert run_cli(["pull", uri, str(tmp_path / uri.rpartition("/")[2])], env).returncode == 0
    cache = tmp_path / "cache"
    midway = 0
    for _ in range(3):
        before = count_objects(cache)
        proc = subprocess.Popen(
            [sys.executable, "-m", "dspkg.cli", "cache", "prune", "--max-size", "1MB"],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while proc.poll() is None and count_objects(cache) == before:
            pass  # deletion has not started yet
        proc.kill()
        proc.wait()
        after = count_objects(cache)
        if 0 < before - after < before:
            midway += 1
        assert run_cli(["cache", "verify"], env).returncode == 0
    assert midway >= 1  # at least one kill landed while objects were being removed
    for uri, files in versions.items():
        dest = tmp_path / f"after-{uri.rpartition('/')[2]}"
        assert run_cli(["pull", uri, str(dest)], env).returncode == 0
        assert read_tree(dest) == files


def test_file_changed_through_a_hardlink_is_fetched_again(tmp_path: Path) -> None:
    env = local_env(tmp_path)
    files = dataset(50, seed=6)
    publish(tmp_path, env, files)
    dest = tmp_path / "first"
    assert run_cli(["pull", URI, str(dest), "--link", "hardlink"], env).returncode == 0
    victim = dest / sorted(files)[7]
    assert victim.stat().st_nlink >= 2  # shares its inode with the cache
    victim.chmod(0o644)
    victim.write_bytes(b"user code scribbled here")
    second = run_cli(["pull", URI, str(tmp_path / "second"), "--json"], env)
    assert json.loads(second.stdout)["files_fetched"] == 1
    assert read_tree(tmp_path / "second") == files
    # verify finds nothing bad any more: the changed object was dropped on use.
    assert run_cli(["cache", "verify"], env).returncode == 0


def test_cp_p_through_a_hardlink_as_root_is_caught(tmp_path: Path) -> None:
    """Issue 17: ``cp -p`` of one pulled file onto another of the same size writes through
    the hardlink into the cache and puts back mtime and mode; the ctime still tells."""
    env = local_env(tmp_path)
    files = {f"c/{i:03d}.bin": bytes([i]) * 3000 for i in range(40)}
    publish(tmp_path, env, files)
    dest = tmp_path / "first"
    assert run_cli(["pull", URI, str(dest), "--link", "hardlink"], env).returncode == 0
    victim, source = dest / "c/007.bin", dest / "c/008.bin"
    time.sleep(1.2)  # beyond the second in which dspkg itself touched the objects
    subprocess.run(["cp", "-p", str(source), str(victim)], check=True)
    assert victim.read_bytes() == files["c/008.bin"]  # the cache object changed too
    second = run_cli(["pull", URI, str(tmp_path / "second"), "--json"], env)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["files_fetched"] == 1
    assert read_tree(tmp_path / "second") == files
    assert run_cli(["cache", "verify"], env).returncode == 0


def test_a_deleted_destination_costs_a_hash_not_a_download(tmp_path: Path) -> None:
    env = local_env(tmp_path)
    files = dataset(200, seed=11)
    publish(tmp_path, env, files)
    first = tmp_path / "first"
    assert run_cli(["pull", URI, str(first), "--link", "hardlink"], env).returncode == 0
    time.sleep(1.2)
    subprocess.run(["rm", "-rf", str(first)], check=True)  # moves every object's ctime
    second = run_cli(["pull", URI, str(tmp_path / "second"), "--json", "--link", "hardlink"], env)
    doc = json.loads(second.stdout)
    assert doc["files_fetched"] == 0 and doc["requests"] == 0
    assert read_tree(tmp_path / "second") == files
    # Checked again and linked: objects are trusted by one stat from now on.
    objects = [p for p in (tmp_path / "cache" / "objects").rglob("*") if p.is_file()]
    assert objects and all(
        0 <= p.stat().st_ctime_ns - p.stat().st_mtime_ns <= 10**9 for p in objects
    )


def test_verify_reports_and_drops_bad_objects(tmp_path: Path) -> None:
    env = local_env(tmp_path)
    files = dataset(20, seed=7)
    publish(tmp_path, env, files)
    assert run_cli(["pull", URI, str(tmp_path / "d")], env).returncode == 0
    objects = sorted(p for p in (tmp_path / "cache" / "objects").rglob("*") if p.is_file())
    before = objects[0].stat()
    objects[0].chmod(0o644)
    objects[0].write_bytes(b"rot")
    os.chmod(objects[0], 0o444)
    os.utime(objects[0], ns=(before.st_atime_ns, before.st_mtime_ns))  # hide the change
    result = run_cli(["cache", "verify", "--json"], env)
    assert result.returncode == 1
    bad = json.loads(result.stdout)["bad"]
    assert [b["object"] for b in bad] == [objects[0].parent.name + objects[0].name]
    assert not objects[0].exists()
    assert run_cli(["cache", "verify"], env).returncode == 0


def test_prune_to_10mb(tmp_path: Path) -> None:
    env = local_env(tmp_path)
    for i in range(3):
        uri = f"dataset://shared/big{i}"
        publish(tmp_path, env, dataset(200, seed=30 + i, size=(30_000, 50_000)), uri)
        assert run_cli(["pull", uri, str(tmp_path / f"d{i}")], env).returncode == 0
    assert disk_usage(tmp_path / "cache") > 20_000_000
    pruned = run_cli(["cache", "prune", "--max-size", "10MB", "--json"], env)
    assert pruned.returncode == 0, pruned.stderr
    doc = json.loads(pruned.stdout)
    assert doc["evicted_versions"][0] == "dataset://shared/big0"  # least recently used first
    assert disk_usage(tmp_path / "cache") <= 10_000_000
    du = subprocess.run(
        ["du", "-sb", str(tmp_path / "cache")], capture_output=True, text=True, check=True
    )
    assert int(du.stdout.split()[0]) <= 10_000_000
    info = json.loads(run_cli(["cache", "info", "--json"], env).stdout)
    assert "dataset://shared/big2" in {v["uri"] for v in info["versions"]}
    # Manifest shards go with the versions evicted: one kept per cached root.
    kept = list((tmp_path / "cache" / "manifests").glob("*/shared/shards/*"))
    roots = list((tmp_path / "cache" / "manifests").glob("*/shared/*.json"))
    assert len(kept) == len(roots) == len(info["versions"])


def test_size_limit_from_the_environment_applies_after_each_pull(tmp_path: Path) -> None:
    env = {**local_env(tmp_path), "DSPKG_CACHE_MAX_SIZE": "6MB"}
    for i in range(3):
        uri = f"dataset://shared/auto{i}"
        publish(tmp_path, env, dataset(100, seed=40 + i, size=(30_000, 40_000)), uri)
        assert run_cli(["pull", uri, str(tmp_path / f"d{i}")], env).returncode == 0
        assert disk_usage(tmp_path / "cache") <= 6_000_000
    assert run_cli(["cache", "prune"], local_env(tmp_path)).returncode == 1  # no limit known


def test_size_limit_from_the_cache_config_file_applies_and_a_broken_one_is_named(
    tmp_path: Path,
) -> None:
    env = local_env(tmp_path)
    config = tmp_path / "cache" / "config.toml"
    config.parent.mkdir()
    config.write_text('max_size = "6MB"\n')
    for i in range(2):
        uri = f"dataset://shared/conf{i}"
        publish(tmp_path, env, dataset(100, seed=60 + i, size=(30_000, 40_000)), uri)
        assert run_cli(["pull", uri, str(tmp_path / f"d{i}")], env).returncode == 0
        assert disk_usage(tmp_path / "cache") <= 6_000_000
    assert run_cli(["cache", "prune"], env).returncode == 0  # the limit is known
    for broken in (b"max_size = \n", b'max_size = "6\xff"\n'):
        config.write_bytes(broken)
        result = run_cli(["pull", "dataset://shared/conf0", str(tmp_path / "again")], env)
        assert_one_line_error(result, str(config), "cannot be read")
        assert not (tmp_path / "again").exists()


def test_disk_full_while_pulling(tmp_path: Path) -> None:
    env = local_env(tmp_path)
    files = dataset(300, seed=8, size=(20_000, 30_000))  # about 7.5 MB
    publish(tmp_path, env, files)
    with loop_mount(tmp_path, "tmpfs", size_mb=3) as mount:
        cache = mount / "cache"
        small = {**env, "DSPKG_CACHE": str(cache)}
        dest = tmp_path / "dest"
        failed = run_cli(["pull", URI, str(dest)], small)
        assert_one_line_error(failed, "no space left in the cache directory", str(cache))
        assert not dest.exists() or list(dest.iterdir()) == []
        assert list((cache / "tmp").iterdir()) == []  # no partial file left behind
        assert run_cli(["cache", "verify"], small).returncode == 0
        subprocess.run(["mount", "-o", "remount,size=32m", str(mount)], check=True)
        again = run_cli(["pull", URI, str(dest)], small)
        assert again.returncode == 0, again.stderr
        assert read_tree(dest) == files


def test_a_fetch_planned_before_another_process_fetched_the_package_downloads_nothing(
    tmp_path: Path,
) -> None:
    """The race of four cold pulls, made certain: this process plans against an empty
    cache, another process then pulls the whole version and lets go of the package's
    lock, and only then does this one take the lock (at once, uncontended)."""
    env = local_env(tmp_path)
    files = dataset(400, seed=7)
    publish(tmp_path, env, files)
    store = open_store(env["DSPKG_STORE"])
    with Cache(tmp_path / "cache") as cache:
        manifest = asyncio.run(load_manifest(store, cache, VersionUri.parse(URI)))
        plan = plan_fetch(manifest, lambda f: False)
        planned_at = time.time()
        assert plan.bytes_to_fetch > 0
        other = run_cli(["pull", URI, str(tmp_path / "other")], env)
        assert other.returncode == 0, other.stderr

        async def fetch(since: float) -> int:
            with ThreadPoolExecutor(2) as disk:
                fetcher = Fetcher(store, cache, manifest, disk, planned_at=since)
                return (await fetcher.run(plan)).bytes

        assert asyncio.run(fetch(planned_at)) == 0
        # The same plan, had it been made after the other pull's stamp, is fetched as is.
        assert asyncio.run(fetch(time.time() + 5)) == plan.bytes_total
    assert read_tree(tmp_path / "other") == files


def test_objects_are_written_in_their_own_folders_from_many_threads(tmp_path: Path) -> None:
    """Each object is written unnamed in its own folder and linked once whole: nothing
    goes through the process's temp folder (here it is gone), and writing an object that
    is cached already keeps the one there."""
    blobs = [os.urandom(size) for size in range(0, 6000, 37)]
    with Cache(tmp_path / "cache") as cache:
        own = Path(cache.temp_name()).parent
        shutil.rmtree(own)

        def put(data: bytes) -> None:
            cache.write_object(hashlib.sha256(data).hexdigest(), [data[:10], data[10:]])

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(put, blobs))
        put(blobs[1])
        for data in blobs:
            sha = hashlib.sha256(data).hexdigest()
            assert cache.lookup(sha, len(data))
            assert Path(cache.object_path(sha)).read_bytes() == data
        assert not own.exists()


@given(
    cached=st.lists(st.binary(max_size=40), max_size=30, unique=True),
    asked=st.lists(st.binary(max_size=40), max_size=30),
    budget=st.integers(0, 40),
)
@settings(max_examples=40, deadline=None)
def test_named_lists_what_the_cache_holds_or_gives_up_past_its_budget(
    tmp_path_factory: pytest.TempPathFactory,
    cached: list[bytes],
    asked: list[bytes],
    budget: int,
) -> None:
    """``named`` finds exactly the asked objects whose names are in the cache (a foreign
    name in an objects folder is no object), and gives up (None) once the folders it
    had to list held more names than ``budget``."""
    with Cache(tmp_path_factory.mktemp("named") / "cache") as cache:
        for data in cached:
            cache.write_object(hashlib.sha256(data).hexdigest(), [data])
        Path(cache.object_path("ab" + "0" * 62)).with_name("stray").write_bytes(b"")
        shas = {hashlib.sha256(data).hexdigest() for data in asked + cached[:3]}
        listed = sum(
            len(os.listdir(Path(cache.object_path(p + "0" * 62)).parent))
            for p in {sha[:2] for sha in shas}
        )
        found = cache.named(shas, budget=budget)
        if listed > budget:
            assert found is None
        else:
            assert found == {hashlib.sha256(d).hexdigest() for d in cached} & shas
