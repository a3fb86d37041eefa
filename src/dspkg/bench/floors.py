"""The two floors no pull can beat: moving the bytes over the link, and creating the files.

A cold pull must both download B bytes and create N files; whichever takes longer is the
best any method can do, so the packaged pull is judged against ``max(network, creation)``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from dspkg.bench.data import PER_FOLDER, rel_path
from dspkg.bench.processes import settle_disk


def network_floor(total_bytes: int, mbit: float) -> float:
    """Seconds to move ``total_bytes`` at ``mbit`` (1e6 bits/s); 0 when unlimited."""
    if mbit <= 0 or mbit == float("inf"):
        return 0.0
    return total_bytes / (mbit * 1e6 / 8)


def creation_floor(root: Path, files: int, size: int) -> float:
    """Seconds for a lean single-threaded loop to write ``files`` files into a fresh ``root``.

    The loop is the fastest plain Python can do (``os.open``/``os.write``/``os.close``,
    folders made first, no fsync), measured on the disk the pulls write to. It is a floor
    for a Python extractor, not for the disk.
    """
    root.mkdir(parents=True)
    # The files stay until the whole run is removed (see pull_bench: deleting many files
    # slows the file creation of whatever runs next).
    data = os.urandom(size)
    paths = [str(root / rel_path(i)) for i in range(files)]
    folders = {str(root / rel_path(i).partition("/")[0]) for i in range(0, files, PER_FOLDER)}
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    settle_disk()
    started = time.perf_counter()
    for folder in sorted(folders):
        os.mkdir(folder)
    for path in paths:
        fd = os.open(path, flags, 0o644)
        os.write(fd, data)
        os.close(fd)
    return time.perf_counter() - started
