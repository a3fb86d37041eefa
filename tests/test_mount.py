"""``dspkg mount``: a real FUSE mount of a published version, on a local store and on S3.

Every mount is a separate ``dspkg mount`` process, started as the runner and
``--background`` start it (:func:`dspkg.mounting.start_mount`); what it downloaded is
read from the line it prints when it unmounts.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import random
import re
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dspkg.catalog import Catalog
from dspkg.layout import manifest_key
from dspkg.manifest import FileEntry, Manifest, ManifestRoot
from dspkg.mounting import FSTYPE, MountProcess, fuse_problem, mount_argv, mounted_fstype
from dspkg.mounting import start_mount as _start_mount
from dspkg.names import VersionUri
from dspkg.shards import ShardLimits, encode_manifest, encode_root
from tests.helpers import (
    StoreCase,
    assert_one_line_error,
    read_tree,
    run_cli,
    stored_record,
    write_outputs,
)

pytestmark = pytest.mark.skipif(
    fuse_problem() is not None, reason=f"the kernel refuses FUSE here: {fuse_problem()}"
)

URI = "dataset://pets/v1"
NOW = "2026-12-02T00:00:00Z"
SUMMARY = re.compile(
    r"unmounted (\S+) from .*: ([\d,]+) of ([\d,]+) files fetched.* = ([\d,]+) bytes downloaded"
)


def pet_files(seed: int = 3, count: int = 240) -> dict[str, bytes]:
    rng = random.Random(seed)
    files = {
        f"{kind}/{i:03d}.jpg": rng.randbytes(rng.randint(0, 30_000))
        for kind in ("cat", "dog")
        for i in range(count // 2)
    }
    files["README.txt"] = b"pets\n"
    files["deep/a/b/c.txt"] = b"deep"
    return files


def env_for(
    case: StoreCase, tmp_path: Path, cache: str = "cache", speedups: str = "1"
) -> dict[str, str]:
    return {
        **case.env,
        "DSPKG_STORE": case.url,
        "DSPKG_CACHE": str(tmp_path / cache),
        "DSPKG_SPEEDUPS": speedups,
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/root"),
    }


def publish(
    case: StoreCase, tmp_path: Path, files: dict[str, bytes], *extra: str
) -> dict[str, object]:
    outputs = write_outputs(tmp_path / "outputs", files, [{"uri": URI, "packaging": True}])
    done = run_cli(
        ["publish", str(outputs), "--packaging", "--package-size", "2MiB", "--json", *extra],
        env_for(case, tmp_path),
    )
    assert done.returncode == 0, done.stderr
    doc: dict[str, object] = json.loads(done.stdout)
    return doc


class Mounted:
    """A mount process, its output file, and how to stop it."""

    def __init__(self, process: MountProcess, output: Path) -> None:
        self.process = process
        self.output = output

    @property
    def point(self) -> Path:
        return self.process.mountpoint

    def stop(self) -> str:
        self.process.stop()
        return self.output.read_text()


def start_mount(
    case: StoreCase,
    tmp_path: Path,
    point: Path,
    *,
    cache: str = "cache",
    prefetch: bool = False,
    speedups: str = "1",
) -> Mounted:
    env = env_for(case, tmp_path, cache, speedups)
    output = tmp_path / f"mount-{point.name}-{len(list(tmp_path.glob('mount-*')))}.log"
    with output.open("wb") as out:
        argv = mount_argv(URI, point, store=case.url, prefetch=prefetch)
        process = _start_mount(argv, point, env=env, output=out, with_parent=True)
    return Mounted(process, output)


@pytest.fixture
def mounts() -> Iterator[list[Mounted]]:
    """Mounts a test started; any still running at the end are stopped."""
    started: list[Mounted] = []
    yield started
    for m in started:
        m.process.stop()


def downloaded(summary: str) -> tuple[int, int]:
    """(files fetched, bytes downloaded) from a mount's closing line."""
    match = SUMMARY.search(summary)
    assert match, summary
    return int(match.group(2).replace(",", "")), int(match.group(4).replace(",", ""))


def walk(root: Path) -> dict[str, int]:
    """Every file's size, by os.walk (names from readdir, sizes from stat)."""
    found = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = Path(directory, name)
            found[path.relative_to(root).as_posix()] = path.stat().st_size
    return found


