"""The benchmark's dataset: N seeded random files of S bytes, 1,000 per folder, plus metadata.

Random bytes so nothing deduplicates or compresses; a fixed seed so two runs move the same
data. Paths are ``d000/f000000.bin``: the index names the folder, so extra files for a
child version (indices N, N+1, ...) land in the folders after the parent's.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

PER_FOLDER = 1_000
METADATA = "valohai.metadata.jsonl"
SEED = 20261125


def rel_path(index: int) -> str:
    return f"d{index // PER_FOLDER:03d}/f{index:06d}.bin"


def tenth_globs(files: int) -> tuple[list[str], int]:
    """``--include`` globs that take the first tenth of the files, and how many they take.

    The tenth is contiguous, as a folder of ten would be: whole folders when the folders
    come in tens (``d000/`` of 10,000 files, ``d00?/`` of 100,000), else the first
    ``files // 10`` file names (``*/f0000[0-1]?.bin`` of 200 files).
    """
    folders, rest = divmod(files, PER_FOLDER)
    if rest == 0 and folders % 10 == 0:
        return [f"d{p}/" for p in _below(folders // 10, 3)], folders // 10 * PER_FOLDER
    return [f"*/f{p}.bin" for p in _below(files // 10, 6)], files // 10


def _below(n: int, width: int) -> list[str]:
    """Globs over ``width`` decimal digits that together match exactly 0 .. n-1: one per
    non-zero digit of n (the digits before it kept, a smaller one there, any after)."""
    if not 0 <= n < 10**width:
        raise ValueError(f"{n} does not fit in {width} digits")
    digits = f"{n:0{width}d}"
    globs = []
    for i, d in enumerate(digits):
        if d != "0":
            smaller = "0" if d == "1" else f"[0-{int(d) - 1}]"
            globs.append(digits[:i] + smaller + "?" * (width - i - 1))
    return globs


def generate(root: Path, indices: Iterable[int], size: int, *, seed: int = SEED) -> list[str]:
    """Write one file of ``size`` random bytes per index under ``root``; return the paths."""
    rng = random.Random(seed)
    paths: list[str] = []
    made: set[str] = set()
    for i in indices:
        rel = rel_path(i)
        folder = rel.partition("/")[0]
        if folder not in made:
            (root / folder).mkdir(parents=True, exist_ok=True)
            made.add(folder)
        # One stream for the whole tree keeps the seed meaningful; the index in the first
        # bytes keeps every file distinct even when size is tiny.
        data = i.to_bytes(8, "little") + rng.randbytes(max(size - 8, 0))
        fd = os.open(root / rel, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data[:size])
        finally:
            os.close(fd)
        paths.append(rel)
    return paths


def write_metadata(root: Path, paths: Sequence[str], entries: list[dict[str, Any]]) -> None:
    """``valohai.metadata.jsonl`` assigning every path to the versions in ``entries``."""
    meta = {"valohai.dataset-versions": entries}
    lines = (json.dumps({"file": p, "metadata": meta}) for p in paths)
    (root / METADATA).write_text("".join(f"{line}\n" for line in lines))


def iter_files(root: Path) -> Iterator[Path]:
    for folder, _, names in os.walk(root):
        for name in names:
            yield Path(folder, name)


def count_files(root: Path) -> tuple[int, int]:
    """(files, bytes) of the regular files under ``root``, links followed."""
    files = total = 0
    for path in iter_files(root):
        files += 1
        total += path.stat().st_size
    return files, total


def warm(root: Path) -> None:
    """Read every file once so a timed run starts from a warm page cache."""
    for path in iter_files(root):
        with path.open("rb") as f:
            while f.read(1 << 20):
                pass
