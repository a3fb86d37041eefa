"""The command line contract: exit statuses, one-line errors, --json, human output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import assert_one_line_error, run_cli, write_outputs


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "DSPKG_STORE": f"file://{tmp_path / 'store'}",
        "DSPKG_CACHE": str(tmp_path / "cache"),
        **extra,
    }


def test_bad_usage_exits_2(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    assert run_cli([], env).returncode == 2
    assert run_cli(["pull"], env).returncode == 2
    assert run_cli(["pull", "dataset://a/b", "d", "--link", "telepathy"], env).returncode == 2
    assert run_cli(["publish", ".", "--jobs", "0"], env).returncode == 2


def test_ls_and_show(tmp_path: Path) -> None:
    env = env_for(tmp_path, VH_ENABLE_DATASET_VERSION_PACKAGING="1")
    entry = {"uri": "dataset://images/v1", "packaging": True, "targeting_aliases": ["prod"]}
    write_outputs(tmp_path / "out", {"a/1.jpg": b"1", "b/2.jpg": b"22"}, [entry])
    assert run_cli(["publish", str(tmp_path / "out")], env).returncode == 0
    write_outputs(
        tmp_path / "out2",
        {"c/3.jpg": b"333"},
        [{"uri": "dataset://images/v2", "from": "dataset://images/v1"}],
    )
    assert run_cli(["publish", str(tmp_path / "out2")], env).returncode == 0

    listing = run_cli(["ls"], env)
    assert listing.returncode == 0
    assert "dataset://images  2 version(s), latest v2" in listing.stdout
    versions = json.loads(run_cli(["ls", "dataset://images", "--json"], env).stdout)
    assert [v["version"] for v in versions["versions"]] == ["v1", "v2"]
    assert versions["versions"][0]["aliases"] == ["prod"]

    shown = run_cli(["show", "dataset://images/prod", "--files"], env)
    assert shown.returncode == 0, shown.stderr
    assert "dataset://images/v1" in shown.stdout
    assert "images.v1.vhpkgzip" in shown.stdout
    assert "a/1.jpg" in shown.stdout
    child = json.loads(run_cli(["show", "dataset://images/latest", "--json"], env).stdout)
    assert child["from"] == "dataset://images/v1"
    assert child["files"] == 3 and child["packaged_files"] == 2


def test_errors_are_one_line(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    assert_one_line_error(run_cli(["show", "dataset://nope/v1"], env), "not found")
    assert_one_line_error(run_cli(["show", "not-a-uri"], env), "dataset://")
    assert_one_line_error(run_cli(["publish", str(tmp_path / "missing")], env), "not a directory")
    assert_one_line_error(run_cli(["ls", "--store", "ftp://x/y"], env), "unsupported store URL")
    assert_one_line_error(
        run_cli(["publish", str(tmp_path), "--package-size", "lots"], env), "invalid size"
    )


def test_dry_run_prints_the_plan_and_touches_nothing(tmp_path: Path) -> None:
    env = env_for(tmp_path, VH_ENABLE_DATASET_VERSION_PACKAGING="1")
    files = {f"x/{i}.bin": bytes([i]) * 5000 for i in range(20)}
    write_outputs(tmp_path / "out", files, [{"uri": "dataset://d/v", "packaging": True}])
    run_cli(["publish", str(tmp_path / "out")], env)
    dry = run_cli(["pull", "dataset://d/v", str(tmp_path / "dest"), "--dry-run", "--json"], env)
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)["plan"]
    assert plan["files_to_fetch"] == 20
    assert plan["estimates"]["per_file"]["requests"] == 20
    assert plan["estimates"]["ranged"]["requests"] == plan["requests"] < 20
    assert not (tmp_path / "dest").exists()
    human = run_cli(["pull", "dataset://d/v", str(tmp_path / "dest"), "--dry-run"], env)
    assert "per-file GETs" in human.stdout and "ranged GETs" in human.stdout


def test_demo_runs_on_the_default_store(tmp_path: Path) -> None:
    env = {
        "HOME": str(tmp_path),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_CACHE_HOME": str(tmp_path / "c"),
    }
    demo = run_cli(["demo", "--files", "300", "--no-wan"], env)
    assert demo.returncode == 0, demo.stderr
    assert demo.stdout.startswith("store: the default local store, where a request costs almost")
    assert "(dataset version package 1/1) uploading dspkg-demo.images-300.vhpkgzip" in demo.stdout
    assert "speedup from packages" in demo.stdout
    assert "pulled tree identical to the outputs: yes" in demo.stdout
    assert (tmp_path / "data" / "dspkg" / "store" / "datasets" / "dspkg-demo").is_dir()


def test_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """`dspkg show --files ... | head -1`: the reader leaves early; no error, no traceback."""
    env = env_for(tmp_path)
    files = {f"d/{i:05}.txt": b"x" for i in range(20_000)}
    write_outputs(tmp_path / "out", files, [{"uri": "dataset://many/v1"}])
    assert run_cli(["publish", str(tmp_path / "out")], env).returncode == 0
    full_env = {"PATH": os.environ.get("PATH", ""), **env}
    with subprocess.Popen(
        [sys.executable, "-m", "dspkg.cli", "show", "dataset://many/v1", "--files"],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as dspkg:
        assert dspkg.stdout is not None and dspkg.stderr is not None
        dspkg.stdout.readline()
        dspkg.stdout.close()  # as `head -1` does once it has its line
        stderr = dspkg.stderr.read().decode()
        assert dspkg.wait(timeout=120) == 1
    assert stderr == ""
