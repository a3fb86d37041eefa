"""Pull mode: a packaged version against the ways users would fetch the same files otherwise.

Setup, through an unthrottled link: one tree published as a packaged version and as an
unpackaged one (same blobs), a child version adding 1% new files, and a plain copy of
the files for s5cmd. Then, with the requested latency and cap, each method runs as its own
process into a fresh directory (and, for dspkg, a fresh cache unless the row is warm).
"""

from __future__ import annotations

import time
from pathlib import Path

from dspkg.bench import data
from dspkg.bench.floors import creation_floor, network_floor
from dspkg.bench.harness import S3Lab, Say
from dspkg.bench.processes import dspkg_argv
from dspkg.bench.results import Outcome, Row, Target, combine_rounds, ratio
from dspkg.bench.scenario import (
    check_tree,
    dspkg_figures,
    local_row,
    s3_url,
    s5cmd_argv,
    store_row,
    testbed_facts,
)
from dspkg.bench.settings import DATASET, BenchSettings
from dspkg.bench.tools import S5CMD_MISSING, find_s5cmd, require
from dspkg.layout import PACKAGE_SUFFIX

PACKAGED = f"dataset://{DATASET}/packaged"
PLAIN = f"dataset://{DATASET}/plain"
CHILD = f"dataset://{DATASET}/child"
STORE_PREFIX = "store"
PLAIN_PREFIX = "plain"

# Files the disk probe creates before and after the rounds.
PROBE_FILES = 2_000
# How far apart the two probes may be before the run is flagged.
DISK_DRIFT = 1.5


def disk_note(before: float, after: float) -> str | None:
    """A note when file creation ran at clearly different speeds before and after."""
    if min(before, after) * DISK_DRIFT >= max(before, after):
        return None
    return (
        f"file creation on the work disk ran at {before:,.0f} files/s before the "
        f"measurements and {after:,.0f} after; rows that create files are not comparable "
        "within this run (ext4 creates files slowly for minutes after mass deletions: "
        "run again on a quiet disk)"
    )


