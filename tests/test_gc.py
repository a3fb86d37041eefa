"""``dspkg gc``: what no version references goes, after the grace period; nothing else."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from dspkg import api
from dspkg.catalog import Catalog
from dspkg.concurrency import run_sync
from dspkg.layout import blob_key, manifest_key
from dspkg.names import VersionUri
from dspkg.store import open_store
from tests.helpers import StoreCase, assert_one_line_error, read_tree, run_cli, write_outputs

URI = "dataset://kept/v1"
FILES = {f"f/{i:03d}.bin": bytes([i]) * (100 + i) for i in range(40)}
DAY = 86400


def age(store_dir: Path, seconds: float) -> None:
    """Make every object under ``store_dir`` ``seconds`` old."""
    then = time.time() - seconds
    for path in store_dir.rglob("*"):
        if path.is_file():
            os.utime(path, (then, then))


def referenced(url: str, env: dict[str, str] | None = None) -> set[str]:
    """Every key the versions of the store name: roots, shards, packages, blobs."""
    store = open_store(url, env=env)
    catalog = Catalog(store)
    keys: set[str] = set()
    for dataset in run_sync(catalog.datasets()):
        for version in run_sync(catalog.versions(dataset)):
            uri = VersionUri(dataset, version)
            root = run_sync(catalog.read_root(uri))
            keys.add(manifest_key(dataset, version))
            keys.update(p.key for p in root.packages)
            keys.update(s.key for s in root.shards)
            keys.update(blob_key(f.sha256) for f in run_sync(catalog.read_files(root)))
    return keys


@pytest.fixture
def littered(tmp_path: Path, env: dict[str, str]) -> dict[str, Any]:
    """A version, and the litter of a killed publish and of a part never committed, two days
    old; then a part staged just now."""
    url = f"file://{tmp_path / 'store'}"
    store_dir = tmp_path / "store"
    api.publish(write_outputs(tmp_path / "v1", FILES, [URI]), store=url, packaging=True, env=env)
    abandoned = {"x/orphan.bin": b"only in an abandoned part"}
    out = write_outputs(tmp_path / "p", abandoned, ["dataset://kept/v2"])
    api.publish(out, store=url, packaging=True, part="abandoned", env=env)
    # A publish killed after its package and a blob: named by nothing.
    killed = store_dir / "packages/kept/v3/0123456789abcdef/kept.v3.vhpkgzip"
    killed.parent.mkdir(parents=True)
    killed.write_bytes(b"PK" + b"\0" * 500)
    stray = store_dir / blob_key("ab" * 32)
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"stray blob")
    age(store_dir, 2 * DAY)
    young = {"y/new.bin": b"staged a minute ago"}
    out = write_outputs(tmp_path / "young", young, ["dataset://kept/v4"])
    api.publish(out, store=url, packaging=True, part="young", env=env)
    return {"url": url, "dir": store_dir, "env": {**env, "DSPKG_STORE": url}, "killed": killed}


def test_dry_run_by_default_reports_and_removes_nothing(littered: dict[str, Any]) -> None:
    before = sorted(p for p in littered["dir"].rglob("*") if p.is_file())
    shown = run_cli(["gc", "--json"], littered["env"])
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert not doc["deleted"] and doc["versions"] == 1
    kinds = {g["kind"] for g in doc["garbage"]}
    assert kinds == {"package", "blob", "shard", "part"}
    keys = {g["key"] for g in doc["garbage"]}
    assert "packages/kept/v3/0123456789abcdef/kept.v3.vhpkgzip" in keys
    assert "datasets/kept/staging/v2/abandoned.json" in keys
    assert not keys & referenced(littered["url"])
    assert doc["bytes"] == sum((littered["dir"] / k).stat().st_size for k in keys)
    # The young part's record is kept for its age; what it names, as referenced.
    assert doc["young_unreferenced"] == 1
    assert not {k for k in keys if "/v4/" in k or "young" in k}
    assert sorted(p for p in littered["dir"].rglob("*") if p.is_file()) == before
    text = run_cli(["gc"], littered["env"])
    assert "would remove package packages/kept/v3/" in text.stdout
    assert "dry run: nothing was removed" in text.stdout


def test_delete_removes_garbage_and_never_what_is_referenced(
    littered: dict[str, Any], tmp_path: Path
) -> None:
    keep = referenced(littered["url"])
    done = run_cli(["gc", "--delete", "--json"], littered["env"])
    assert done.returncode == 0, done.stderr
    removed = {g["key"] for g in json.loads(done.stdout)["garbage"]}
    assert removed and not removed & keep
    left = {p.relative_to(littered["dir"]).as_posix() for p in littered["dir"].rglob("*")}
    assert keep <= left and not removed & left
    assert not littered["killed"].exists()
    # The version pulls from a fresh cache; the young part still commits and pulls.
    env = {**littered["env"], "DSPKG_CACHE": str(tmp_path / "fresh-cache")}
    api.pull(URI, tmp_path / "d1", env=env)
    assert read_tree(tmp_path / "d1") == FILES
    api.commit("dataset://kept/v4", env=env)
    api.pull("dataset://kept/v4", tmp_path / "d4", env=env)
    assert read_tree(tmp_path / "d4") == {"y/new.bin": b"staged a minute ago"}
    # Nothing left to remove.
    assert json.loads(run_cli(["gc", "--json"], littered["env"]).stdout)["garbage"] == []


def test_grace_zero_on_s3_keeps_every_version_whole(
    durable_store: StoreCase, tmp_path: Path, env: dict[str, str]
) -> None:
    full = {**env, **durable_store.env, "DSPKG_STORE": durable_store.url}
    api.publish(write_outputs(tmp_path / "v1", FILES, [URI]), packaging=True, env=full)
    child = {"uri": "dataset://kept/v2", "from": URI, "exclude": ["f/000.bin"]}
    api.publish(write_outputs(tmp_path / "v2", {"n.bin": b"new"}, [child]), env=full)
    out = write_outputs(tmp_path / "p", {"z.bin": b"never committed"}, ["dataset://kept/v9"])
    api.publish(out, packaging=True, part="left", env=full)
    keep = referenced(durable_store.url, durable_store.env)
    result = api.gc(grace=0, delete=True, env=full)
    removed = {g.key for g in result.garbage}
    assert "datasets/kept/staging/v9/left.json" in removed and not removed & keep
    for uri, dest in ((URI, "a"), ("dataset://kept/v2", "b")):
        api.pull(uri, tmp_path / dest, env={**full, "DSPKG_CACHE": str(tmp_path / f"c-{dest}")})
    assert len(read_tree(tmp_path / "b")) == len(FILES)


def test_gc_stops_on_a_damaged_root_and_removes_nothing(littered: dict[str, Any]) -> None:
    (littered["dir"] / manifest_key("kept", "v1")).write_bytes(b"{not json")
    before = sorted(p for p in littered["dir"].rglob("*") if p.is_file())
    assert_one_line_error(
        run_cli(["gc", "--delete"], littered["env"]), "gc stopped, nothing was removed"
    )
    assert sorted(p for p in littered["dir"].rglob("*") if p.is_file()) == before


def test_bad_grace_is_a_usage_error(littered: dict[str, Any]) -> None:
    assert_one_line_error(run_cli(["gc", "--grace", "soon"], littered["env"]), "invalid duration")


@pytest.mark.slow
def test_a_killed_multipart_upload_on_a_local_store(tmp_path: Path) -> None:
    """obstore's local store leaves ``<key>#<n>`` when killed mid-upload; gc removes it."""
    url = f"file://{tmp_path / 'store'}"
    script = textwrap.dedent(
        f"""
        import asyncio
        from dspkg.store import open_store

        async def chunks():
            for _ in range(10_000):
                yield b"x" * (6 << 20)
                print("part", flush=True)
                await asyncio.sleep(0.05)

        asyncio.run(open_store({url!r}).put_stream(
            "packages/kept/v5/fedcba9876543210/kept.v5.vhpkgzip", chunks(), part_size=5 << 20))
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None
        for _ in range(3):  # a few parts written
            assert proc.stdout.readline().startswith("part")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    left = list((tmp_path / "store").rglob("*#*"))
    assert len(left) == 1 and left[0].stat().st_size > 0
    assert run_sync(open_store(url).list("packages/")) == []  # invisible to listings
    kept = api.gc(store=url, env={})  # younger than the grace: kept
    assert kept.garbage == () and left[0].exists()
    result = api.gc(store=url, grace="0s", delete=True, env={})
    assert [(g.kind, g.key) for g in result.garbage] == [
        ("incomplete-upload", left[0].relative_to(tmp_path / "store").as_posix())
    ]
    assert not left[0].exists()
