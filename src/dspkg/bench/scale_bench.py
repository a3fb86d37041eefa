"""``dspkg bench --scale``: publish and pull a version of many small files on a local store.

No servers and no emulated network: this measures what grows with the number of files —
wall time, requests, peak memory of the publishing and pulling processes, and how long the
manifest takes to load — for N files (default 1,000,000) of SIZE bytes (default 1,000) in
folders of 1,000, on a ``file://`` store in the work directory. Publish and pull run as
``dspkg`` processes, as users run them; their peak RSS comes from the kernel (wait4).
Disk: about four times N x SIZE (outputs, store, cache, and the pulled tree twice, which
shares the cache's inodes when hard links work).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dspkg.cache import Cache
from dspkg.concurrency import run_sync
from dspkg.loader import load_manifest, load_root
from dspkg.names import VersionUri
from dspkg.store import open_store

URI = "dataset://scale/v1"
# The targets of issue 12 for 1,000,000 files on the 2-vCPU benchmark machine.
TARGETS = {
    "root_load_seconds": 0.2,
    "manifest_load_seconds": 2.0,
    "publish_peak_rss_mb": 300,
    "pull_peak_rss_mb": 300,
    "pull_requests": 1000,
}
# With --dask-workers, both publishes cut packages of this size, so that the cluster has
# many package tasks to share (one package of the default 1 GiB would be one task).
DASK_PACKAGE_SIZE = "16MiB"


def generate(root: Path, files: int, size: int) -> None:
    """``files`` files of ``size`` bytes, distinct, in folders of 1,000, and the metadata
    that puts them all in one packaged version."""
    root.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"valohai.dataset-versions": [{"uri": URI, "packaging": True}]})
    with (root / "valohai.metadata.jsonl").open("w") as meta:
        for i in range(files):
            folder = f"c{i // 1000:04d}"
            if i % 1000 == 0:
                (root / folder).mkdir(exist_ok=True)
            rel = f"{folder}/f{i:07d}.bin"
            block = i.to_bytes(8, "little")
            with open(root / rel, "wb") as f:
                f.write((block * (size // 8 + 1))[:size])
            meta.write(f'{{"file": "{rel}", "metadata": {line}}}\n')


def _run(args: list[str], env: dict[str, str]) -> tuple[dict[str, Any], float, float]:
    """Run ``dspkg ARGS --json``; its JSON, wall seconds and peak RSS in MB."""
    started = time.monotonic()
    with (
        tempfile.TemporaryFile() as errors,
        subprocess.Popen(
            [sys.executable, "-m", "dspkg.cli", *args, "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=errors,
        ) as proc,
    ):
        # Read while it runs (a full pipe would block it), then reap it with its rusage.
        out = proc.stdout.read() if proc.stdout else b""
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        errors.seek(0)
        err = errors.read()
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"dspkg {args[0]} failed: {err.decode(errors='replace')[-2000:]}")
    return json.loads(out), seconds, usage.ru_maxrss / 1024  # ru_maxrss is in KiB


def _best(run: Callable[[], Any], rounds: int = 3) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def run_scale(
    files: int,
    size: int,
    work: Path,
    say: Callable[[str], None] = lambda _: None,
    *,
    dask_workers: int = 0,
) -> dict[str, Any]:
    outputs, store_dir = work / "outputs", work / "store"
    url = f"file://{store_dir}"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/root"),
        "DSPKG_STORE": url,
        "DSPKG_CACHE": str(work / "cache"),
    }
    say(f"writing {files:,} files of {size:,} bytes")
    started = time.monotonic()
    generate(outputs, files, size)
    figures: dict[str, Any] = {
        "files": files,
        "size": size,
        "generate_seconds": time.monotonic() - started,
    }
    say("publishing (--packages-only)")
    sizing = ["--package-size", DASK_PACKAGE_SIZE] if dask_workers else []
    doc, seconds, rss = _run(["publish", str(outputs), "--packages-only", *sizing], env)
    figures["publish"] = {"seconds": seconds, "peak_rss_mb": rss, "requests": doc["requests"]}
    if dask_workers:
        figures["dask"] = _dask_row(outputs, store_dir, work / "store-dask", dask_workers, env, say)
    # The pulls run before the manifest is loaded in this process: a child started while
    # this process held a million entries would count them in its peak RSS (the
    # memory a process has when it execs counts toward its own ru_maxrss).
    for label in ("pull_cold", "pull_warm"):
        say(label.replace("_", " "))
        dest = work / label
        doc, seconds, rss = _run(["pull", URI, str(dest)], env)
        figures[label] = {
            "seconds": seconds,
            "peak_rss_mb": rss,
            "requests": doc["requests"],
            "files_fetched": doc["files_fetched"],
        }
    version = VersionUri.parse(URI)
    store = open_store(url)
    caches = iter(range(100))

    def root() -> None:
        with Cache(work / f"load-cache-{next(caches)}") as cache:
            run_sync(load_root(store, cache, version))

    def manifest() -> None:
        with Cache(work / f"load-cache-{next(caches)}") as cache:
            run_sync(load_manifest(store, cache, version))

    say("loading the manifest")
    figures["root_load_seconds"] = _best(root)
    figures["manifest_load_seconds"] = _best(manifest)
    root_key = store_dir / "datasets" / "scale" / "versions" / "v1.json"
    shards = list((store_dir / "datasets" / "scale" / "shards").iterdir())
    figures["manifest"] = {
        "root_bytes": root_key.stat().st_size,
        "shards": len(shards),
        "shard_bytes": sum(p.stat().st_size for p in shards),
    }
    figures["targets"] = _check(figures)
    return figures


def _dask_row(
    outputs: Path,
    store_dir: Path,
    dask_dir: Path,
    workers: int,
    env: dict[str, str],
    say: Callable[[str], None],
) -> dict[str, Any]:
    from dspkg.bench.dask_bench import differences, publish_on_dask, stored_root

    say(f"publishing the same files on a Dask LocalCluster of {workers} workers")
    row = publish_on_dask(_run, outputs, dask_dir, URI, workers, DASK_PACKAGE_SIZE, env)
    row["differences"] = differences(stored_root(store_dir, URI), stored_root(dask_dir, URI))
    return row


def _check(figures: dict[str, Any]) -> dict[str, Any]:
    measured = {
        "root_load_seconds": figures["root_load_seconds"],
        "manifest_load_seconds": figures["manifest_load_seconds"],
        "publish_peak_rss_mb": figures["publish"]["peak_rss_mb"],
        "pull_peak_rss_mb": max(
            figures["pull_cold"]["peak_rss_mb"], figures["pull_warm"]["peak_rss_mb"]
        ),
        "pull_requests": figures["pull_cold"]["requests"],
    }
    checked = {
        name: {"target": TARGETS[name], "measured": value, "met": value <= TARGETS[name]}
        for name, value in measured.items()
    }
    if "dask" in figures:
        # Nothing may differ between the version published on Dask and the single one.
        differ = len(figures["dask"]["differences"])
        checked["dask_differences"] = {"target": 0, "measured": differ, "met": differ == 0}
    return checked


def describe(figures: dict[str, Any]) -> str:
    m = figures["manifest"]
    lines = [
        f"scale: {figures['files']:,} files of {figures['size']:,} bytes on a file:// store",
        f"  publish (--packages-only): {figures['publish']['seconds']:.1f} s, "
        f"{figures['publish']['requests']:,} requests, peak RSS "
        f"{figures['publish']['peak_rss_mb']:.0f} MB",
        f"  manifest: root {m['root_bytes'] / 1e3:.1f} kB, {m['shards']} shards of "
        f"{m['shard_bytes'] / 1e6:.1f} MB; root loads in {figures['root_load_seconds']:.3f} s, "
        f"every file in {figures['manifest_load_seconds']:.2f} s (empty cache, best of 3)",
    ]
    if "dask" in figures:
        d = figures["dask"]
        same = (
            "the same version"
            if not d["differences"]
            else "differs in " + ", ".join(d["differences"])
        )
        lines.append(
            f"  publish on Dask ({d['workers']} workers, {d['tasks']} tasks, packages of "
            f"{DASK_PACKAGE_SIZE}): {d['seconds']:.1f} s, client peak RSS "
            f"{d['client_peak_rss_mb']:.0f} MB; {same}"
        )
    for label in ("pull_cold", "pull_warm"):
        p = figures[label]
        lines.append(
            f"  {label.replace('_', ' ')}: {p['seconds']:.1f} s, {p['requests']:,} requests, "
            f"{p['files_fetched']:,} files fetched, peak RSS {p['peak_rss_mb']:.0f} MB"
        )
    for name, t in figures["targets"].items():
        state = "met" if t["met"] else "NOT met"
        lines.append(f"  target {name} <= {t['target']}: {t['measured']:.3g} ({state})")
    return "\n".join(lines)


def cleanup(work: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)