class PullBench:
    def __init__(self, settings: BenchSettings, work: Path, lab: S3Lab, say: Say) -> None:
        self.s = settings
        self.work = work
        self.lab = lab
        self.say = say
        self.store = s3_url(STORE_PREFIX)
        self.s5cmd = find_s5cmd()
        self.child_files = max(settings.files // 100, 1)
        self.rows: dict[str, Row] = {}
        self.runs = work / "runs"
        self.creation_rates: list[float] = []

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
            self.lab.run(dspkg_argv("publish", str(outputs), "--json"), env=env)
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

    # -- measurements ----------------------------------------------------------------------

    def run(self) -> tuple[list[Row], list[Target]]:
        require("unzip", "install it (apt-get install unzip) for the zip + unzip baseline")
        self.setup()
        self.creation_rates = [self._creation_rate("before")]
        rounds = []
        for r in range(self.s.repeat):
            # Every round starts from empty directories and caches of its own.
            self.rows, self.runs = {}, self.work / "runs" / f"round-{r + 1}"
            if self.s.repeat > 1:
                self.say(f"round {r + 1} of {self.s.repeat}")
            self._round()
            # Nothing is deleted until the run ends: ext4 makes new files slow for minutes
            # after many were deleted (its inode allocator skips recently freed inodes),
            # which would tax the rows after a deletion and not the others.
            rounds.append(self.rows)
        self.rows = {row.key: row for row in combine_rounds(rounds)}
        self.creation_rates.append(self._creation_rate("after"))
        return list(self.rows.values()), self._targets()

    def _creation_rate(self, when: str) -> float:
        """Files per second the floor loop creates on the work disk right now: compared
        before and after the rounds, it tells whether the disk kept one speed."""
        files = min(self.s.files, PROBE_FILES)
        self.say(f"probing file creation on the work disk ({when} the measurements)")
        return files / creation_floor(self.work / "probes" / when, files, self.s.size)

    def _round(self) -> None:
        self._dspkg_pull("packaged_cold", "dspkg pull, packaged (cold cache)", PACKAGED, "cold")
        self._dspkg_pull("per_file_cold", "dspkg pull, unpackaged (per-file, cold)", PLAIN, "plain")
        self._s5cmd_per_file()
        self._s5cmd_zip_unzip()
        self._dspkg_pull("warm", "dspkg pull, packaged (warm cache)", PACKAGED, "warm")
        self._cp_al()
        self._dspkg_pull("delta", "dspkg pull, child +1% files (parent cached)", CHILD, "delta")
        self._floors()

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

    def _s5cmd_per_file(self) -> None:
        method = "s5cmd cp, per-file (256 workers)"
        if self.s5cmd is None:
            self.rows["s5cmd_per_file"] = Row(
                "s5cmd_per_file", method, self.s.files, skipped=S5CMD_MISSING
            )
            return
        for key, label, unthrottled in (
            ("s5cmd_per_file", method, False),
            ("s5cmd_per_file_no_wan", "s5cmd cp, per-file, no WAN (server-bound)", True),
        ):
            self.say(f"measuring: {label}")
            dest = self.runs / key / "dest"
            argv = s5cmd_argv(self.s5cmd, self.lab, "cp", s3_url(PLAIN_PREFIX, "*"), f"{dest}/")
            if unthrottled:
                with self.lab.unthrottled():
                    measured = self.lab.measure(argv, self.lab.env())
            else:
                measured = self.lab.measure(argv, self.lab.env())
            check_tree(dest, self.s.files, self.s.total_bytes, label)
            self.rows[key] = store_row(key, label, self.s.files, measured, "down")

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

    def _floors(self) -> None:
        s = self.s
        self.say("measuring: file-creation floor (lean single-threaded loop)")
        created = creation_floor(self.runs / "floor", s.files, s.size)
        self.rows["creation_floor"] = Row(
            "creation_floor", "floor: create the files (os.open/write/close)", s.files, created
        )
        self.rows["network_floor"] = Row(
            "network_floor",
            f"floor: bytes over {s.mbit:g} Mbit/s",
            s.files,
            network_floor(s.total_bytes, s.mbit),
        )

    # -- verdicts ------------------------------------------------------------------------

    def _targets(self) -> list[Target]:
        r = self.rows
        packaged, s5 = r["packaged_cold"], r["s5cmd_per_file"]
        floor = max(r["network_floor"].seconds or 0.0, r["creation_floor"].seconds or 0.0)
        delta = r["delta"].extra["dspkg"]
        no_s5 = S5CMD_MISSING if self.s5cmd is None else None
        return [
            Target(
                "packaged_vs_s5cmd",
                "cold packaged pull vs s5cmd per-file (s5cmd time / dspkg time)",
                ratio(s5, packaged),
                ">=",
                15.0,
                "x",
                no_s5,
            ),
            Target(
                "packaged_vs_zip_unzip",
                "cold packaged pull vs s5cmd package + unzip",
                ratio(r["s5cmd_zip_unzip"], packaged),
                ">=",
                1.3,
                "x",
                no_s5,
            ),
            Target(
                "packaged_vs_floor",
                "cold packaged pull / max(network floor, creation floor)",
                (packaged.seconds or 0.0) / floor if floor > 0 else None,
                "<=",
                1.5,
                "x",
            ),
            Target(
                "warm_vs_cp_al",
                "warm pull / cp -al",
                ratio(r["warm"], r["cp_al"]),
                "<=",
                1.2,
                "x",
            ),
            Target(
                "delta_bytes",
                "delta pull: bytes downloaded / child version bytes",
                100.0 * delta["bytes_downloaded"] / max(delta["bytes"], 1),
                "<=",
                3.0,
                "%",
            ),
            Target(
                "per_file_vs_s5cmd",
                "dspkg per-file pull vs s5cmd per-file (s5cmd time / dspkg time)",
                ratio(s5, r["per_file_cold"]),
                ">=",
                1.0,
                "x",
                no_s5,
            ),
        ]


def run_pull(settings: BenchSettings, work: Path, say: Say) -> Outcome:
    started = time.monotonic()
    with S3Lab(work, settings.link, say) as lab:
        bench = PullBench(settings, work, lab, say)
        rows, targets = bench.run()
        facts = testbed_facts(rows, lab)
        facts["creation_files_per_second"] = [round(r) for r in bench.creation_rates]
        note = disk_note(*bench.creation_rates)
        if note:
            facts["notes"].append(note)
    say(f"pull benchmark done in {time.monotonic() - started:.0f} s")
    return Outcome(tuple(rows), tuple(targets), facts)
