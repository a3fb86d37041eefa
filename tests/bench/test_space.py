"""The benchmark asks for the disk space a run keeps before it starts, not in its second
round: the estimate's shape, and the refusal of a run that cannot fit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from dspkg.bench.settings import BenchSettings, Mode

MODES: tuple[Mode, ...] = ("pull", "publish", "mount")


@given(
    st.sampled_from(MODES),
    st.integers(1, 10**6),
    st.integers(1, 10**6),
    st.integers(1, 5),
)
def test_the_estimate_counts_whole_blocks_and_grows_with_files_size_and_rounds(
    mode: Mode, files: int, size: int, repeat: int
) -> None:
    s = BenchSettings(files=files, size=size, repeat=repeat)
    needed = s.disk_bytes_needed(mode)
    assert needed >= 2 * s.total_bytes  # the tree and at least one more copy
    assert needed % 4096 == 0 and needed >= files * 4096 * 2
    assert BenchSettings(files=files + 1, size=size, repeat=repeat).disk_bytes_needed(mode) > needed
    assert (
        BenchSettings(files=files, size=size + 4096, repeat=repeat).disk_bytes_needed(mode) > needed
    )
    assert BenchSettings(files=files, size=size, repeat=repeat + 1).disk_bytes_needed(mode) > needed


def test_a_pull_run_keeps_its_rested_rounds_and_one_deleted_round_at_most() -> None:
    both = BenchSettings(files=1000, size=10_000, disk_states=("rested", "deleted"))
    rested = BenchSettings(files=1000, size=10_000, disk_states=("rested",))
    deleted = BenchSettings(files=1000, size=10_000, disk_states=("deleted",))
    assert both.disk_bytes_needed("pull") == rested.disk_bytes_needed("pull")
    assert deleted.disk_bytes_needed("pull") < rested.disk_bytes_needed("pull")


def test_a_run_that_cannot_fit_is_refused_at_once_and_leaves_nothing(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dspkg.cli", "bench", "--files", "1000000", "--size", "10000000"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("dspkg: error: the benchmark needs about ")
    assert "GB free in " in lines[-1] and "--keep DIR" in lines[-1]
    assert "Traceback" not in done.stderr
    assert not any(tmp_path.iterdir())  # the temporary work directory is gone
