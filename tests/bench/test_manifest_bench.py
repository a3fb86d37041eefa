"""``dspkg bench --manifest``: a synthetic manifest round-trips in both forms and is timed."""

from __future__ import annotations

import json

from dspkg.bench.dask_bench import differences
from dspkg.bench.manifest_bench import run_manifest, synthetic
from dspkg.manifest import Manifest
from tests.helpers import run_cli


def test_synthetic_manifest_is_valid_and_round_trips() -> None:
    manifest = synthetic(3000)
    assert Manifest.from_json(manifest.to_json(), obj="m") == manifest
    figures = run_manifest(3000)
    assert figures["files"] == 3000 and figures["bytes"] == len(manifest.to_json())
    assert all(figures[k] > 0 for k in ("write_seconds", "load_seconds", "load_checked_seconds"))
    v2 = figures["v2"]
    assert v2["shards"] == 1 and 0 < v2["shard_bytes"] < figures["bytes"] / 2
    assert v2["root_bytes"] < 2000
    assert all(v2[k] > 0 for k in ("root_load_seconds", "load_seconds", "load_cached_seconds"))


def test_manifest_mode_of_the_command() -> None:
    result = run_cli(["bench", "--manifest", "--files", "2000", "--json"], {})
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["files"] == 2000 and doc["v2"]["shards"] == 1


def test_scale_mode_of_the_command() -> None:
    result = run_cli(["bench", "--scale", "--files", "1500", "--size", "200", "--json"], {})
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["files"] == 1500 and doc["manifest"]["shards"] == 1
    assert doc["pull_cold"]["files_fetched"] == 1500 and doc["pull_warm"]["files_fetched"] == 0
    assert doc["publish"]["peak_rss_mb"] > 10 and doc["pull_cold"]["requests"] >= 2
    assert set(doc["targets"]) == {
        "root_load_seconds",
        "manifest_load_seconds",
        "publish_peak_rss_mb",
        "pull_peak_rss_mb",
        "pull_requests",
    }


def test_scale_mode_checks_a_dask_publish_against_the_single_one() -> None:
    # 3,000 files of 10 kB: two packages of 16 MiB, so two package tasks on the cluster.
    result = run_cli(
        ["bench", "--scale", "--files", "3000", "--size", "10000", "--dask-workers", "2", "--json"],
        {},
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    dask = doc["dask"]
    assert dask["workers"] == 2 and dask["tasks"] == dask["packages"] == 2
    assert dask["differences"] == []
    assert doc["targets"]["dask_differences"] == {"target": 0, "measured": 0, "met": True}


def test_differences_ignore_the_attempt_and_name_what_differs() -> None:
    package = {"key": "packages/ds/v1/a1b2/ds.v1.vhpkgzip", "sha256": "00" * 32, "size": 9}
    root = {"digest": "d", "files": 2, "bytes": 9, "shards": [{"key": "s"}], "blobs": False}
    single = {**root, "packages": [package]}
    again = {**root, "packages": [{**package, "key": "packages/ds/v1/ffff/ds.v1.vhpkgzip"}]}
    assert differences(single, again) == []
    other_bytes = {**again, "packages": [{**package, "sha256": "11" * 32}]}
    assert differences(single, other_bytes) == ["packages"]
    assert differences(single, {**again, "digest": "e", "shards": []}) == ["digest", "shards"]


def test_dask_workers_need_scale_mode() -> None:
    result = run_cli(["bench", "--dask-workers", "2"], {})
    assert result.returncode == 2
    assert "--dask-workers: only with --scale" in result.stderr
