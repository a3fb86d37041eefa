"""Pull mode: a packaged version against the ways users would fetch the same files otherwise.

Setup, through an unthrottled link: one tree published as a packaged version and as an
unpackaged one (same blobs), a child version adding 1% new files, and a plain copy of
the files for s5cmd. Then, with the requested latency and cap, each method runs as its own
process into a fresh directory (and, for dspkg, a fresh cache unless the row is warm).

Rounds (see :mod:`dspkg.bench.rounds`): ``repeat`` rounds on a rested disk measure every
row, the competing ones side by side in alternating order; then ``repeat`` rounds after
deletions each delete the round before, sync, and measure the cold pull against s5cmd +
unzip (and the creation floor, to show what the disk does then). Each target is computed
per round; the median of the rounds decides it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from dspkg.bench import data
from dspkg.bench.floors import creation_floor, network_floor
from dspkg.bench.harness import S3Lab, Say
from dspkg.bench.processes import BenchError, dspkg_argv
from dspkg.bench.results import (
    DiskState,
    Outcome,
    Row,
    Target,
    at_scale,
    combine_rounds,
    combine_targets,
    ratio,
)
from dspkg.bench.rounds import RoundPlan, alternate, plan_rounds
from dspkg.bench.scenario import (
    PER_FILE_GOAL,
    check_tree,
    dspkg_figures,
    floor_row,
    local_row,
    reach_note,
    s3_url,
    s5cmd_argv,
    store_row,
    testbed_facts,
)
from dspkg.bench.settings import DATASET, BenchSettings
from dspkg.bench.tools import S5CMD_MISSING, find_s5cmd, require
from dspkg.layout import PACKAGE_SUFFIX
from dspkg.pull_plan import Tuning

PACKAGED = f"dataset://{DATASET}/packaged"
PLAIN = f"dataset://{DATASET}/plain"
CHILD = f"dataset://{DATASET}/child"
STORE_PREFIX = "store"
PLAIN_PREFIX = "plain"

# Files the disk probe creates before and after the rested rounds.
PROBE_FILES = 2_000
# How far apart the two probes may be before the run is flagged.
DISK_DRIFT = 1.5
# Rows measured side by side, their order flipped every round.
COLD_PAIR = ("packaged_cold", "s5cmd_zip_unzip")
PER_FILE_PAIR = ("per_file_cold", "s5cmd_per_file")
SHARDS = 4
# Sizes below which a goal set for large versions is shown but not judged.
LARGE = 100_000

ISSUE_13 = "issue 13"
ISSUE_11 = "issue 11"
EARLIER = "earlier goal"


def disk_note(before: float, after: float) -> str | None:
    """A note when file creation ran at clearly different speeds before and after."""
    if min(before, after) * DISK_DRIFT >= max(before, after):
        return None
    return (
        f"file creation on the work disk ran at {before:,.0f} files/s before the rested "
        f"rounds and {after:,.0f} after them; rows that create files are not comparable "
        "within those rounds (ext4 creates files slowly for minutes after mass deletions: "
        "run again on a quiet disk)"
    )


def per_file_reach(rows: Sequence[Row], files: int, mbit: float) -> str | None:
    """:func:`reach_note` for a run's combined rows, where the per-file goal is judged
    (``LARGE`` files or more, s5cmd present, the download floor measured)."""
    rested = {r.key: r for r in rows if r.state == "rested"}
    per_file, floor = rested.get("s5cmd_per_file"), rested.get("download_floor")
    if files < LARGE or per_file is None or per_file.skipped or floor is None:
        return None
    return reach_note(per_file, floor, PER_FILE_GOAL, "a cold pull", mbit)


def remove_tree(root: Path) -> int:
    """Delete ``root`` and everything under it; return how many files it held."""
    files = 0
    for folder, dirs, names in os.walk(root, topdown=False):
        for name in names:
            os.unlink(os.path.join(folder, name))
        files += len(names)
        for name in dirs:
            os.rmdir(os.path.join(folder, name))
    os.rmdir(root)
    return files


class PullBench:
    def __init__(self, settings: BenchSettings, work: Path, lab: S3Lab, say: Say) -> None:
        self.s = settings
        self.work = work
        self.lab = lab
        self.say = say
        self.store = s3_url(STORE_PREFIX)
        self.s5cmd = find_s5cmd()
        self.child_files = max(settings.files // 100, 1)
        self.packages = 0  # of the packaged version, as publishing it reported
        # Its packages (key in the bucket, size): what the download floor reads.
        self.package_objects: list[tuple[str, int]] = []
        self.rows: dict[str, Row] = {}
        self.runs = work / "runs"
        self.creation_rates: dict[str, float] = {}
        self.deletions: list[dict[str, object]] = []
        self._deleted_at: float | None = None
        self._measures: dict[str, Callable[[], None]] = {
            "packaged_cold": lambda: self._dspkg_pull(
                "packaged_cold", "dspkg pull, packaged (cold cache)", PACKAGED, "cold"
            ),
            "s5cmd_zip_unzip": self._s5cmd_zip_unzip,
            "per_file_cold": lambda: self._dspkg_pull(
                "per_file_cold", "dspkg pull, unpackaged (per-file, cold)", PLAIN, "plain"
            ),
            "s5cmd_per_file": lambda: self._s5cmd_per_file(no_wan=False),
        }

    # -- setup -------------------------------------------------------------------------

    def setup(self) -> None:
        s = self.s
        outputs, child = self.work / "outputs", self.work / "child"
        self.say(f"generating {s.files:,} files of {s.size:,} bytes")
        paths = data.generate(outputs, range(s.files), s.size)
        data.write_metadata(outputs, paths, [{"uri": PACKAGED, "packaging": True}, {"uri": PLAIN}])
        extra = data.generate(child, range(s.files, s.files + self.child_files), s.size, seed=2)
        data.write_metadata(child, extra, [{"uri": CHILD, "from": PACKAGED, "packaging": True}])
        env = {**self.lab.env(store=self.store), "VH_ENABLE_DATASET_VERSION_PACKAGING": "1"}
        with self.lab.unthrottled():
            self.say("setup: publishing the packaged and unpackaged versions (unthrottled)")
            published = self.lab.run(dspkg_argv("publish", str(outputs), "--json"), env=env)
            versions = dspkg_figures(published)["versions"]
            packages = next(v["packages"] for v in versions if v["uri"] == PACKAGED)
            self.packages = len(packages)
            self.package_objects = [(f"{STORE_PREFIX}/{p['key']}", p["size"]) for p in packages]
            self.say("setup: publishing the child version (+1% files)")
            self.lab.run(dspkg_argv("publish", str(child), "--json"), env=env)
            if self.s5cmd is not None:
                self.say("setup: uploading a plain copy of the files with s5cmd")
                self._s5cmd_upload(outputs, s3_url(PLAIN_PREFIX) + "/")

    def _s5cmd_upload(self, tree: Path, target: str) -> None:
        assert self.s5cmd is not None
        argv = s5cmd_argv(
            self.s5cmd, self.lab, "cp", "--exclude", data.METADATA, f"{tree}/*", target
        )
        self.lab.run(argv, env=self.lab.env())

    # -- rounds --------------------------------------------------------------------------

    def run(self) -> tuple[list[Row], list[Target]]:
        require("unzip", "install it (apt-get install unzip) for the zip + unzip baseline")
        self.setup()
        self.creation_rates["before"] = self._creation_rate("before")
        plans = plan_rounds(self.s.disk_states, self.s.repeat)
        measured: dict[DiskState, list[dict[str, Row]]] = {}
        previous: Path | None = None
        for n, plan in enumerate(plans):
            if plan.delete_previous:
                assert previous is not None
                self._delete(previous, plan)
            # Every round starts from empty directories and caches of its own.
            self.rows, self.runs = {}, self.work / "runs" / plan.name
            self.say(f"round {plan.name} ({n + 1} of {len(plans)})")
            if plan.state == "rested":
                self._rested_round(plan.index)
            else:
                self._deleted_round(plan.index)
            previous = self.runs
            if not plan.priming:
                round_rows = {k: replace(r, state=plan.state) for k, r in self.rows.items()}
                measured.setdefault(plan.state, []).append(round_rows)
            last_rested = plan.state == "rested" and (
                n + 1 == len(plans) or plans[n + 1].state != "rested"
            )
            if last_rested:
                # Before anything is deleted: did the disk keep one speed through the rounds?
                self.creation_rates["after"] = self._creation_rate("after")
        rows: list[Row] = []
        targets: list[Target] = []
        for state, rounds in measured.items():
            rows += combine_rounds(rounds)
            targets += combine_targets([self._targets(r, state) for r in rounds])
        return rows, targets

    def _rested_round(self, index: int) -> None:
        for key in alternate(COLD_PAIR, index):
            self._measure(key)
        self._download_floor()
        self._dspkg_pull("warm", "dspkg pull, packaged (warm cache)", PACKAGED, "warm")
        self._cp_al()
        self._dspkg_pull("delta", "dspkg pull, child +1% files (parent cached)", CHILD, "delta")
        for key in alternate(PER_FILE_PAIR, index):
            self._measure(key)
        self._s5cmd_per_file(no_wan=True)
        self._subset()
        self._shards()
        self._floors()

    def _deleted_round(self, index: int) -> None:
        for key in alternate(COLD_PAIR, index):
            self._measure(key)
        self._download_floor()
        self._floors()

    def _warm_server(self) -> None:
        """Before a row that reads packages: the server has just served them (see
        :meth:`S3Lab.warm_server`), whichever rows ran before."""
        self.lab.warm_server(STORE_PREFIX + "/")

    def _measure(self, key: str) -> None:
        if key in COLD_PAIR:
            self._warm_server()
        started = time.monotonic()
        self._measures[key]()
        if self._deleted_at is not None:
            row = self.rows[key]
            after = round(started - self._deleted_at, 1)
            self.rows[key] = replace(row, extra={**row.extra, "seconds_after_deletion": after})

    def _delete(self, previous: Path, plan: RoundPlan) -> None:
        """Delete the previous round's trees (DESTs, caches, downloads, floor files): the
        state the "after deletions" rows are measured in."""
        started = time.monotonic()
        files = remove_tree(previous)
        took = time.monotonic() - started
        self._deleted_at = time.monotonic()
        self.deletions.append(
            {
                "round": plan.name,
                "deleted": previous.name,
                "files": files,
                "seconds": round(took, 2),
            }
        )
        self.say(f"deleted round {previous.name}'s trees: {files:,} files in {took:.1f} s")

    def _creation_rate(self, when: str) -> float:
        """Files per second the floor loop creates on the work disk right now: compared
        before and after the rested rounds, it tells whether the disk kept one speed."""
        files = min(self.s.files, PROBE_FILES)
        self.say(f"probing file creation on the work disk ({when} the rested rounds)")
        return files / creation_floor(self.work / "probes" / when, files, self.s.size)

    # -- rows ----------------------------------------------------------------------------

    def _dspkg_pull(self, key: str, method: str, uri: str, run: str) -> None:
        self.say(f"measuring: {method}")
        # Warm and delta pulls reuse the cold pull's cache: the parent is already there.
        cache = self.runs / ("cold" if run in ("cold", "warm", "delta") else run) / "cache"
        dest = self.runs / run / "dest"
        dest.parent.mkdir(parents=True, exist_ok=True)
        env = self.lab.env(store=self.store, cache=cache)
        measured = self.lab.measure(dspkg_argv("pull", uri, str(dest), "--json"), env)
        figures = dspkg_figures(measured.sample)
        check_tree(dest, figures["files"], figures["bytes"], method)
        self.rows[key] = store_row(
            key, method, figures["files"], measured, "down", {"dspkg": figures}
        )

    def _s5cmd_per_file(self, *, no_wan: bool) -> None:
        key, method = "s5cmd_per_file", "s5cmd cp, per-file (256 workers)"
        if no_wan:
            key = "s5cmd_per_file_no_wan"
            method = f"s5cmd cp, per-file, no WAN ({self.lab.server_name}-bound)"
        if self.s5cmd is None:
            self.rows[key] = Row(key, method, self.s.files, skipped=S5CMD_MISSING)
            return
        self.say(f"measuring: {method}")
        dest = self.runs / key / "dest"
        argv = s5cmd_argv(self.s5cmd, self.lab, "cp", s3_url(PLAIN_PREFIX, "*"), f"{dest}/")
        if no_wan:
            with self.lab.unthrottled():
                measured = self.lab.measure(argv, self.lab.env())
        else:
            measured = self.lab.measure(argv, self.lab.env())
        check_tree(dest, self.s.files, self.s.total_bytes, method)
        self.rows[key] = store_row(key, method, self.s.files, measured, "down")

    def _s5cmd_zip_unzip(self) -> None:
        key, method = "s5cmd_zip_unzip", "s5cmd cp package + unzip -q"
        if self.s5cmd is None:
            self.rows[key] = Row(key, method, self.s.files, skipped=S5CMD_MISSING)
            return
        self.say(f"measuring: {method}")
        run = self.runs / key
        download, dest = run / "download", run / "dest"
        packages = s3_url(STORE_PREFIX, "packages", DATASET, "packaged", "*")
        argv = s5cmd_argv(self.s5cmd, self.lab, "cp", packages, f"{download}/")
        measured = self.lab.measure(argv, self.lab.env())
        unzips = [
            self.lab.run(["unzip", "-q", str(p), "-d", str(dest)])
            for p in sorted(download.rglob(f"*{PACKAGE_SUFFIX}"))
        ]
        check_tree(dest, self.s.files, self.s.total_bytes, method)
        row = store_row(key, method, self.s.files, measured, "down")
        s = measured.sample
        self.rows[key] = Row(
            key=key,
            method=method,
            files=self.s.files,
            seconds=s.seconds + sum(u.seconds for u in unzips),
            requests=row.requests,
            wire_bytes=row.wire_bytes,
            peak_rss_kib=max(s.peak_rss_kib, *(u.peak_rss_kib for u in unzips)),
            cpu_seconds=s.cpu_seconds + sum(u.cpu_seconds for u in unzips),
            extra={
                **row.extra,
                "download_seconds": round(s.seconds, 4),
                "unzip_seconds": round(sum(u.seconds for u in unzips), 4),
                "packages": len(unzips),
            },
        )

    def _cp_al(self) -> None:
        method = "cp -al of the pulled tree"
        self.say(f"measuring: {method}")
        source = self.runs / "cold" / "dest"
        dest = self.runs / "cp_al" / "dest"
        dest.parent.mkdir(parents=True, exist_ok=True)
        sample = self.lab.run(["cp", "-al", str(source), str(dest)])
        check_tree(dest, self.s.files, self.s.total_bytes, method)
        self.rows["cp_al"] = local_row("cp_al", method, self.s.files, sample)

    def _subset(self) -> None:
        """A tenth of the version chosen by a glob, into a fresh DEST and cache."""
        key = "subset"
        globs, expected = data.tenth_globs(self.s.files)
        shown = " ".join(f"--include '{g}'" for g in globs)
        method = f"dspkg pull {shown}, a tenth (cold cache)" if globs else "dspkg pull, a tenth"
        if not globs:
            self.rows[key] = Row(key, method, 0, skipped="fewer than 10 files")
            return
        self.say(f"measuring: {method}")
        run = self.runs / key
        run.mkdir(parents=True, exist_ok=True)
        dest = run / "dest"
        env = self.lab.env(store=self.store, cache=run / "cache")
        args = [arg for g in globs for arg in ("--include", g)]
        self._warm_server()
        measured = self.lab.measure(dspkg_argv("pull", PACKAGED, str(dest), "--json", *args), env)
        figures = dspkg_figures(measured.sample)
        if figures["selected_files"] != expected:
            raise BenchError(
                f"{shown} selected {figures['selected_files']:,} files, expected {expected:,}"
            )
        check_tree(dest, figures["selected_files"], figures["selected_bytes"], method)
        self.rows[key] = store_row(
            key, method, expected, measured, "down", {"dspkg": figures, "globs": globs}
        )

    def _shards(self) -> None:
        """Each rank of ``--shard r/4`` as its own machine (fresh DEST and cache), then the
        four DESTs together: the slowest rank is what a multi-node job waits for."""
        seen: dict[str, int] = {}
        ranks = []
        for rank in range(SHARDS):
            key, method = f"shard_{rank}", f"dspkg pull --shard {rank}/{SHARDS} (cold cache)"
            self.say(f"measuring: {method}")
            run = self.runs / key
            run.mkdir(parents=True, exist_ok=True)
            dest = run / "dest"
            env = self.lab.env(store=self.store, cache=run / "cache")
            argv = dspkg_argv("pull", PACKAGED, str(dest), "--json", "--shard", f"{rank}/{SHARDS}")
            self._warm_server()
            measured = self.lab.measure(argv, env)
            figures = dspkg_figures(measured.sample)
            check_tree(dest, figures["selected_files"], figures["selected_bytes"], method)
            for path in data.iter_files(dest):
                rel = path.relative_to(dest).as_posix()
                seen[rel] = seen.get(rel, 0) + 1
            row = store_row(
                key, method, figures["selected_files"], measured, "down", {"dspkg": figures}
            )
            self.rows[key] = row
            ranks.append(row)
        every = {data.rel_path(i) for i in range(self.s.files)}
        missing = len(every - seen.keys())
        doubled = sum(n - 1 for n in seen.values()) + len(seen.keys() - every)
        self.rows["shards_union"] = Row(
            key="shards_union",
            method=f"the {SHARDS} shards together (slowest rank)",
            files=len(seen),
            seconds=max(r.seconds or 0.0 for r in ranks),
            requests=sum(r.requests or 0 for r in ranks),
            wire_bytes=sum(r.wire_bytes or 0 for r in ranks),
            peak_rss_kib=max(r.peak_rss_kib or 0 for r in ranks),
            cpu_seconds=sum(r.cpu_seconds or 0.0 for r in ranks),
            extra={"missing": missing, "doubled_or_foreign": doubled},
        )

    def _download_floor(self) -> None:
        """The packages' bytes through the link in ranged GETs cut as the pull cuts them,
        read and dropped by a child that writes nothing: the floor this server and link
        put under the cold pull, time to first byte and ramp included."""
        key = "download_floor"
        parallel = Tuning().range_requests
        method = (
            f"floor: the packages' bytes through the link (ranged GETs, {parallel} at once, "
            "kept nowhere)"
        )
        self._warm_server()
        self.say(f"measuring: {method}")
        self.rows[key] = floor_row(self.lab, key, method, self.s.files, "get", self.package_objects)

    def _floors(self) -> None:
        s = self.s
        self.say("measuring: file-creation floor (lean single-threaded loop)")
        started = time.monotonic()
        created = creation_floor(self.runs / "floor", s.files, s.size)
        extra = {}
        if self._deleted_at is not None:
            extra["seconds_after_deletion"] = round(started - self._deleted_at, 1)
        self.rows["creation_floor"] = Row(
            "creation_floor",
            "floor: create the files (os.open/write/close)",
            s.files,
            created,
            extra=extra,
        )
        self.rows["network_floor"] = Row(
            "network_floor",
            f"floor: bytes over {s.mbit:g} Mbit/s",
            s.files,
            network_floor(s.total_bytes, s.mbit),
        )

    # -- verdicts ------------------------------------------------------------------------

    def _targets(self, r: dict[str, Row], state: DiskState) -> list[Target]:
        """The targets one round's rows answer (after deletions: the cold pull against
        s5cmd + unzip only, the target the issue asks for in both states)."""
        files = self.s.files
        packaged = r["packaged_cold"]
        no_s5 = S5CMD_MISSING if self.s5cmd is None else None
        targets = [
            Target(
                "packaged_vs_zip_unzip",
                "cold packaged pull vs s5cmd package + unzip -q",
                ratio(r["s5cmd_zip_unzip"], packaged),
                ">=",
                1.5,
                "x",
                no_s5,
                answers=ISSUE_13,
            )
        ]
        if state == "deleted":
            return [replace(t, state=state) for t in targets]
        floor = max(r["network_floor"].seconds or 0.0, r["creation_floor"].seconds or 0.0)
        delta = r["delta"].extra["dspkg"]
        targets += [
            at_scale(
                Target(
                    "packaged_vs_floor",
                    "cold packaged pull / max(network floor, creation floor)",
                    (packaged.seconds or 0.0) / floor if floor > 0 else None,
                    "<=",
                    1.3,
                    "x",
                    answers=ISSUE_13,
                ),
                files,
                LARGE,
            ),
            at_scale(
                Target(
                    "packaged_vs_s5cmd",
                    "cold packaged pull vs s5cmd per-file (s5cmd time / dspkg time)",
                    ratio(r["s5cmd_per_file"], packaged),
                    ">=",
                    PER_FILE_GOAL,
                    "x",
                    no_s5,
                    answers=ISSUE_13,
                ),
                files,
                LARGE,
            ),
            *self._subset_targets(r),
            *self._shard_targets(r),
            at_scale(
                Target(
                    "warm_vs_cp_al",
                    "warm pull / cp -al",
                    ratio(r["warm"], r["cp_al"]),
                    "<=",
                    1.2,
                    "x",
                    answers=EARLIER,
                ),
                files,
                LARGE,
            ),
            Target(
                "delta_bytes",
                "delta pull: bytes downloaded / child version bytes",
                100.0 * delta["bytes_downloaded"] / max(delta["bytes"], 1),
                "<=",
                3.0,
                "%",
                answers=EARLIER,
            ),
            Target(
                "per_file_vs_s5cmd",
                "dspkg per-file pull vs s5cmd per-file (s5cmd time / dspkg time)",
                ratio(r["s5cmd_per_file"], r["per_file_cold"]),
                ">=",
                1.0,
                "x",
                no_s5,
                answers=EARLIER,
            ),
        ]
        return targets

    def _subset_targets(self, r: dict[str, Row]) -> list[Target]:
        subset = r["subset"]
        why = subset.skipped
        return [
            Target(
                "subset_bytes",
                "a tenth by glob: bytes over the link / version bytes",
                None if why else 100.0 * (subset.wire_bytes or 0) / max(self.s.total_bytes, 1),
                "<=",
                12.0,
                "%",
                why,
                answers=ISSUE_11,
            ),
            Target(
                "subset_vs_full",
                "a tenth by glob: seconds / cold packaged pull seconds",
                None if why else ratio(subset, r["packaged_cold"]),
                "<=",
                0.2,
                "x",
                why,
                answers=ISSUE_11,
            ),
        ]

    def _shard_targets(self, r: dict[str, Row]) -> list[Target]:
        quarter = self.s.total_bytes / SHARDS
        ranks = [r[f"shard_{rank}"] for rank in range(SHARDS)]
        off = max(abs(row.extra["dspkg"]["selected_bytes"] / quarter - 1) for row in ranks)
        union = r["shards_union"].extra
        return [
            Target(
                "shard_balance",
                f"{SHARDS} shards: largest deviation of a rank's bytes from a quarter",
                100.0 * off,
                "<=",
                5.0,
                "%",
                answers=ISSUE_11,
            ),
            Target(
                "shard_ranged_gets",
                f"{SHARDS} shards: most ranged GETs of one rank (goal: packages + 2)",
                float(max(row.extra["ranged_requests"] for row in ranks)),
                "<=",
                float(self.packages + 2),
                "GETs",
                answers=ISSUE_11,
            ),
            Target(
                "shard_union",
                f"{SHARDS} shards: files missing from or doubled in their union",
                float(union["missing"] + union["doubled_or_foreign"]),
                "<=",
                0.0,
                "files",
                answers=ISSUE_11,
            ),
        ]


def run_pull(settings: BenchSettings, work: Path, say: Say) -> Outcome:
    started = time.monotonic()
    with S3Lab(work, settings.link, say, settings.server) as lab:
        bench = PullBench(settings, work, lab, say)
        rows, targets = bench.run()
        facts = testbed_facts(rows, lab)
        facts["packages"] = bench.packages
        facts["creation_files_per_second"] = {k: round(v) for k, v in bench.creation_rates.items()}
        facts["deletions"] = bench.deletions
        rates = bench.creation_rates
        note = disk_note(rates["before"], rates["after"]) if "after" in rates else None
        if note:
            facts["notes"].append(note)
        reach = per_file_reach(rows, settings.files, settings.mbit)
        if reach:
            facts["notes"].append(reach)
    say(f"pull benchmark done in {time.monotonic() - started:.0f} s")
    return Outcome(tuple(rows), tuple(targets), facts)
