"""Network faults: connections cut midway through ranged GETs and blob downloads."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from dspkg.bench.wan import WanConfig, WanEmulator
from tests.helpers import BUCKET, S3Server, read_tree, run_cli, write_outputs

URI = "dataset://faults/v1"


def files(count: int, seed: int) -> dict[str, bytes]:
    rng = random.Random(seed)
    return {f"d/{i:04d}.bin": rng.randbytes(rng.randint(5_000, 60_000)) for i in range(count)}


def test_cut_connections_are_resumed_and_bytes_stay_exact(
    s3_server: S3Server, tmp_path: Path
) -> None:
    data = files(300, seed=1)  # about 10 MB in one package
    with WanEmulator(("127.0.0.1", s3_server.port), WanConfig(rtt_ms=0, mbit=0)) as wan:
        env = {
            **s3_server.env(),
            "AWS_ENDPOINT_URL": wan.url,
            "DSPKG_STORE": f"s3://{BUCKET}/faults-{os.getpid()}",
            "DSPKG_CACHE": str(tmp_path / "cache"),
        }
        write_outputs(tmp_path / "out", data, [{"uri": URI, "packaging": True}])
        assert run_cli(["publish", str(tmp_path / "out"), "--packaging"], env).returncode == 0
        wan.set_config(WanConfig(rtt_ms=5, mbit=200))
        wan.reset_stats()
        # Cut the next five connections after 300 KB each: ranges break in the middle.
        wan.cut_connections(after_bytes=300_000, count=5)
        pulled = run_cli(["pull", URI, str(tmp_path / "dest"), "--json"], env)
        assert pulled.returncode == 0, pulled.stderr
        assert read_tree(tmp_path / "dest") == data
        assert wan.stats().connections_cut == 5
        figures = json.loads(pulled.stdout)
        package_bytes = sum(len(v) for v in data.values())
        # Resumed from where each range broke: little is downloaded twice.
        assert figures["bytes_downloaded"] < 1.2 * package_bytes


def test_cut_connections_during_blob_downloads(s3_server: S3Server, tmp_path: Path) -> None:
    data = files(60, seed=2)
    with WanEmulator(("127.0.0.1", s3_server.port), WanConfig(rtt_ms=0, mbit=0)) as wan:
        env = {
            **s3_server.env(),
            "AWS_ENDPOINT_URL": wan.url,
            "DSPKG_STORE": f"s3://{BUCKET}/blobfaults-{os.getpid()}",
            "DSPKG_CACHE": str(tmp_path / "cache"),
        }
        write_outputs(tmp_path / "out", data, [URI])
        assert run_cli(["publish", str(tmp_path / "out")], env).returncode == 0
        wan.cut_connections(after_bytes=20_000, count=8)
        pulled = run_cli(["pull", URI, str(tmp_path / "dest"), "--json"], env)
        assert pulled.returncode == 0, pulled.stderr
        assert read_tree(tmp_path / "dest") == data
        assert wan.stats().connections_cut == 8


def test_a_store_that_stays_down_fails_with_one_line(s3_server: S3Server, tmp_path: Path) -> None:
    data = files(20, seed=3)
    with WanEmulator(("127.0.0.1", s3_server.port), WanConfig(rtt_ms=0, mbit=0)) as wan:
        env = {
            **s3_server.env(),
            "AWS_ENDPOINT_URL": wan.url,
            "DSPKG_STORE": f"s3://{BUCKET}/down-{os.getpid()}",
            "DSPKG_CACHE": str(tmp_path / "cache"),
        }
        write_outputs(tmp_path / "out", data, [{"uri": URI, "packaging": True}])
        assert run_cli(["publish", str(tmp_path / "out"), "--packaging"], env).returncode == 0
        wan.cut_connections(after_bytes=0, count=10_000)  # every response dies at once
        failed = run_cli(["pull", URI, str(tmp_path / "dest")], env, timeout=600)
    assert failed.returncode == 1
    lines = [line for line in failed.stderr.splitlines() if line.startswith("dspkg: error:")]
    assert len(lines) == 1 and "Traceback" not in failed.stderr
    assert not (tmp_path / "dest").exists() or not any((tmp_path / "dest").rglob("*.bin"))