def test_mounted_tree_is_the_published_tree(
    durable_store: StoreCase, tmp_path: Path, mounts: list[Mounted]
) -> None:
    files = pet_files()
    publish(durable_store, tmp_path, files)
    m = start_mount(durable_store, tmp_path, tmp_path / "mnt")
    mounts.append(m)
    assert mounted_fstype(m.point) == FSTYPE

    # The tree comes from the manifest alone: walking it fetches no file.
    assert walk(m.point) == {path: len(data) for path, data in files.items()}
    assert not any((tmp_path / "cache" / "objects").rglob("*/*"))
    info = (m.point / "cat" / "000.jpg").stat()
    assert stat.S_IMODE(info.st_mode) == 0o444 and stat.S_ISREG(info.st_mode)
    assert stat.S_IMODE((m.point / "deep" / "a").stat().st_mode) == 0o555
    assert info.st_mtime == (m.point / "README.txt").stat().st_mtime > 0

    assert read_tree(m.point) == files
    # Nothing changes through a mount.
    for change in (
        lambda: (m.point / "new.txt").write_bytes(b"x"),
        lambda: (m.point / "README.txt").write_bytes(b"x"),
        lambda: os.rename(m.point / "README.txt", m.point / "R.txt"),
        lambda: os.chmod(m.point / "README.txt", 0o644),
        lambda: os.unlink(m.point / "README.txt"),
        lambda: os.mkdir(m.point / "d"),
        lambda: os.open(m.point / "README.txt", os.O_RDWR),
        lambda: os.open(m.point / "README.txt", os.O_RDONLY | os.O_TRUNC),
    ):
        with pytest.raises(OSError, match="Read-only file system") as caught:
            change()
        assert caught.value.errno == errno.EROFS

    summary = m.stop()
    assert mounted_fstype(m.point) is None
    fetched, _ = downloaded(summary)
    assert fetched == len(files)
    # Later pulls reuse what the mount fetched.
    pulled = run_cli(
        ["pull", URI, str(tmp_path / "dest"), "--json"], env_for(durable_store, tmp_path)
    )
    assert pulled.returncode == 0, pulled.stderr
    assert json.loads(pulled.stdout)["bytes_downloaded"] == 0
    assert read_tree(tmp_path / "dest") == files


def test_cli_background_mount_and_unmount(tmp_path: Path) -> None:
    case = StoreCase("file", f"file://{tmp_path / 'store'}", {})
    files = pet_files(count=20)
    publish(case, tmp_path, files)
    env = env_for(case, tmp_path)
    point = tmp_path / "mnt"
    started = run_cli(["mount", URI, str(point), "--background"], env)
    try:
        assert started.returncode == 0, started.stderr
        assert f"mounted {URI} at {point}" in started.stdout
        assert read_tree(point) == files
        again = run_cli(["mount", URI, str(point), "--background"], env)
        assert_one_line_error(again, f"{point} is already a dspkg mount")
    finally:
        stopped = run_cli(["unmount", str(point)], env)
    assert stopped.returncode == 0, stopped.stderr
    assert mounted_fstype(point) is None
    assert_one_line_error(run_cli(["unmount", str(point)], env), f"nothing is mounted at {point}")


