"""Link modes, the staging directory, and the cache's tamper check."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from dspkg.cache import Cache
from dspkg.errors import DestinationError, InvalidArgument
from dspkg.manifest import FileEntry
from dspkg.materialize import LinkMode, TreeBuilder, _reflink, plan_tree, prepare_destination
from dspkg.speedups import compiled_module as speedups_module
from tests.helpers import materialize


def cached_files(cache: Cache, files: dict[str, bytes]) -> list[FileEntry]:
    entries = []
    for path, data in sorted(files.items()):
        sha = hashlib.sha256(data).hexdigest()
        cache.write_object(sha, [data])
        entries.append(FileEntry(path, len(data), sha))
    return entries


FILES = {"a/b/c.txt": b"one", "a/d.txt": b"two", "e.txt": b"", "f/same.txt": b"one"}


def supports_reflink(root: Path) -> bool:
    (root / "probe-a").write_bytes(b"x")
    try:
        _reflink(str(root / "probe-a"), str(root / "probe-b"))
    except OSError:
        return False
    finally:
        for name in ("probe-a", "probe-b"):
            (root / name).unlink(missing_ok=True)
    return True


@pytest.mark.parametrize("mode", list(LinkMode))
def test_every_link_mode_gives_the_tree(tmp_path: Path, mode: LinkMode) -> None:
    with Cache(tmp_path / "cache") as cache:
        entries = cached_files(cache, FILES)
        dest = tmp_path / "dest"
        prepare_destination(dest)
        if mode is LinkMode.REFLINK and not supports_reflink(tmp_path):
            with pytest.raises(InvalidArgument, match="--link reflink does not work"):
                materialize(plan_tree(entries), cache, dest, mode)
            assert os.listdir(dest) == []
            return
        used = materialize(plan_tree(entries), cache, dest, mode)
    assert {
        p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()
    } == FILES
    assert sorted(os.listdir(dest)) == ["a", "e.txt", "f"]  # no staging left behind
    if mode is LinkMode.SYMLINK:
        assert (dest / "a/d.txt").is_symlink()
    if mode is LinkMode.HARDLINK:
        assert (dest / "a/d.txt").stat().st_nlink >= 2
    if mode is LinkMode.AUTO:
        assert used in (LinkMode.REFLINK, LinkMode.HARDLINK, LinkMode.COPY)


def test_cached_objects_are_read_only_and_change_is_detected(tmp_path: Path) -> None:
    with Cache(tmp_path / "cache") as cache:
        (entry,) = cached_files(cache, {"x": b"original"})
        path = Path(cache.object_path(entry.sha256))
        assert not path.stat().st_mode & 0o222
        assert cache.lookup(entry.sha256, entry.size)
        dest = tmp_path / "dest"
        prepare_destination(dest)
        materialize(plan_tree([entry]), cache, dest, LinkMode.HARDLINK)
        # User code writes through the hardlink (root ignores the read-only mode).
        os.chmod(dest / "x", 0o644)
        (dest / "x").write_bytes(b"tampered")
        assert not cache.lookup(entry.sha256, entry.size)
        assert not path.exists()


def test_destination_must_be_empty(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(DestinationError, match="not empty"):
        prepare_destination(tmp_path / "full")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DestinationError, match="not a directory"):
        prepare_destination(tmp_path / "file")
    leftover = tmp_path / "interrupted" / ".dspkg-staging-1234"
    leftover.mkdir(parents=True)
    prepare_destination(tmp_path / "interrupted")
    assert not leftover.exists()


def test_temp_dirs_of_dead_processes_are_swept(tmp_path: Path) -> None:
    import socket

    root = tmp_path / "cache"
    with Cache(root):
        pass
    dead = root / "tmp" / f"{socket.gethostname()}-999999999-dead"
    dead.mkdir()
    (dead / "1").write_bytes(b"partial")
    alive = root / "tmp" / f"{socket.gethostname()}-{os.getpid()}-live"
    alive.mkdir()
    foreign = root / "tmp" / "otherhost-123-abcd"
    foreign.mkdir()  # another machine's, recent: kept
    with Cache(root) as cache:
        assert not dead.exists()
        assert alive.exists() and foreign.exists()
        assert cache.tmp.exists()


@pytest.mark.parametrize("speedups", [True, False])
def test_warm_link_pass_links_intact_objects_and_reports_the_others(
    tmp_path: Path, speedups: bool
) -> None:
    """The warm pull's loop, compiled (``_speedups.link_cached``) and in Python: intact
    objects are linked and marked checked, missing ones reported, a changed one hashed
    (kept when its bytes still match, dropped when not), a target already linked kept."""
    if speedups and speedups_module() is None:
        pytest.skip("the compiled helpers are not built here")
    files = {f"d/{i}.bin": bytes([i]) * (100 + i) for i in range(6)}
    files["d/copy-of-0.bin"] = files["d/0.bin"]
    with Cache(tmp_path / "cache") as cache:
        entries = cached_files(cache, files)
        by_sha: dict[str, list[FileEntry]] = {}
        for f in entries:
            by_sha.setdefault(f.sha256, []).append(f)
        sha = {path: hashlib.sha256(data).hexdigest() for path, data in files.items()}
        cache.drop(sha["d/1.bin"])  # gone: to fetch
        os.chmod(cache.object_path(sha["d/2.bin"]), 0o644)  # touched, same bytes: kept
        changed = cache.object_path(sha["d/3.bin"])
        os.chmod(changed, 0o644)
        Path(changed).write_bytes(b"X" * len(files["d/3.bin"]))  # other bytes: dropped
        dest = tmp_path / "dest"
        prepare_destination(dest)
        builder = TreeBuilder(cache, dest, LinkMode.HARDLINK, speedups=speedups)
        builder.begin(plan_tree(entries))
        os.link(cache.object_path(sha["d/4.bin"]), f"{builder.staging}/d/4.bin")  # done before
        absent = builder.link_cached(list(by_sha.values()))
        builder.commit()
        assert sorted(absent) == sorted([sha["d/1.bin"], sha["d/3.bin"]])
        assert not os.path.exists(changed)
        linked = {p.relative_to(dest).as_posix(): p for p in dest.rglob("*") if p.is_file()}
        assert set(linked) == set(files) - {"d/1.bin", "d/3.bin"}
        for path, p in linked.items():
            assert p.read_bytes() == files[path]
            assert p.stat().st_ino == os.stat(cache.object_path(sha[path])).st_ino
            # Marked checked again after the links moved the ctime.
            assert 0 <= p.stat().st_ctime_ns - p.stat().st_mtime_ns <= 10**9


@pytest.mark.parametrize("speedups", [True, False])
def test_warm_link_pass_since_takes_only_newer_objects(tmp_path: Path, speedups: bool) -> None:
    if speedups and speedups_module() is None:
        pytest.skip("the compiled helpers are not built here")
    with Cache(tmp_path / "cache") as cache:
        old = cached_files(cache, {"old.bin": b"old"})
        os.utime(cache.object_path(old[0].sha256), (1_000_000, 1_000_000))  # written long ago
        new = cached_files(cache, {"new.bin": b"new"})
        dest = tmp_path / "dest"
        prepare_destination(dest)
        builder = TreeBuilder(cache, dest, LinkMode.HARDLINK, speedups=speedups)
        builder.begin(plan_tree(old + new))
        absent = builder.link_cached([old, new], since=2_000_000.0)
        builder.commit()
    assert absent == [old[0].sha256]
    assert sorted(os.listdir(dest)) == ["new.bin"]
