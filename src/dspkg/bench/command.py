"""``dspkg bench``: the command line of the benchmark, and the run around a scenario.

Only this module and the scenarios it calls know the benchmark exists; the rest of the
harness is imported when the command runs, so ``dspkg --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from dspkg.bench.settings import (
    FILE_SIZE,
    MBIT,
    MOUNT_FILES,
    PUBLISH_FILES,
    PULL_FILES,
    REPEAT,
    RTT_MS,
    SERVERS,
    Mode,
)
from dspkg.cli_args import non_negative_float, non_negative_int, positive_int

if TYPE_CHECKING:
    from dspkg.bench.results import DiskState


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``bench`` to the ``dspkg`` command line."""
    p = subparsers.add_parser(
        "bench",
        help="measure pulls (or publishes) against s5cmd, zip and unzip on an emulated WAN",
        description="Run an S3 server (SeaweedFS, or moto) on 127.0.0.1 behind a WAN emulator "
        "and time dspkg against what users would use instead. Every figure is measured in "
        "this run; see docs/benchmarks.md.",
    )
    p.add_argument("--publish", action="store_true", help="measure publishing instead of pulling")
    p.add_argument(
        "--mount",
        action="store_true",
        help="measure reading through dspkg mount (first byte, a full pass, a random 1%%) "
        "against a cold pull",
    )
    p.add_argument(
        "--manifest",
        action="store_true",
        help="time writing, loading and validating a manifest of --files files "
        "(default 1,000,000); no servers",
    )
    p.add_argument(
        "--scale",
        action="store_true",
        help="publish and pull --files files (default 1,000,000) of --size bytes (default "
        "1000) on a local store: time, requests, peak memory, manifest load; no servers",
    )
    p.add_argument(
        "--dask-workers",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="with --scale: also publish the files on a Dask LocalCluster of N workers and "
        "check it gives the same version (needs dspkg[dask]; default 0: off)",
    )
    p.add_argument(
        "--files",
        type=positive_int,
        help=f"files to generate (default {PULL_FILES:,}; {PUBLISH_FILES:,} with --publish, "
        f"{MOUNT_FILES:,} with --mount)",
    )
    p.add_argument(
        "--size", type=non_negative_int, help="bytes per file (default 10000; 1000 with --scale)"
    )
    p.add_argument(
        "--rtt-ms", type=non_negative_float, default=RTT_MS, help="added round trip (default 30)"
    )
    p.add_argument(
        "--mbit",
        type=non_negative_float,
        default=MBIT,
        help="bandwidth cap in Mbit/s, 0 for unlimited (default 1000)",
    )
    p.add_argument(
        "--server",
        choices=SERVERS,
        default="seaweedfs",
        help="the S3 server behind the emulated link (default seaweedfs; moto for comparison "
        "with earlier results)",
    )
    p.add_argument(
        "--repeat",
        type=positive_int,
        default=REPEAT,
        help=f"rounds per disk state; each target is judged on the median of its per-round "
        f"values (default {REPEAT})",
    )
    p.add_argument(
        "--disk-states",
        type=_disk_states,
        metavar="STATES",
        help="pull mode: measure on a rested disk, right after deleting the previous round's "
        "trees, or both (rested, deleted, rested,deleted; default both)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object with every figure")
    p.add_argument(
        "--markdown", action="store_true", help="also print a Markdown block for the docs"
    )
    p.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temp dir)")
    p.set_defaults(handler=run_command)


