"""Nothing lost, nothing wrong (issue 17): races, names, links, small mistakes, each with a
real process, a real symlink or a real server."""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dspkg.layout import alias_key, package_index_key
from dspkg.metadata import read_outputs
from tests.helpers import (
    StoreCase,
    assert_one_line_error,
    package_keys,
    read_tree,
    run_cli,
    write_outputs,
)


def cli_env(case: StoreCase, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {**case.env, "DSPKG_STORE": case.url, "DSPKG_CACHE": str(tmp_path / "cache"), **extra}


def files_of(count: int, seed: int) -> dict[str, bytes]:
    rng = random.Random(seed)
    return {f"d{i % 7}/{i:05d}.bin": rng.randbytes(rng.randint(10, 3000)) for i in range(count)}


def spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "dspkg.cli", *args],
        env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# --- 1. a losing concurrent publish never harms the winner -------------------------------


@pytest.mark.slow
def test_racing_publishers_leave_one_whole_pullable_version(
    durable_store: StoreCase, tmp_path: Path
) -> None:
    env = cli_env(durable_store, tmp_path)
    uri = "dataset://race/x1"
    trees = {
        "a": files_of(1000, seed=1),
        "b": files_of(1000, seed=2),
    }
    for name, files in trees.items():
        write_outputs(tmp_path / name, files, [{"uri": uri, "packaging": True}])
    for round_ in range(3):
        version = f"dataset://race/r{round_}"
        for name in trees:
            text = (tmp_path / name / "valohai.metadata.jsonl").read_text()
            (tmp_path / name / "valohai.metadata.jsonl").write_text(
                text.replace(uri if round_ == 0 else f"dataset://race/r{round_ - 1}", version)
            )
        uri = version
        procs = [
            spawn(["publish", str(tmp_path / n), "--packages-only", "--json"], env) for n in trees
        ]
        results = []
        for p in procs:
            out, err = p.communicate(timeout=300)
            results.append((p.returncode, out, err))
        created = [
            json.loads(out)["versions"][0]["created"] for code, out, _ in results if code == 0
        ]
        # Exactly one created the version; the other failed naming it (or, had it finished
        # first with the same content, reported it unchanged: not possible here).
        assert created == [True], results
        loser = next(err for code, _, err in results if code != 0)
        assert "already exists" in loser or "another publisher" in loser, loser
        dest = tmp_path / f"pulled-{round_}"
        pulled = run_cli(["pull", version, str(dest)], env)
        assert pulled.returncode == 0, pulled.stderr
        assert read_tree(dest) in (trees["a"], trees["b"])
        # Every package the manifest names is there.
        name = version.rpartition("/")[2]
        store = durable_store.open()
        for key in package_keys(durable_store, "race", name):
            assert asyncio.run(store.head(key)) is not None


# --- 2. names that publish must be pullable ------------------------------------------------


@pytest.mark.parametrize("name", ["con", "NUL", "com7", "Lpt1", "trailing.", "v1."])
def test_names_a_pull_would_refuse_are_refused_before_upload(tmp_path: Path, name: str) -> None:
    store = tmp_path / "store"
    env = {"DSPKG_STORE": f"file://{store}", "DSPKG_CACHE": str(tmp_path / "cache")}
    for uri in (f"dataset://{name}/v1", f"dataset://ok/{name}"):
        write_outputs(tmp_path / "out", {"a.txt": b"a"}, [{"uri": uri, "packaging": True}])
        failed = run_cli(["publish", str(tmp_path / "out"), "--packaging"], env)
        assert_one_line_error(failed, repr(name), "device name")
        assert not any(p.is_file() for p in store.rglob("*"))  # nothing uploaded


