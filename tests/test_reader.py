"""``dspkg.open_version``: the Python reader, on a local store and on S3, in threads and forks."""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import pickle
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import dspkg
from dspkg.errors import Integrity, InvalidArgument, NotFound
from dspkg.reader import VersionReader
from tests.helpers import StoreCase, run_cli, stored_record, write_outputs

URI = "dataset://birds/v1"


def bird_files(count: int = 120, seed: int = 5) -> dict[str, bytes]:
    rng = random.Random(seed)
    return {f"b{i % 3}/{i:04d}.jpg": rng.randbytes(rng.randint(0, 25_000)) for i in range(count)}


def publish(case: StoreCase, tmp_path: Path, files: dict[str, bytes], *extra: str) -> None:
    outputs = write_outputs(tmp_path / "outputs", files, [{"uri": URI, "packaging": True}])
    env = {**case.env, "DSPKG_STORE": case.url, "DSPKG_CACHE": str(tmp_path / "cache")}
    done = run_cli(["publish", str(outputs), "--packaging", "--package-size", "1MiB", *extra], env)
    assert done.returncode == 0, done.stderr


def open_version(case: StoreCase, tmp_path: Path) -> VersionReader:
    return dspkg.open_version(
        URI, store=case.url, cache_dir=tmp_path / "cache", env={**case.env, "PATH": ""}
    )


def test_files_read_open_len_and_index(durable_store: StoreCase, tmp_path: Path) -> None:
    files = bird_files()
    publish(durable_store, tmp_path, files)
    with open_version(durable_store, tmp_path) as v:
        assert v.files() == sorted((p, len(d)) for p, d in files.items())
        assert len(v) == len(files)
        names = [p for p, _ in v.files()]
        assert [v[i] for i in range(len(v))] == [files[p] for p in names]
        assert v[-1] == files[names[-1]]
        with pytest.raises(IndexError, match="out of range"):
            v[len(v)]
        assert v.read("b1/0004.jpg") == files["b1/0004.jpg"]
        with v.open("b2/0005.jpg") as f:
            assert isinstance(f, io.BufferedReader) and f.seekable()
            f.seek(100)
            assert f.read(50) == files["b2/0005.jpg"][100:150]
        with pytest.raises(NotFound, match=r"has no file 'nope\.jpg'"):
            v.read("nope.jpg")


def _digests(args: tuple[VersionReader, int]) -> list[tuple[int, str]]:
    v, worker = args
    return [(i, hashlib.sha256(v[i]).hexdigest()) for i in range(worker, len(v), 4)]


def test_forked_workers_and_threads_read_exact_bytes(tmp_path: Path) -> None:
    case = StoreCase("file", f"file://{tmp_path / 'store'}", {})
    files = bird_files(count=400)
    publish(case, tmp_path, files)
    with open_version(case, tmp_path) as v:
        names = [p for p, _ in v.files()]
        want = {i: hashlib.sha256(files[p]).hexdigest() for i, p in enumerate(names)}
        assert v[0] == files[names[0]]  # the parent reads first: the children must reopen
        with multiprocessing.get_context("fork").Pool(4) as pool:
            parts = pool.map(_digests, [(v, w) for w in range(4)])
        got = dict(pair for part in parts for pair in part)
        assert got == want
        with ThreadPoolExecutor(8) as threads:
            assert list(threads.map(lambda i: v[i], range(len(v)))) == [files[p] for p in names]


def test_spawned_workers_attach_by_pickle(tmp_path: Path) -> None:
    case = StoreCase("file", f"file://{tmp_path / 'store'}", {})
    files = bird_files(count=40)
    publish(case, tmp_path, files)
    with open_version(case, tmp_path) as v:
        assert len(pickle.dumps(v)) < 1000  # the manifest travels through the cache
        with multiprocessing.get_context("spawn").Pool(2) as pool:
            parts = pool.map(_digests, [(v, w) for w in range(2)])
    names = sorted(files)
    for part in parts:
        for i, digest in part:
            assert digest == hashlib.sha256(files[names[i]]).hexdigest()


def test_a_corrupt_file_raises_and_the_others_read(tmp_path: Path) -> None:
    case = StoreCase("file", f"file://{tmp_path / 'store'}", {})
    files = bird_files()
    publish(case, tmp_path, files, "--packages-only")
    victim = stored_record(case, "birds", "v1", "b0/0003.jpg")
    package = tmp_path / "store" / victim["package_key"]
    data = bytearray(package.read_bytes())
    data[victim["offset"]] ^= 0x01
    package.write_bytes(bytes(data))
    with open_version(case, tmp_path) as v:
        for path, content in files.items():
            if path == "b0/0003.jpg":
                with pytest.raises(
                    Integrity,
                    match=r"'b0/0003\.jpg' (fails its CRC-32 check|does not match its sha256)",
                ):
                    v.read(path)
            else:
                assert v.read(path) == content


def test_memory_stores_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="a memory store lives in one process"):
        dspkg.open_version(URI, store="memory://x", cache_dir=tmp_path / "cache")


def test_a_missing_version_is_one_error(tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    with pytest.raises(dspkg.errors.NotFound, match="birds"):
        dspkg.open_version(URI, store=f"file://{tmp_path / 'store'}", cache_dir=tmp_path / "c")
