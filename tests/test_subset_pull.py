"""Subset and shard pulls against S3 (moto on loopback), as a user runs them.

Requests are counted twice: by dspkg (``--json``) and by the server, from moto's log of
every request it answered, so a test can assert that nothing was fetched, and how many
ranged GETs a pull made.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import dspkg
from dspkg.bench.servers import LocalServer, start_moto
from dspkg.errors import SelectionError
from tests.helpers import (
    BUCKET,
    S3_CREDENTIALS,
    S3_ENV,
    assert_one_line_error,
    read_tree,
    run_cli,
    write_outputs,
)

# werkzeug's access line, the request wrapped in colour codes even when logging to a file.
_REQUEST = re.compile(rb'"(?:\x1b\[[0-9;]*m)*([A-Z]+) (\S+) HTTP/\d\.\d')
FOLDERS = 10
FILES_PER_FOLDER = 40
PACKAGE_SIZE = 1_000_000


class ServerLog:
    """The requests moto logged since the last :meth:`take`, once its log is quiet."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def take(self) -> list[tuple[str, str]]:
        data = b""
        quiet = 0
        while quiet < 5:  # moto logs a request after answering it: wait for the last lines
            with self.path.open("rb") as f:
                f.seek(self.offset)
                chunk = f.read()
            self.offset += len(chunk)
            data += chunk
            quiet = 0 if chunk else quiet + 1
            time.sleep(0.05)
        return [(m[1].decode(), m[2].decode()) for m in _REQUEST.finditer(data)]


@dataclass(frozen=True)
class Lab:
    env: dict[str, str]
    log: ServerLog
    uri: str
    files: dict[str, bytes]
    packages: int

    @property
    def total(self) -> int:
        return sum(len(b) for b in self.files.values())


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """moto with its request log, and one packaged version of 10 folders x 40 files."""
    work = tmp_path_factory.mktemp("subset")
    with (
        start_moto(BUCKET, S3_CREDENTIALS, log=work / "moto.log") as server,
        pytest.MonkeyPatch.context() as process,
    ):
        for key, value in S3_ENV.items():  # obstore reads credentials from the process
            process.setenv(key, value)
        yield _publish(work, server)


def _publish(work: Path, server: LocalServer) -> Lab:
    env = server.env()
    env["DSPKG_STORE"] = f"s3://{BUCKET}/{uuid.uuid4().hex}"
    rng = random.Random(11)
    files = {
        f"f{d}/{i:03d}.bin": rng.randbytes(rng.randrange(15_000, 35_000))
        for d in range(FOLDERS)
        for i in range(FILES_PER_FOLDER)
    }
    outputs = write_outputs(work / "out", files, [{"uri": "dataset://imgs/v1"}])
    published = run_cli(
        ["publish", str(outputs), "--packaging", "--package-size", str(PACKAGE_SIZE), "--json"],
        {**env, "DSPKG_CACHE": str(work / "publish-cache")},
    )
    assert published.returncode == 0, published.stderr
    packages = len(json.loads(published.stdout)["versions"][0]["packages"])
    assert packages >= 8
    log = ServerLog(work / "moto.log")
    log.take()
    return Lab(env, log, "dataset://imgs/v1", files, packages)


