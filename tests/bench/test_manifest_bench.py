"""``dspkg bench --manifest``: a synthetic manifest round-trips and is timed."""

from __future__ import annotations

import json

from dspkg.bench.manifest_bench import run_manifest, synthetic
from dspkg.manifest import Manifest
from tests.helpers import run_cli


def test_synthetic_manifest_is_valid_and_round_trips() -> None:
    manifest = synthetic(3000)
    assert Manifest.from_json(manifest.to_json(), obj="m") == manifest
    figures = run_manifest(3000)
    assert figures["files"] == 3000 and figures["bytes"] == len(manifest.to_json())
    assert all(figures[k] > 0 for k in ("write_seconds", "load_seconds", "load_checked_seconds"))


def test_manifest_mode_of_the_command() -> None:
    result = run_cli(["bench", "--manifest", "--files", "2000", "--json"], {})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["files"] == 2000