# DSPKG_SPEEDUPS=0: READs served in Python, ranges extracted in Python (the mount's
# compiled READ and extractor are what it turns off).
@pytest.mark.parametrize("speedups", ["1", "0"])
def test_corrupted_range_reads_eio_and_nothing_corrupt_is_cached(
    tmp_path: Path, mounts: list[Mounted], speedups: str
) -> None:
    case = StoreCase("file", f"file://{tmp_path / 'store'}", {})
    files = pet_files()
    publish(case, tmp_path, files, "--packages-only")
    victim = stored_record(case, "pets", "v1", "cat/010.jpg")
    package = tmp_path / "store" / victim["package_key"]
    data = bytearray(package.read_bytes())
    data[victim["offset"] + victim["size"] // 2] ^= 0xFF
    package.write_bytes(bytes(data))

    m = start_mount(case, tmp_path, tmp_path / "mnt", speedups=speedups)
    mounts.append(m)
    # Opening succeeds (the kernel opens without asking the mount); no byte of the file
    # comes back, neither its first nor one from its middle read first.
    fd = os.open(m.point / "cat/010.jpg", os.O_RDONLY)
    try:
        middle: int = victim["size"] // 2
        with pytest.raises(OSError, match="Input/output error") as caught:
            os.pread(fd, 1, middle)
        assert caught.value.errno == errno.EIO
        with pytest.raises(OSError, match="Input/output error") as caught:
            os.read(fd, 1)
        assert caught.value.errno == errno.EIO
    finally:
        os.close(fd)
    for path, content in files.items():
        if path == "cat/010.jpg":
            with pytest.raises(OSError, match="Input/output error") as caught:
                (m.point / path).read_bytes()
            assert caught.value.errno == errno.EIO
        else:
            assert (m.point / path).read_bytes() == content, path
    with pytest.raises(OSError, match="Input/output error"):
        (m.point / "cat/010.jpg").read_bytes()  # refused for good, not fetched again
    log = m.stop()
    refusals = [line for line in log.splitlines() if "cat/010.jpg" in line]
    assert len(refusals) == 1, log
    assert re.search(r"fails its CRC-32 check|does not match its sha256", refusals[0]), log
    assert not os.path.exists(
        tmp_path / "cache/objects" / victim["sha256"][:2] / victim["sha256"][2:]
    )
    verified = run_cli(["cache", "verify", "--json"], env_for(case, tmp_path))
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["objects"] == len(files) - 1


READ_ALL = """
import os, sys, hashlib
root = sys.argv[1]
out = []
for directory, dirs, names in os.walk(root):
    dirs.sort()
    for name in sorted(names):
        path = os.path.join(directory, name)
        with open(path, "rb") as f:
            out.append(os.path.relpath(path, root) + " " + hashlib.sha256(f.read()).hexdigest())
print("\\n".join(out))
"""


def test_readers_in_parallel_a_second_mount_and_a_pull_download_each_range_once(
    durable_store: StoreCase, tmp_path: Path, mounts: list[Mounted]
) -> None:
    files = pet_files(count=400)
    published = publish(durable_store, tmp_path, files)
    version = published["versions"][0]  # type: ignore[index]
    package_bytes = sum(p["size"] for p in version["packages"])
    head = asyncio.run(durable_store.open().head(manifest_key("pets", "v1")))
    assert head is not None
    manifest_bytes = head.size
    first = start_mount(durable_store, tmp_path, tmp_path / "one")
    second = start_mount(durable_store, tmp_path, tmp_path / "two")
    mounts.extend([first, second])
    script = tmp_path / "read_all.py"
    script.write_text(READ_ALL)
    readers = [
        subprocess.Popen([sys.executable, str(script), str(m.point)], stdout=subprocess.PIPE)
        for m in (first, first, first, first, second, second)
    ]
    pull = subprocess.Popen(
        [sys.executable, "-m", "dspkg.cli", "pull", URI, str(tmp_path / "dest"), "--json"],
        env=env_for(durable_store, tmp_path),
        stdout=subprocess.PIPE,
    )
    expected = sorted(f"{path} {hashlib.sha256(data).hexdigest()}" for path, data in files.items())
    for reader in readers:
        out, _ = reader.communicate(timeout=300)
        assert reader.returncode == 0
        assert sorted(out.decode().splitlines()) == expected
    pulled, _ = pull.communicate(timeout=300)
    assert pull.returncode == 0
    assert read_tree(tmp_path / "dest") == files
    total = json.loads(pulled)["bytes_downloaded"]
    for m in (first, second):
        total += downloaded(m.stop())[1]
    # Every package byte at most once, plus at most one manifest per process, plus what
    # the pull's ranges bridge: a gap of a few small files that a mount cached meanwhile
    # is cheaper to download again than to cut the range for (a few kilobytes here; a
    # range downloaded twice would be megabytes).
    bridged = package_bytes // 100
    assert total <= package_bytes + 3 * manifest_bytes + bridged, (total, package_bytes)


def test_sigkill_leaves_a_consistent_cache_and_a_mount_point_that_is_cleared(
    tmp_path: Path, mounts: list[Mounted]
) -> None:
    case = StoreCase("file", f"file://{tmp_path / 'store'}", {})
    files = pet_files()
    publish(case, tmp_path, files)
    env = env_for(case, tmp_path)
    point = tmp_path / "mnt"
    for clear_with in ("unmount", "next mount"):
        m = start_mount(case, tmp_path, point)
        assert (m.point / "cat/000.jpg").read_bytes() == files["cat/000.jpg"]
        m.process.proc.send_signal(signal.SIGKILL)
        m.process.proc.wait()
        with pytest.raises(OSError, match="not connected") as caught:
            os.listdir(point)
        assert caught.value.errno == errno.ENOTCONN
        verified = run_cli(["cache", "verify", "--json"], env)
        assert verified.returncode == 0, verified.stderr
        assert json.loads(verified.stdout)["bad"] == []
        if clear_with == "unmount":
            done = run_cli(["unmount", str(point)], env)
            assert done.returncode == 0, done.stderr
            assert os.listdir(point) == []
    m = start_mount(case, tmp_path, point)  # over the stale mount the kill left
    mounts.append(m)
    assert read_tree(point) == files
    # The kill left no pin behind: the version is not in use once this mount ends.
    m.stop()
    info = json.loads(run_cli(["cache", "info", "--json"], env).stdout)
    assert [v["pinned"] for v in info["versions"]] == [False]


def test_a_big_directory_lists_in_chunks_with_every_entry_and_its_attributes(
    tmp_path: Path, mounts: list[Mounted]
) -> None:
    # Listings come to the kernel in chunks (READDIRPLUS), each resumed at an offset:
    # thousands of names take several, and none may be lost, repeated or misdescribed.
    case = StoreCase("file", f"file://{tmp_path / 'store'}", {})
    files = {f"many/{i:05d}-{'x' * (i % 40)}.bin": bytes([i % 251]) * (i % 97) for i in range(3000)}
    files["many/sub/inner.txt"] = b"inner"
    publish(case, tmp_path, files)
    m = start_mount(case, tmp_path, tmp_path / "mnt")
    mounts.append(m)
    with os.scandir(m.point / "many") as listing:
        entries = {e.name: e for e in listing}
    names = {p.removeprefix("many/") for p in files if p.count("/") == 1} | {"sub"}
    assert sorted(entries) == sorted(names)
    assert sorted(os.listdir(m.point / "many")) == sorted(names)  # listed again, same
    for name, entry in entries.items():
        if name == "sub":
            assert entry.is_dir(follow_symlinks=False)
            assert stat.S_IMODE(entry.stat().st_mode) == 0o555
            continue
        info = entry.stat(follow_symlinks=False)
        assert entry.is_file(follow_symlinks=False)
        assert (info.st_size, stat.S_IMODE(info.st_mode)) == (len(files[f"many/{name}"]), 0o444)
    some = f"many/01234-{'x' * (1234 % 40)}.bin"
    assert (m.point / some).read_bytes() == files[some]
    assert (m.point / "many/sub/inner.txt").read_bytes() == b"inner"


@pytest.mark.parametrize("speedups", ["1", "0"])
def test_a_cached_object_changed_behind_dspkg_is_never_served(
    tmp_path: Path, mounts: list[Mounted], speedups: str
) -> None:
    case = StoreCase("file", f"file://{tmp_path / 'store'}", {})
    files = pet_files(count=20)
    publish(case, tmp_path, files)
    m = start_mount(case, tmp_path, tmp_path / "one", speedups=speedups)
    mounts.append(m)
    assert read_tree(m.point) == files  # every object is in the cache now
    m.stop()
    record = stored_record(case, "pets", "v1", "cat/003.jpg")
    obj = tmp_path / "cache/objects" / record["sha256"][:2] / record["sha256"][2:]
    before = obj.stat()
    obj.chmod(0o644)
    obj.write_bytes(b"X" * record["size"])  # same size, other bytes, the old mtime
    obj.chmod(0o444)
    os.utime(obj, ns=(before.st_atime_ns, before.st_mtime_ns - 5 * 10**9))

    # A new mount (the first one's pages are gone with it) checks the object it reads
    # on the descriptor it reads from: it was touched, so it is hashed, dropped and
    # fetched again.
    m = start_mount(case, tmp_path, tmp_path / "two", speedups=speedups)
    mounts.append(m)
    assert (m.point / "cat/003.jpg").read_bytes() == files["cat/003.jpg"]
    assert obj.read_bytes() == files["cat/003.jpg"]
    fetched, _ = downloaded(m.stop())
    assert fetched == 1


def test_without_fuse_one_line_says_what_to_do(tmp_path: Path) -> None:
    case = StoreCase("file", f"file://{tmp_path / 'store'}", {})
    publish(case, tmp_path, pet_files(count=4))
    env = {**env_for(case, tmp_path), "FUSE_LIBRARY_NAME": "no-such-fuse"}
    line = assert_one_line_error(
        run_cli(["mount", URI, str(tmp_path / "mnt")], env), "libfuse cannot be loaded"
    )
    assert "apt-get install fuse3" in line and "dspkg pull" in line


def store_in_shards(case: StoreCase, manifest: Manifest, per_shard: int) -> ManifestRoot:
    """Store ``manifest`` again as a root over shards of ``per_shard`` files (a version of
    many shards, small enough for a test); the root, as stored."""
    store = case.open()
    root, shards = encode_manifest(manifest, ShardLimits(per_shard, per_shard, 0))

    async def write() -> None:
        await Catalog(store).write_shards(shards)
        await store.put(manifest_key(manifest.dataset, manifest.version), encode_root(root))

    asyncio.run(write())
    return root


def test_a_version_of_many_shards_mounts_at_once_and_a_bad_shard_fails_what_needs_it(
    tmp_path: Path, mounts: list[Mounted]
) -> None:
    case = StoreCase("file", f"file://{tmp_path / 'store'}", {})
    files = pet_files()
    publish(case, tmp_path, files)
    manifest = asyncio.run(Catalog(case.open()).read_manifest(VersionUri.parse(URI)))
    root = store_in_shards(case, manifest, per_shard=30)
    assert len(root.shards) > 5
    m = start_mount(case, tmp_path, tmp_path / "whole")
    mounts.append(m)
    assert read_tree(m.point) == files  # every shard in, read across all of them
    m.stop()

    # One shard inside dog/ damaged in the store; a fresh cache reads it from there.
    bad = next(s for s in root.shards if s.first > "dog/010.jpg")
    assert bad.first.startswith("dog/") and bad.last.startswith("dog/")
    shard_file = tmp_path / "store" / bad.key
    data = bytearray(shard_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard_file.write_bytes(bytes(data))
    m = start_mount(case, tmp_path, tmp_path / "damaged", cache="fresh")
    mounts.append(m)  # it mounts: only the root is needed for that
    cats = sorted(p.removeprefix("cat/") for p in files if p.startswith("cat/"))
    assert sorted(os.listdir(m.point / "cat")) == cats  # its shards are good
    assert (m.point / "cat" / "000.jpg").stat().st_size == len(files["cat/000.jpg"])
    for needs_the_bad_shard in (m.point / "dog", m.point):
        with pytest.raises(OSError, match="Input/output error") as caught:
            os.listdir(needs_the_bad_shard)
        assert caught.value.errno == errno.EIO
    # Reading needs the whole manifest: refused, as a pull of this version is.
    with pytest.raises(OSError, match="Input/output error"):
        (m.point / "cat" / "000.jpg").read_bytes()
    log = m.stop()
    about_shard = [line for line in log.splitlines() if bad.key in line]
    assert len(about_shard) == 1, log
    assert "is not the shard its root lists" in about_shard[0]
    assert "read as EIO" in about_shard[0]
    assert not any((tmp_path / "fresh" / "objects").rglob("*/*"))


def test_a_name_that_is_a_file_and_a_folder_across_shards_is_never_listed(
    tmp_path: Path, mounts: list[Mounted]
) -> None:
    # Each shard alone is fine; together they make "a" a file and a folder.
    case = StoreCase("file", f"file://{tmp_path / 'store'}", {})
    entries = tuple(
        FileEntry(path, 1, hashlib.sha256(path.encode()).hexdigest()) for path in ("a", "a/b", "c")
    )
    store_in_shards(case, Manifest("pets", "v1", entries, created_at=NOW), per_shard=1)
    m = start_mount(case, tmp_path, tmp_path / "mnt")
    mounts.append(m)
    with pytest.raises(OSError, match="Input/output error"):
        os.listdir(m.point)
    with pytest.raises(OSError, match="Input/output error"):
        (m.point / "c").read_bytes()
    log = m.stop()
    assert "path 'a' is both a file and a directory" in log, log