def pull(lab: Lab, dest: Path, cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(
        ["pull", lab.uri, str(dest), "--json", *args], {**lab.env, "DSPKG_CACHE": str(cache)}
    )


def pulled(lab: Lab, dest: Path, cache: Path, *args: str) -> dict[str, Any]:
    """A pull's --json, checked against what the server saw; adds the server's requests."""
    result = pull(lab, dest, cache, *args)
    assert result.returncode == 0, result.stderr
    doc: dict[str, Any] = json.loads(result.stdout)
    seen = lab.log.take()
    assert doc["requests"] == len(seen), seen  # dspkg counts what the server answered
    doc["seen"] = seen
    return doc


def package_gets(doc: dict[str, Any]) -> int:
    return sum(1 for method, path in doc["seen"] if method == "GET" and ".vhpkgzip" in path)


def test_a_folder_of_ten_downloads_at_most_twelve_percent(lab: Lab, tmp_path: Path) -> None:
    doc = pulled(lab, tmp_path / "dest", tmp_path / "cache", "--include", "f3/**")
    wanted = {p: b for p, b in lab.files.items() if p.startswith("f3/")}
    assert read_tree(tmp_path / "dest") == wanted  # exactly the folder, nothing else
    assert doc["selected_files"] == FILES_PER_FOLDER == doc["files_fetched"]
    assert doc["selected_bytes"] == sum(len(b) for b in wanted.values())
    assert doc["files"] == len(lab.files) and doc["bytes"] == lab.total
    assert doc["bytes_downloaded"] <= 0.12 * lab.total, (doc["bytes_downloaded"], lab.total)


def test_subset_then_full_pull_downloads_only_the_rest(lab: Lab, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    listed = tmp_path / "list.txt"
    subset = sorted(p for p in lab.files if p.startswith(("f2/", "f7/")))
    listed.write_text("# two folders\n" + "\n".join(f"./{p}" for p in subset) + "\n")
    first = pulled(lab, tmp_path / "a", cache, "--files-from", str(listed))
    assert sorted(read_tree(tmp_path / "a")) == subset
    subset_bytes = sum(len(lab.files[p]) for p in subset)

    second = pulled(lab, tmp_path / "b", cache)
    assert read_tree(tmp_path / "b") == lab.files
    assert second["files_from_cache"] == len(subset)
    assert second["files_fetched"] == len(lab.files) - len(subset)
    assert not any("/versions/" in path for _, path in second["seen"])  # manifest cached

    cold = pulled(lab, tmp_path / "c", tmp_path / "cold-cache")
    assert cold["files_fetched"] == len(lab.files)
    # The second pull skipped the subset's bytes: together the two took about one cold pull.
    assert second["bytes_downloaded"] <= cold["bytes_downloaded"] - 0.9 * subset_bytes
    assert first["bytes_downloaded"] + second["bytes_downloaded"] <= 1.02 * cold["bytes_downloaded"]

    info = dspkg.cache_info(env={"DSPKG_CACHE": str(cache)})
    assert [(v.files, v.partial) for v in info.versions] == [(len(lab.files), False)]


def test_four_shards_are_balanced_read_few_ranges_and_make_the_version(
    lab: Lab, tmp_path: Path
) -> None:
    trees: list[dict[str, bytes]] = []
    for rank in range(4):  # each rank on its own machine: its own cache
        dest = tmp_path / f"rank{rank}"
        doc = pulled(lab, dest, tmp_path / f"cache{rank}", "--shard", f"{rank}/4")
        assert abs(doc["selected_bytes"] - lab.total / 4) <= 0.05 * lab.total / 4
        assert package_gets(doc) <= lab.packages + 2, doc["seen"]
        trees.append(read_tree(dest))
    union: dict[str, bytes] = {}
    for tree in trees:
        assert not set(tree) & set(union)  # no file twice
        union.update(tree)
    full = tmp_path / "full"
    pulled(lab, full, tmp_path / "full-cache")
    assert union == read_tree(full) == lab.files

    # torchrun's variables name the same shard.
    environment = {**lab.env, "DSPKG_CACHE": str(tmp_path / "cache1")}
    auto = dspkg.select(lab.uri, shard="auto", env={**environment, "RANK": "1", "WORLD_SIZE": "4"})
    assert sorted(auto.paths) == sorted(trees[1])


def test_shards_of_a_selection(lab: Lab, tmp_path: Path) -> None:
    env = {**lab.env, "DSPKG_CACHE": str(tmp_path / "cache")}
    parts = [
        dspkg.select(lab.uri, include="f[0-4]/", exclude="*7.bin", shard=(r, 3), env=env)
        for r in range(3)
    ]
    chosen = [p for part in parts for p in part.paths]
    expected = sorted(p for p in lab.files if p[1] in "01234" and not p.endswith("7.bin"))
    assert chosen == expected
    lab.log.take()


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["--shard", "4/4"], {}, "--shard 4/4: RANK must be from 0 to WORLD-1"),
        (["--shard=-1/3"], {}, "--shard -1/3: RANK must be"),
        (["--shard", "1/0"], {}, "--shard 1/0: WORLD must be at least 1"),
        (["--shard", "auto"], {}, "--shard auto needs RANK and WORLD_SIZE"),
        (["--shard", "auto"], {"RANK": "1", "WORLD_SIZE": "x"}, "WORLD_SIZE='x'"),
        (["--include", "f1/[ab"], {}, "--include 'f1/[ab': '[' at position 4 is never closed"),
        (["--exclude", "!x"], {}, "--exclude '!x'"),
        (["--files-from", "/nonexistent/list.txt"], {}, "cannot read the list"),
    ],
)
def test_bad_usage_is_one_line_exit_2_and_fetches_nothing(
    lab: Lab, tmp_path: Path, args: list[str], env: dict[str, str], needle: str
) -> None:
    result = run_cli(
        ["pull", lab.uri, str(tmp_path / "dest"), *args],
        {**lab.env, "DSPKG_CACHE": str(tmp_path / "cache"), **env},
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("dspkg: error: ") and needle in result.stderr
    assert lab.log.take() == []  # the store saw no request at all
    assert not (tmp_path / "dest").exists()


def test_selections_that_match_nothing_are_named(lab: Lab, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    missing = pull(lab, tmp_path / "d", cache, "--include", "f1/**", "--include", "g*/")
    assert_one_line_error(missing, "--include 'g*/' matches no file of dataset://imgs/v1")
    listed = tmp_path / "list.txt"
    listed.write_text("f1/000.bin\nf1/999.bin\nzz.bin\n")
    gone = pull(lab, tmp_path / "d", cache, "--files-from", str(listed))
    assert_one_line_error(gone, "2 path(s) of --files-from", "'f1/999.bin', 'zz.bin'")
    assert not (tmp_path / "d").exists()
    # Only the manifest was read (its root and its one shard, once: then they are cached).
    assert [m for m, _ in lab.log.take()] == ["GET", "GET"]

    allowed = pulled(lab, tmp_path / "d", cache, "--files-from", str(listed), "--allow-empty")
    assert sorted(read_tree(tmp_path / "d")) == ["f1/000.bin"]
    assert allowed["selected_files"] == 1

    with pytest.raises(SelectionError, match="'nothing/' matches no file"):
        dspkg.select(lab.uri, include=["nothing/"], env={**lab.env, "DSPKG_CACHE": str(cache)})


def test_dry_run_shows_the_selection(lab: Lab, tmp_path: Path) -> None:
    args = ["pull", lab.uri, str(tmp_path / "dest"), "--dry-run", "--include", "f5/"]
    env = {**lab.env, "DSPKG_CACHE": str(tmp_path / "cache")}
    human = run_cli(args, env)
    assert human.returncode == 0, human.stderr
    wanted = [p for p in lab.files if p.startswith("f5/")]
    assert f"selected {len(wanted)} of {len(lab.files)} files of {lab.uri}" in human.stdout
    doc = json.loads(run_cli([*args, "--json"], env).stdout)
    assert doc["selected_files"] == doc["plan"]["files_to_fetch"] == len(wanted)
    assert 1 <= doc["plan"]["requests"] <= 3
    assert not (tmp_path / "dest").exists()
    lab.log.take()


# --- what the cache records of a subset (a local store: no server needed) ---------------


def _record(cache: Path) -> dict[str, Any]:
    (path,) = cache.glob("versions/*/pets/v1.json")
    doc: dict[str, Any] = json.loads(path.read_bytes())
    doc["marker"] = path.with_suffix(".partial").exists()
    return doc


def test_the_cache_records_only_what_a_subset_linked(tmp_path: Path) -> None:
    files = {f"{d}/{i}.bin": f"{d}{i}".encode() * 100 for d in "abc" for i in range(5)}
    sha = {p: hashlib.sha256(b).hexdigest() for p, b in files.items()}
    write_outputs(tmp_path / "out", files, [{"uri": "dataset://pets/v1"}])
    cache = tmp_path / "cache"
    env = {"DSPKG_STORE": f"file://{tmp_path / 'store'}", "DSPKG_CACHE": str(cache)}
    dspkg.publish(tmp_path / "out", packaging=True, env=env)

    def objects(*folders: str) -> list[str]:
        return sorted({sha[p] for p in files if p[0] in folders})

    dspkg.pull("dataset://pets/v1", tmp_path / "a", include="a/", env=env)
    record = _record(cache)
    assert record["objects"] == objects("a") and record["partial"] and record["marker"]
    assert record["files"] == 5 and record["bytes"] == sum(
        len(files[f"a/{i}.bin"]) for i in range(5)
    )
    (use,) = dspkg.cache_info(env=env).versions
    assert use.partial and use.files == 5

    # A second subset adds what it linked.
    dspkg.pull("dataset://pets/v1", tmp_path / "b", include="b/*", env=env)
    assert _record(cache)["objects"] == objects("a", "b")
    assert _record(cache)["files"] == 10

    # A whole pull makes it a whole record, which later subsets only touch.
    dspkg.pull("dataset://pets/v1", tmp_path / "all", env=env)
    record = _record(cache)
    assert sorted(record["objects"]) == objects("a", "b", "c") and record["files"] == 15
    assert "partial" not in record and not record["marker"]
    dspkg.pull("dataset://pets/v1", tmp_path / "c", shard=(1, 3), env=env)
    assert _record(cache)["files"] == 15

    # Subsets that add up to the version make a whole record too.
    dspkg.cache_clear(env=env)
    for rank in range(3):
        dspkg.pull("dataset://pets/v1", tmp_path / f"r{rank}", shard=(rank, 3), env=env)
    record = _record(cache)
    assert record["files"] == 15 and "partial" not in record and not record["marker"]

    # Eviction frees what a subset brought.
    dspkg.cache_clear(env=env)
    dspkg.pull("dataset://pets/v1", tmp_path / "again", include="c/", env=env)
    pruned = dspkg.cache_prune(0, env=env)
    assert pruned.evicted == ["dataset://pets/v1"] and pruned.objects_removed == 5