def run_command(args: argparse.Namespace) -> int:
    from dspkg.bench.machine import describe
    from dspkg.bench.mount_bench import run_mount
    from dspkg.bench.publish_bench import run_publish
    from dspkg.bench.pull_bench import run_pull
    from dspkg.bench.report import markdown, text
    from dspkg.bench.results import Report
    from dspkg.bench.settings import BenchSettings

    if args.scale:
        return _run_scale(args)
    if args.dask_workers:
        from dspkg.errors import UsageError

        raise UsageError("--dask-workers: only with --scale")
    if args.size is None:
        args.size = FILE_SIZE
    if args.manifest:
        from dspkg.bench.manifest_bench import describe as describe_manifest
        from dspkg.bench.manifest_bench import run_manifest

        figures = run_manifest(args.files or 1_000_000)
        print(json.dumps(figures, indent=2) if args.json else describe_manifest(figures))
        return 0
    mode: Mode = "publish" if args.publish else "mount" if args.mount else "pull"
    files = args.files or (
        PUBLISH_FILES if args.publish else MOUNT_FILES if args.mount else PULL_FILES
    )
    states: tuple[DiskState, ...] = args.disk_states or (
        ("rested", "deleted") if mode == "pull" else ("rested",)
    )
    if mode != "pull" and states != ("rested",):
        from dspkg.errors import UsageError

        raise UsageError(
            f"--disk-states {','.join(states)}: only pull mode measures after deletions "
            "(publishing and mounting create few files); leave the option out"
        )
    settings = BenchSettings(
        files=files,
        size=args.size,
        rtt_ms=args.rtt_ms,
        mbit=args.mbit,
        repeat=args.repeat,
        server=args.server,
        disk_states=states,
    )
    work = _work_dir(args.keep)
    try:
        _check_space(work, settings.disk_bytes_needed(mode))
    except BaseException:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
        raise
    _stop_on_sigterm()
    started_at = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    started = time.monotonic()
    say = _say(started)
    try:
        say(f"{mode} benchmark in {work}")
        scenario = {"publish": run_publish, "mount": run_mount, "pull": run_pull}[mode]
        # Other work on the machine skews every row; the load before the run tells.
        load = os.getloadavg() if hasattr(os, "getloadavg") else None
        outcome = scenario(settings, work, say)
        report = Report(
            mode=mode,
            config=settings.to_json(),
            machine=describe(work),
            rows=outcome.rows,
            targets=outcome.targets,
            started_at=started_at,
            seconds=time.monotonic() - started,
            facts={**outcome.facts, "load_average_at_start": load},
        )
        # The report first: removing a run's trees takes minutes at 100,000 files.
        if args.json:
            doc = report.to_json()
            doc["markdown"] = markdown(report)
            print(json.dumps(doc, indent=2), flush=True)
        else:
            print(text(report))
            if args.markdown:
                print()
                print(markdown(report))
            sys.stdout.flush()
    finally:
        if args.keep is None:
            say("removing the work directory")
            shutil.rmtree(work, ignore_errors=True)
    return 0


def _run_scale(args: argparse.Namespace) -> int:
    from dspkg.bench.scale_bench import describe, run_scale

    work = _work_dir(args.keep)
    _stop_on_sigterm()
    say = _say(time.monotonic())
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    try:
        figures = run_scale(
            args.files or 1_000_000,
            1000 if args.size is None else args.size,
            work,
            say,
            dask_workers=args.dask_workers,
        )
        figures["load_average_at_start"] = load
        # The figures first: removing millions of files takes minutes.
        print(json.dumps(figures, indent=2) if args.json else describe(figures), flush=True)
    finally:
        if args.keep is None:
            say("removing the work directory")
            shutil.rmtree(work, ignore_errors=True)
    return 0


def _disk_states(text: str) -> tuple[DiskState, ...]:
    from dspkg.bench.rounds import parse_disk_states

    try:
        return parse_disk_states(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _stop_on_sigterm() -> None:
    """``kill`` stops a run as Ctrl-C does: the server stopped, the work directory removed."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def _work_dir(keep: str | None) -> Path:
    if keep is None:
        return Path(tempfile.mkdtemp(prefix="dspkg-bench-"))
    path = Path(keep).absolute()
    path.mkdir(parents=True, exist_ok=True)
    if any(path.iterdir()):
        from dspkg.errors import InvalidArgument

        raise InvalidArgument(f"--keep {keep}: the directory must be absent or empty")
    return path


def _check_space(work: Path, needed: int) -> None:
    free = shutil.disk_usage(work).free
    if free < needed:
        from dspkg.errors import InvalidArgument

        raise InvalidArgument(
            f"the benchmark needs about {needed / 1e9:,.1f} GB free in {work} and the disk "
            f"has {free / 1e9:,.1f} GB: free space, give --keep DIR on a larger disk, or "
            "use fewer --files or --repeat"
        )


def _say(started: float) -> Callable[[str], None]:
    def say(line: str) -> None:
        print(f"[bench {time.monotonic() - started:6.1f} s] {line}", file=sys.stderr, flush=True)

    return say
