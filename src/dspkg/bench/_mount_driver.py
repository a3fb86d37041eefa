"""Drives one mount measurement from inside the measured process (run with ``python -m``).

``read DIR``: read every file under DIR in os.walk order; print the seconds.

``mount MODE MOUNTPOINT -- ARGV...``: start the mount command ARGV, wait for its mount
point, read the first file (time to first byte from the start of the mount command),
then ``pass`` reads every file in os.walk order, ``random`` a seeded random 1% of them
(the listing costs no request). Unmounts with SIGTERM and prints one JSON object with
the timings and the mount process's own peak RSS (from ``wait4``).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

POLL = 0.002
FRACTION = 0.01


def _files(root: str) -> list[str]:
    found: list[str] = []
    for directory, dirs, names in os.walk(root):
        dirs.sort()
        found.extend(os.path.join(directory, name) for name in sorted(names))
    return found


def _read(path: str) -> int:
    with open(path, "rb") as f:
        return len(f.read())


def _first_file(root: str) -> str:
    """The first file in os.walk order, found without listing the whole tree."""
    directory = root
    while True:
        entries = sorted(os.scandir(directory), key=lambda e: (e.is_dir(), e.name))
        files = [e for e in entries if e.is_file()]
        if files:
            return files[0].path
        directory = entries[0].path


def read_tree(root: str) -> dict[str, float]:
    started = time.monotonic()
    nbytes = sum(_read(p) for p in _files(root))
    return {"seconds": time.monotonic() - started, "bytes": nbytes}


def mount(mode: str, point: str, argv: list[str]) -> dict[str, object]:
    started = time.monotonic()
    log = open(os.path.join(os.path.dirname(point), "mount.log"), "wb")  # noqa: SIM115
    proc = subprocess.Popen(argv, stdout=log, stderr=log)
    while not os.path.ismount(point):
        if proc.poll() is not None:
            raise SystemExit(f"the mount exited with status {proc.returncode}")
        time.sleep(POLL)
    mounted = time.monotonic() - started
    _read(_first_file(point))
    first_byte = time.monotonic() - started
    files = _files(point)
    if mode == "random":
        chosen = random.Random(7).sample(files, max(1, int(len(files) * FRACTION)))
    else:
        chosen = files
    nbytes = sum(_read(p) for p in chosen)
    done = time.monotonic() - started
    proc.send_signal(signal.SIGTERM)
    _, status, usage = os.wait4(proc.pid, 0)
    log.close()
    return {
        "mounted_seconds": mounted,
        "first_byte_seconds": first_byte,
        "seconds": done,
        "files_read": len(chosen),
        "bytes_read": nbytes,
        "mount_exit": os.waitstatus_to_exitcode(status),
        "mount_peak_rss_kib": usage.ru_maxrss,
    }


def main() -> int:
    if sys.argv[1] == "read":
        doc: dict[str, object] = dict(read_tree(sys.argv[2]))
    else:
        _, mode, point, sep, *argv = sys.argv[1:]
        assert sep == "--"
        doc = mount(mode, point, argv)
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
