"""A version from any directory (``dspkg publish DIR --to URI``): no metadata, with and
without a parent, versions with no new files, name clashes, globs and links."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from dspkg import api
from dspkg.errors import AlreadyExists, InvalidArgument, InvalidMetadata
from dspkg.layout import alias_key
from tests.helpers import (
    StoreCase,
    assert_one_line_error,
    assert_usage_error,
    read_tree,
    run_cli,
)

URI = "dataset://plain/v1"


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    root.mkdir(parents=True, exist_ok=True)
    return root


def version_files(uri: str, store: str, env: dict[str, str]) -> dict[str, tuple[int, str]]:
    manifest = api.show(uri, store=store, env=env).manifest
    return {f.path: (f.size, f.sha256) for f in manifest.files}


def store_keys(case: StoreCase) -> list[str]:
    return sorted(i.key for i in asyncio.run(case.open().list("")))


def test_every_file_of_a_plain_directory_with_and_without_from(
    durable_store: StoreCase, tmp_path: Path, env: dict[str, str]
) -> None:
    full_env = {**env, **durable_store.env}
    first = {f"img/{i:02d}.jpg": os.urandom(100 + i) for i in range(20)}
    first |= {"labels.csv": b"a,b\n", "deep/er/still/x.bin": b"x", "empty": b""}
    # Metadata files in DIR are plain files to --to: published, not read.
    first["valohai.metadata.jsonl"] = b'{"file": "labels.csv", "metadata": {}}\n'
    write_tree(tmp_path / "one", first)
    result = api.publish(tmp_path / "one", store=durable_store.url, to=URI, env=full_env)
    (made,) = result.versions
    assert (made.uri, made.files, made.created, made.parent) == (URI, len(first), True, None)
    assert made.aliases == ("latest",)
    api.pull(URI, tmp_path / "got1", store=durable_store.url, env=full_env)
    assert read_tree(tmp_path / "got1") == first

    # v2 from v1: new files join, a changed one replaces the parent's, globs exclude.
    second = {"img/00.jpg": b"replaced", "new/a.txt": b"new", "tmp/scratch": b"junk"}
    write_tree(tmp_path / "two", second)
    result = api.publish(
        tmp_path / "two",
        store=durable_store.url,
        to="dataset://plain/v2",
        from_="dataset://plain/latest",  # an alias: resolved, and recorded as the version
        exclude=["img/1*.jpg", "tmp/", "valohai.metadata.jsonl"],
        aliases=["candidate"],
        env=full_env,
    )
    (made,) = result.versions
    assert made.parent == URI
    assert made.aliases == ("latest", "candidate")
    expected = {k: v for k, v in first.items() if not k.startswith("img/1")}
    del expected["valohai.metadata.jsonl"]
    expected |= {"img/00.jpg": b"replaced", "new/a.txt": b"new"}
    api.pull("dataset://plain/candidate", tmp_path / "got2", store=durable_store.url, env=full_env)
    assert read_tree(tmp_path / "got2") == expected
    # Only the two new files were read from DIR.
    assert (result.files, result.bytes) == (2, len(b"replaced") + len(b"new"))


def test_a_version_with_no_new_files(
    durable_store: StoreCase, tmp_path: Path, env: dict[str, str]
) -> None:
    full_env = {**env, **durable_store.env}
    files = {f"d/{i}.txt": f"file {i}".encode() for i in range(10)} | {"keep.me": b"k"}
    write_tree(tmp_path / "src", files)
    api.publish(tmp_path / "src", store=durable_store.url, to=URI, env=full_env)
    blobs_before = [k for k in store_keys(durable_store) if k.startswith("blobs/")]
    empty = tmp_path / "empty"
    empty.mkdir()
    # --from with --exclude only: the parent minus some files, nothing uploaded but records.
    made = run_cli(
        [
            *("publish", str(empty), "--store", durable_store.url, "--to", "dataset://plain/v2"),
            *("--from", URI, "--exclude", "d/**", "--json"),
        ],
        full_env,
    )
    assert made.returncode == 0, made.stderr
    assert version_files("dataset://plain/v2", durable_store.url, full_env) == {
        "keep.me": (1, version_files(URI, durable_store.url, full_env)["keep.me"][1])
    }
    assert [k for k in store_keys(durable_store) if k.startswith("blobs/")] == blobs_before
    # --from alone: the same files under a new name.
    api.publish(empty, store=durable_store.url, to="dataset://plain/v3", from_=URI, env=full_env)
    assert version_files("dataset://plain/v3", durable_store.url, full_env) == version_files(
        URI, durable_store.url, full_env
    )
    # Only a new alias on the same files: the version is unchanged, the alias moves to it.
    again = api.publish(
        tmp_path / "src", store=durable_store.url, to=URI, aliases=["gold"], env=full_env
    )
    assert (again.versions[0].created, again.versions[0].aliases) == (False, ("gold",))
    alias = asyncio.run(durable_store.open().get(alias_key("plain", "gold")))
    assert b'"version": "v1"' in alias
    api.pull("dataset://plain/gold", tmp_path / "got", store=durable_store.url, env=full_env)
    assert read_tree(tmp_path / "got") == files


def test_a_name_clash_is_a_no_op_when_identical_and_an_error_otherwise(
    tmp_path: Path, env: dict[str, str]
) -> None:
    store = f"file://{tmp_path / 'store'}"
    files = {"a.txt": b"a", "b/c.txt": b"c"}
    write_tree(tmp_path / "src", files)
    api.publish(tmp_path / "src", store=store, to=URI, env=env)
    same = run_cli(["publish", str(tmp_path / "src"), "--store", store, "--to", URI], env)
    assert same.returncode == 0, same.stderr
    assert f"{URI} already exists with the same content; nothing to do" in same.stdout
    assert f"unchanged {URI}: 2 files" in same.stdout
    (tmp_path / "src" / "a.txt").write_bytes(b"A")
    clash = run_cli(["publish", str(tmp_path / "src"), "--store", store, "--to", URI], env)
    assert_one_line_error(clash, URI, "already exists with different content")
    with pytest.raises(AlreadyExists, match="plain/v1 already exists with different content"):
        api.publish(tmp_path / "src", store=store, to=URI, env=env)
    # The version is as it was.
    api.pull(URI, tmp_path / "got", store=store, env=env)
    assert read_tree(tmp_path / "got") == files


def test_include_globs_pick_files_of_dir(tmp_path: Path, env: dict[str, str]) -> None:
    store = f"file://{tmp_path / 'store'}"
    files = {"a/1.jpg": b"1", "a/2.png": b"2", "b/c/3.jpg": b"3", "notes.txt": b"n", "x.jpg": b"x"}
    write_tree(tmp_path / "src", files)
    api.publish(
        tmp_path / "src",
        store=store,
        to=URI,
        include=["*.jpg", "/notes.txt"],
        exclude=["b/"],
        env=env,
    )
    assert sorted(version_files(URI, store, env)) == ["a/1.jpg", "notes.txt", "x.jpg"]
    with pytest.raises(InvalidMetadata, match=r"--include '\*\.gif' matches no file"):
        api.publish(tmp_path / "src", store=store, to="dataset://plain/v2", include=["*.gif"])


def test_links_inside_dir_are_published_links_out_are_refused(
    tmp_path: Path, env: dict[str, str]
) -> None:
    store = f"file://{tmp_path / 'store'}"
    root = write_tree(tmp_path / "src", {"data/a.txt": b"a", "data/sub/b.txt": b"b"})
    (root / "alias.txt").symlink_to("data/a.txt")
    (root / "linked").symlink_to("data/sub", target_is_directory=True)
    api.publish(root, store=store, to=URI, env=env)
    api.pull(URI, tmp_path / "got", store=store, env=env)
    assert read_tree(tmp_path / "got") == {
        "alias.txt": b"a",
        "data/a.txt": b"a",
        "data/sub/b.txt": b"b",
        "linked/b.txt": b"b",
    }
    outside = write_tree(tmp_path / "outside", {"secret": b"s"})
    (root / "escape").symlink_to(outside, target_is_directory=True)
    refused = run_cli(["publish", str(root), "--store", store, "--to", "dataset://plain/v2"], env)
    assert_one_line_error(refused, "'escape' leads outside", "through a link")
    # Left out by --exclude, a link is never followed.
    api.publish(root, store=store, to="dataset://plain/v2", exclude=["escape"], env=env)
    (root / "escape").unlink()
    (root / "data" / "up").symlink_to("..", target_is_directory=True)
    loop = run_cli(["publish", str(root), "--store", store, "--to", "dataset://plain/v3"], env)
    assert_one_line_error(loop, "'data/up' links back to a folder above it")
    (root / "data" / "up").unlink()
    (root / "dangling").symlink_to("nowhere")
    gone = run_cli(["publish", str(root), "--store", store, "--to", "dataset://plain/v3"], env)
    assert_one_line_error(gone, "'dangling' does not exist")
    # Nothing of the refused attempts became a version.
    assert [v.version for v in api.versions("plain", store=store, env=env)] == ["v1", "v2"]


def test_usage_errors(tmp_path: Path, env: dict[str, str]) -> None:
    store = f"file://{tmp_path / 'store'}"
    root = write_tree(tmp_path / "src", {"a": b"a"})
    base = ["publish", str(root), "--store", store]
    for args, needle in (
        (["--from", URI], "--from: only with --to"),
        (["--exclude", "x", "--alias", "y"], "--exclude, --alias: only with --to"),
        (["--to", "dataset://plain"], "expected dataset://<dataset>/<version>"),
        (["--to", URI, "--include", "[a"], "'[' at position 1 is never closed"),
        (["--to", URI, "--exclude", "/"], "matches every file"),
        (["--to", "dataset://plain/latest"], "'latest' is kept by dspkg"),
        (["--to", URI, "--from", "dataset://other/v0"], "not a version of dataset plain"),
        (["--to", URI, "--from", URI], "cannot be built from itself"),
        (["--to", URI, "--alias", "no/slash"], "invalid alias"),
    ):
        assert_usage_error(run_cli([*base, *args], env), needle)
    assert_one_line_error(
        run_cli([*base, "--to", URI, "--from", "dataset://plain/v0"], env),
        "--from dataset://plain/v0 does not exist",
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(
        run_cli(["publish", str(empty), "--store", store, "--to", URI], env),
        "no file to publish as dataset://plain/v1",
    )
    with pytest.raises(InvalidArgument, match="give to="):
        api.publish(root, store=store, from_=URI, env=env)
    assert api.datasets(store=store, env=env) == []