def test_a_reused_package_must_have_a_key_a_pull_accepts(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    env = {"DSPKG_STORE": f"file://{store_dir}", "DSPKG_CACHE": str(tmp_path / "cache")}
    files = files_of(30, seed=3)
    write_outputs(tmp_path / "o1", files, [{"uri": "dataset://reuse/v1", "packaging": True}])
    first = run_cli(["publish", str(tmp_path / "o1"), "--packaging", "--json"], env)
    assert first.returncode == 0, first.stderr
    # Point the reuse index at a key no pull would read (a device name as a folder).
    (index,) = (store_dir / "packages" / ".index").glob("*.json")
    doc = json.loads(index.read_text())
    bad_key = doc["packages"][0]["key"].replace("/reuse/", "/con/")
    doc["packages"][0]["key"] = bad_key
    index.write_text(json.dumps(doc))
    write_outputs(tmp_path / "o2", files, [{"uri": "dataset://reuse/v2", "packaging": True}])
    second = run_cli(["publish", str(tmp_path / "o2"), "--packaging", "--json"], env)
    assert second.returncode == 0, second.stderr
    (package,) = json.loads(second.stdout)["versions"][0]["packages"]
    assert package["key"] != bad_key and package["uploaded"] is True
    assert run_cli(["pull", "dataset://reuse/v2", str(tmp_path / "dest")], env).returncode == 0
    assert read_tree(tmp_path / "dest") == files
    assert package_index_key("x").startswith("packages/.index/")


# --- 4. publish never follows a link out of DIR --------------------------------------------


def test_a_linked_directory_leading_outside_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "secret.txt").write_text("secret")
    out = write_outputs(tmp_path / "o", {"a.txt": b"a"}, ["dataset://d/v"])
    (out / "dirlink").symlink_to(elsewhere, target_is_directory=True)
    with (out / "valohai.metadata.jsonl").open("a") as f:
        f.write(json.dumps({"file": "dirlink/secret.txt", "metadata": {}}) + "\n")
    env = {"DSPKG_STORE": f"file://{tmp_path / 'store'}", "DSPKG_CACHE": str(tmp_path / "c")}
    failed = run_cli(["publish", str(out)], env)
    assert_one_line_error(failed, "'dirlink/secret.txt'", "leads outside", "line 2")
    assert not (tmp_path / "store" / "blobs").exists()


def test_a_sidecar_linked_from_outside_is_refused(tmp_path: Path) -> None:
    (tmp_path / "meta.json").write_text(json.dumps({"valohai.dataset-versions": ["dataset://d/v"]}))
    out = tmp_path / "o"
    out.mkdir()
    (out / "a.txt").write_text("a")
    (out / "a.txt.metadata.json").symlink_to(tmp_path / "meta.json")
    env = {"DSPKG_STORE": f"file://{tmp_path / 'store'}", "DSPKG_CACHE": str(tmp_path / "c")}
    assert_one_line_error(run_cli(["publish", str(out)], env), "a.txt.metadata.json", "outside")


def test_a_link_inside_dir_is_published_as_its_target(tmp_path: Path) -> None:
    out = write_outputs(tmp_path / "o", {"real/a.txt": b"inside"}, ["dataset://d/v"])
    (out / "alias").symlink_to(out / "real", target_is_directory=True)
    with (out / "valohai.metadata.jsonl").open("a") as f:
        line = {"file": "alias/a.txt", "metadata": {"valohai.dataset-versions": ["dataset://d/v"]}}
        f.write(json.dumps(line) + "\n")
    outputs = read_outputs(out)
    found = outputs.named.find("alias/a.txt")
    assert found is not None and found.path == str(out.resolve() / "real" / "a.txt")


# --- 5. dspkg run never deletes through a link ---------------------------------------------


@pytest.mark.parametrize("which", ["inputs", "outputs"])
def test_run_refuses_a_linked_inputs_or_outputs_directory(tmp_path: Path, which: str) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "valohai.yaml").write_text(
        "- step:\n    name: s\n    image: python\n    command: echo hi\n"
    )
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("mine")
    root = tmp_path / "root"
    root.mkdir()
    (root / which).symlink_to(precious, target_is_directory=True)
    env = {"DSPKG_STORE": f"file://{tmp_path / 'store'}", "DSPKG_CACHE": str(tmp_path / "c")}
    failed = run_cli(["run", "s", "--root", str(root)], env, cwd=project)
    assert_one_line_error(failed, f"{root / which} is a symbolic link")
    assert (precious / "keep.txt").read_text() == "mine"


# --- 6. the smaller ones -------------------------------------------------------------------


