"""Parts of a version, staged by several publishers and committed once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dspkg import api
from dspkg.concurrency import run_sync
from dspkg.errors import AlreadyExists, InvalidMetadata, NotFound, StoreError
from dspkg.layout import part_key, staging_prefix
from dspkg.publisher import PublishResult
from dspkg.store import open_store
from tests.helpers import assert_one_line_error, read_tree, run_cli, write_outputs

URI = "dataset://parts/v1"
A = {"a/1.txt": b"one", "a/2.txt": b"two", "shared/same.txt": b"same in both"}
B = {"b/1.txt": b"uno", "b/2.txt": b"dos", "shared/same.txt": b"same in both"}


@pytest.fixture
def setup(tmp_path: Path, env: dict[str, str]) -> dict[str, Any]:
    url = f"file://{tmp_path / 'store'}"
    return {"store": url, "env": {**env, "DSPKG_STORE": url}, "tmp": tmp_path}


def stage(
    s: dict[str, Any], name: str, files: dict[str, bytes], uri: str | Any = URI, **kw: Any
) -> PublishResult:
    entry = uri if isinstance(uri, dict) else {"uri": uri}
    out = write_outputs(s["tmp"] / f"out-{name}-{len(files)}", files, [entry])
    return api.publish(out, store=s["store"], packaging=True, part=name, env=s["env"], **kw)


def test_two_parts_commit_into_one_version(setup: dict[str, Any]) -> None:
    staged = stage(setup, "a", A)
    assert staged.versions[0].part == "a" and staged.versions[0].created
    stage(setup, "b", B)
    # Staged, not visible: no dataset, no version, nothing to pull.
    assert api.datasets(store=setup["store"], env=setup["env"]) == []
    with pytest.raises(NotFound):
        api.show(URI, store=setup["store"], env=setup["env"])
    result = api.commit(URI, store=setup["store"], env=setup["env"])
    assert result.created and result.parts == ("a", "b") and result.files == 5
    pulled = api.pull(URI, setup["tmp"] / "dest", store=setup["store"], env=setup["env"])
    assert read_tree(setup["tmp"] / "dest") == {**A, **B} and pulled.packaged
    details = api.show(URI, store=setup["store"], env=setup["env"], files=False).to_json()
    assert details["aliases"] == ["latest"] and len(details["packages"]) == 2
    # The same file in both parts is taken once, from the part first by name.
    assert [p["files_used"] for p in details["packages"]] == [3, 2]
    # The staging area is gone; committing again is a no-op.
    assert run_sync(open_store(setup["store"]).list(staging_prefix("parts", "v1"))) == []
    again = api.commit(URI, store=setup["store"], env=setup["env"])
    assert not again.created and again.files == 5


def test_conflicting_parts_name_both_and_create_nothing(setup: dict[str, Any]) -> None:
    stage(setup, "left", A)
    stage(setup, "right", {**B, "shared/same.txt": b"not the same"})
    failed = run_cli(["commit", URI], setup["env"])
    assert_one_line_error(failed, "'shared/same.txt' differs between parts 'left'", "'right'")
    with pytest.raises(NotFound):
        api.show(URI, store=setup["store"], env=setup["env"])


def test_a_part_staged_twice(setup: dict[str, Any]) -> None:
    stage(setup, "a", A)
    again = stage(setup, "a", A)
    assert not again.versions[0].created and again.bytes_uploaded == 0
    with pytest.raises(AlreadyExists, match="part 'a' of dataset://parts/v1 is already staged"):
        stage(setup, "a", {**A, "a/1.txt": b"changed"})


def test_commit_of_a_version_that_exists(setup: dict[str, Any]) -> None:
    out = write_outputs(setup["tmp"] / "direct", {**A, **B}, [URI])
    api.publish(out, store=setup["store"], packaging=True, env=setup["env"])
    with pytest.raises(AlreadyExists, match="already committed"):
        stage(setup, "late", A)
    # Parts staged before the version was published: same content is fine, other is not.
    store = open_store(setup["store"])
    other = write_outputs(setup["tmp"] / "other", A, [{"uri": "dataset://parts/v9"}])
    api.publish(other, store=store, part="x", packaging=True, env=setup["env"])
    record = run_sync(store.get(part_key("parts", "v9", "x")))
    run_sync(store.put(part_key("parts", "v1", "x"), record.replace(b'"v9"', b'"v1"')))
    with pytest.raises(AlreadyExists, match="already exists with different content"):
        api.commit(URI, store=store, env=setup["env"])


def test_parts_of_a_child_version(setup: dict[str, Any]) -> None:
    parent = write_outputs(setup["tmp"] / "parent", A, [URI])
    api.publish(parent, store=setup["store"], packaging=True, env=setup["env"])
    child = {"uri": "dataset://parts/v2", "from": URI, "exclude": ["a/2.txt", "nope"]}
    stage(setup, "one", {"c/1.txt": b"new", "a/1.txt": b"replaced"}, child)
    stage(setup, "two", {"c/2.txt": b"newer"}, child)
    result = api.commit("dataset://parts/v2", store=setup["store"], env=setup["env"])
    assert result.files == 4
    api.pull("dataset://parts/v2", setup["tmp"] / "d", store=setup["store"], env=setup["env"])
    assert read_tree(setup["tmp"] / "d") == {
        "a/1.txt": b"replaced",
        "c/1.txt": b"new",
        "c/2.txt": b"newer",
        "shared/same.txt": b"same in both",
    }
    shown = api.show("dataset://parts/v2", store=setup["store"], env=setup["env"]).to_json()
    assert shown["from"] == URI


def test_parts_that_collide_with_each_other(setup: dict[str, Any]) -> None:
    stage(setup, "upper", {"Data/x.txt": b"1"})
    stage(setup, "lower", {"data/x.txt": b"2"})
    with pytest.raises(InvalidMetadata, match="collides"):
        api.commit(URI, store=setup["store"], env=setup["env"])
    with pytest.raises(NotFound):
        api.show(URI, store=setup["store"], env=setup["env"])


def test_parts_that_disagree_on_the_parent(setup: dict[str, Any]) -> None:
    stage(setup, "a", A, {"uri": URI, "from": "dataset://parts/p1"})
    stage(setup, "b", B, {"uri": URI, "from": "dataset://parts/p2"})
    with pytest.raises(InvalidMetadata, match="parts 'a' and 'b' of dataset://parts/v1 disagree"):
        api.commit(URI, store=setup["store"], env=setup["env"])


def test_commit_refuses_a_part_whose_package_is_gone(setup: dict[str, Any]) -> None:
    result = stage(setup, "a", A)
    run_sync(open_store(setup["store"]).delete(result.versions[0].packages[0].key))
    with pytest.raises(StoreError, match="of part 'a' of dataset://parts/v1 is missing"):
        api.commit(URI, store=setup["store"], env=setup["env"])


def test_commit_of_nothing_staged(setup: dict[str, Any]) -> None:
    assert_one_line_error(run_cli(["commit", URI], setup["env"]), "no parts of", "--part NAME")


@pytest.mark.slow
def test_commits_racing_exactly_one_creates(setup: dict[str, Any]) -> None:
    """Real processes: each merges the parts and tries the conditional create."""
    for name in ("p1", "p2", "p3"):
        stage(setup, name, {f"{name}/{i}.bin": bytes([i]) * 100 for i in range(50)})
    env = {**setup["env"], "PATH": setup["env"]["PATH"]}
    commits = [
        subprocess.Popen(
            [sys.executable, "-m", "dspkg.cli", "commit", URI, "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outcomes = []
    for proc in commits:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        outcomes.append(json.loads(out))
    assert sorted(o["created"] for o in outcomes) == [False, False, False, True]
    assert {o["files"] for o in outcomes} == {150}
    api.pull(URI, setup["tmp"] / "raced", store=setup["store"], env=setup["env"])
    assert len(read_tree(setup["tmp"] / "raced")) == 150
