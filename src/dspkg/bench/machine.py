"""A description of the machine a run measured, so recorded numbers can be compared."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from dspkg.bench.servers import weed_binary
from dspkg.bench.tools import find_s5cmd, version_of


def describe(work: Path) -> dict[str, Any]:
    s5cmd = find_s5cmd()
    fs_type, fs_device, fs_mount = _file_system(work)
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gb": _memory_gb(),
        "work_dir": str(work),
        "file_system": fs_type,
        "file_system_device": fs_device,
        "file_system_mount": fs_mount,
        "file_system_journal": ext4_journal(fs_device) if fs_type == "ext4" else None,
        "kernel": platform.release(),
        "os": platform.platform(terse=True),
        "python": platform.python_version(),
        "versions": {
            "dspkg": _dist_version("dspkg"),
            "obstore": _dist_version("obstore"),
            "moto": _dist_version("moto"),
            "seaweedfs": _weed_version(),
            "s5cmd": version_of([str(s5cmd), "version"]) if s5cmd else None,
            "unzip": _first_sentence(version_of(["unzip", "-v"])),
            "zip": _zip_version(),
        },
    }


def ext4_journal(device: str | None, sysfs: Path = Path("/sys/fs/ext4")) -> bool | None:
    """Whether the ext4 file system on ``device`` has a journal (None where unknown).

    Without one, ext4 skips every free inode deleted in the last 60 s (6 min while its
    inode-table block is dirty) on each file it creates, so file creation slows for
    minutes after a mass deletion; with one (the usual case) it does not. Runs on the two
    kinds of disk are not comparable in their "after deletions" rows.
    """
    if device is None:
        return None
    try:
        task = (sysfs / Path(device).name / "journal_task").read_text().strip()
    except OSError:
        return None
    return task != "<none>"


def file_system_label(machine: dict[str, Any]) -> str:
    """The work dir's file system, e.g. ``ext4 (no journal)``."""
    journal = machine.get("file_system_journal")
    if journal is None:
        return str(machine["file_system"])
    return f"{machine['file_system']} ({'journal' if journal else 'no journal'})"


def summary(machine: dict[str, Any]) -> list[str]:
    """The description as a few human-readable lines."""
    v = machine["versions"]
    return [
        f"machine: {machine['nproc']} CPUs ({machine['cpu_model']}), "
        f"{machine['memory_gb']} GB RAM, kernel {machine['kernel']}",
        f"work dir: {machine['work_dir']} on {file_system_label(machine)}, "
        f"{machine['file_system_device']} at {machine['file_system_mount']}",
        f"versions: Python {machine['python']}, dspkg {v['dspkg']}, obstore {v['obstore']}, "
        f"SeaweedFS {v.get('seaweedfs') or 'missing'}, moto {v['moto'] or 'missing'}, "
        f"s5cmd {v['s5cmd'] or 'missing'}",
    ]


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware"):
                return value.strip()
    except OSError:
        pass
    return platform.processor() or None


def _memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) * 1024 / 1e9, 1)
    except OSError:
        pass
    return None


def _file_system(path: Path) -> tuple[str | None, str | None, str | None]:
    """(type, device, mount point) of the mount holding ``path``, from /proc/mounts."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None, None, None
    target = str(path.resolve())
    best: tuple[str, str, str] | None = None
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        device, mount, fs_type = parts[0], parts[1].replace("\\040", " "), parts[2]
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        # The longest matching mount point is the one that holds the path.
        if inside and (best is None or len(mount) >= len(best[1])):
            best = (device, mount, fs_type)
    if best is None:
        return None, None, None
    return best[2], best[0], best[1]


def _weed_version() -> str | None:
    # `weed version` prints "version 8000GB 4.48 pypi linux amd64": the number is the third word.
    weed = weed_binary()
    line = version_of([str(weed), "version"]) if weed else None
    if line is None:
        return None
    words = line.split()
    return words[2] if len(words) > 2 else line


def _zip_version() -> str | None:
    # `zip -h` prints a copyright line, then "Zip 3.0 (July 5th 2008). Usage:".
    try:
        done = subprocess.run(
            ["zip", "-h"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in done.stdout.splitlines():
        if line.startswith("Zip "):
            return line.partition(". Usage")[0]
    return None


def _first_sentence(line: str | None) -> str | None:
    return None if line is None else line.partition(", by")[0]