def test_sidecars_in_an_unreadable_directory_are_an_error(tmp_path: Path) -> None:
    out = write_outputs(tmp_path / "o", {"a.txt": b"a", "locked/b.txt": b"b"}, ["dataset://d/v"])
    (out / "locked" / "b.txt.metadata.json").write_text("{}")
    (out / "locked").chmod(0o311)  # can enter, cannot list
    argv = [sys.executable, "-m", "dspkg.cli", "publish", str(out)]
    if os.geteuid() == 0:
        # Root reads everything: drop the capabilities that let it (setpriv, util-linux).
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot make a directory unreadable")
        argv = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *argv]
    env = {"DSPKG_STORE": f"file://{tmp_path / 'store'}", "DSPKG_CACHE": str(tmp_path / "c")}
    done = subprocess.run(
        argv, capture_output=True, text=True, env={**os.environ, **env}, check=False
    )
    assert_one_line_error(done, f"{out / 'locked'}: cannot be listed")
    assert not (tmp_path / "store" / "datasets").exists()


def test_line_separators_inside_json_strings_keep_lines_and_numbers(tmp_path: Path) -> None:
    out = write_outputs(tmp_path / "o", {"a.txt": b"a", "b.txt": b"b"}, None)
    tricky = {"note": "one\u2028two\u2029three\x85four"}
    lines = [
        json.dumps(
            {
                "file": "a.txt",
                "metadata": {**tricky, "valohai.dataset-versions": ["dataset://d/v"]},
            },
            ensure_ascii=False,
        ),
        json.dumps({"file": "b.txt", "metadata": {"valohai.dataset-versions": 7}}),
    ]
    (out / "valohai.metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    env = {"DSPKG_STORE": f"file://{tmp_path / 'store'}", "DSPKG_CACHE": str(tmp_path / "c")}
    # The second record is bad: the error must name line 2, not a line split inside line 1.
    assert_one_line_error(run_cli(["publish", str(out)], env), "line 2", "must be a list")


def test_a_symlink_loop_named_as_a_file_is_one_line(tmp_path: Path) -> None:
    out = write_outputs(tmp_path / "o", {"a.txt": b"a"}, ["dataset://d/v"])
    (out / "loop1").symlink_to(out / "loop2")
    (out / "loop2").symlink_to(out / "loop1")
    with (out / "valohai.metadata.jsonl").open("a") as f:
        f.write(json.dumps({"file": "loop1", "metadata": {}}) + "\n")
    env = {"DSPKG_STORE": f"file://{tmp_path / 'store'}", "DSPKG_CACHE": str(tmp_path / "c")}
    line = assert_one_line_error(run_cli(["publish", str(out)], env), "'loop1'", "loop")
    assert "internal error" not in line


@pytest.fixture
def published(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {"DSPKG_STORE": f"file://{tmp_path / 'store'}", "DSPKG_CACHE": str(tmp_path / "cache")}
    write_outputs(
        tmp_path / "o", files_of(200, seed=9), [{"uri": "dataset://p/v", "packaging": True}]
    )
    assert run_cli(["publish", str(tmp_path / "o"), "--packaging"], env).returncode == 0
    yield env


def test_a_destination_inside_the_cache_is_refused(
    tmp_path: Path, published: dict[str, str]
) -> None:
    dest = tmp_path / "cache" / "mine"
    failed = run_cli(["pull", "dataset://p/v", str(dest)], published)
    assert_one_line_error(failed, "inside the cache directory")
    assert not dest.exists()
    assert run_cli(["cache", "verify"], published).returncode == 0


def test_two_pulls_into_one_destination(tmp_path: Path, published: dict[str, str]) -> None:
    dest = tmp_path / "dest"
    procs = [spawn(["pull", "dataset://p/v", str(dest)], published) for _ in range(2)]
    results = []
    for p in procs:
        _, err = p.communicate(timeout=120)
        results.append((p.returncode, err))
    codes = sorted(code for code, _ in results)
    assert codes[0] == 0, results
    if codes[1] != 0:  # they overlapped: the loser says why, and does not blame the cache
        loser = next(err for code, err in results if code != 0)
        assert loser.startswith("dspkg: error:") and loser.count("\n") == 1, loser
        assert "another dspkg pull" in loser or "not empty" in loser, loser
        assert "cache" not in loser.replace("dspkg pull", ""), loser
    assert read_tree(dest) == files_of(200, seed=9)


def test_package_size_zero_is_refused(tmp_path: Path) -> None:
    out = write_outputs(tmp_path / "o", {"a": b"a"}, ["dataset://d/v"])
    env = {"DSPKG_STORE": f"file://{tmp_path / 'store'}", "DSPKG_CACHE": str(tmp_path / "c")}
    for size in ("0", "100"):
        failed = run_cli(["publish", str(out), "--packaging", "--package-size", size], env)
        assert_one_line_error(failed, f"package size '{size}' is too small")


def test_ls_of_something_not_a_dataset_uri_fails(tmp_path: Path, published: dict[str, str]) -> None:
    assert_one_line_error(run_cli(["ls", "notauri"], published), "dataset://")
    assert_one_line_error(
        run_cli(["ls", "dataset://nope"], published), "no versions", "datasets: p"
    )
    listed = run_cli(["ls", "dataset://p"], published)
    assert listed.returncode == 0 and "dataset://p/v" in listed.stdout


def test_a_missing_bucket_is_named_at_once(tmp_path: Path, s3_server: object) -> None:
    from tests.helpers import S3Server

    assert isinstance(s3_server, S3Server)
    env = {**s3_server.env(), "DSPKG_CACHE": str(tmp_path / "c")}
    out = write_outputs(tmp_path / "o", {"a": b"a"}, ["dataset://d/v"])
    started = time.monotonic()
    for args in (
        ["ls", "--store", "s3://no-such-bucket/x"],
        ["pull", "dataset://d/v", str(tmp_path / "dest"), "--store", "s3://no-such-bucket/x"],
        ["publish", str(out), "--store", "s3://no-such-bucket/x"],
    ):
        line = assert_one_line_error(run_cli(args, env), "does not exist")
        assert "times" not in line  # no retries, not blamed on the network
    # Each gave up at once instead of backing off six times (a bound far above one try).
    assert time.monotonic() - started < 60


# --- 8. what the tests said more than they checked -----------------------------------------


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
    }


def test_dry_run_touches_nothing_not_even_the_cache(
    tmp_path: Path, published: dict[str, str]
) -> None:
    dest = tmp_path / "dest"
    cache = tmp_path / "cache"
    assert not cache.exists()  # publishing uses no cache
    dry = run_cli(["pull", "dataset://p/v", str(dest), "--dry-run", "--json"], published)
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["plan"]["files_to_fetch"] == 200
    assert not cache.exists() and not dest.exists()
    # With a warm cache: still nothing changes in it.
    assert run_cli(["pull", "dataset://p/v", str(tmp_path / "first")], published).returncode == 0
    before = snapshot(cache)
    dry = run_cli(["pull", "dataset://p/v", str(dest), "--dry-run", "--json"], published)
    assert json.loads(dry.stdout)["plan"]["files_to_fetch"] == 0
    assert snapshot(cache) == before and not dest.exists()


def test_aliases_carry_a_schema_version(tmp_path: Path, published: dict[str, str]) -> None:
    doc = json.loads((tmp_path / "store" / alias_key("p", "latest")).read_text())
    assert doc["schema_version"] == 1 and doc["version"] == "v"


def test_prune_that_cannot_reach_its_limit_says_so(
    tmp_path: Path, published: dict[str, str]
) -> None:
    assert run_cli(["pull", "dataset://p/v", str(tmp_path / "d")], published).returncode == 0
    # A running pull pins the version: hold a pin the way a pull does, in another process.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from dspkg.cache import Cache\n"
            "from dspkg.names import VersionUri\n"
            "with Cache(Path(sys.argv[1])) as c, c.pin(sys.argv[2], VersionUri('p', 'v')):\n"
            "    print('pinned', flush=True); time.sleep(60)\n",
            str(tmp_path / "cache"),
            published["DSPKG_STORE"],
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    info = json.loads(run_cli(["cache", "info", "--json"], published).stdout)
    limit = str(info["disk_bytes"] - 100_000)  # reachable only by evicting the version
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "pinned"
        pruned = run_cli(["cache", "prune", "--max-size", limit], published)
        assert_one_line_error(pruned, "above the limit of", "1 version(s) in use")
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout:
            holder.stdout.close()
    pruned = run_cli(["cache", "prune", "--max-size", limit, "--json"], published)
    assert pruned.returncode == 0, pruned.stderr
    assert json.loads(pruned.stdout)["limit_reached"] is True
