"""Publish mode: packaging a tree against zipping it, and uploading it against s5cmd.

Each dspkg publish gets a version name and a store (or prefix) of its own, so none is a
no-op republish. The tree is read once before every timed run, so each starts from a warm
page cache and compares the work, not the disk's read speed. The rows that compete run
side by side, their order flipped every round (see :mod:`dspkg.bench.rounds`); each
target is computed per round and the median of the rounds decides it.

Publishing creates a few large files (packages, a zip), not many small ones, so the
state of the disk after deletions does not enter it: only rested rounds are run.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from dspkg.bench import data
from dspkg.bench.harness import S3Lab, Say
from dspkg.bench.processes import dspkg_argv
from dspkg.bench.results import Outcome, Row, Target, combine_rounds, combine_targets, ratio
from dspkg.bench.rounds import alternate
from dspkg.bench.scenario import (
    PER_FILE_GOAL,
    dspkg_figures,
    floor_row,
    reach_note,
    s3_url,
    s5cmd_argv,
    store_row,
    testbed_facts,
)
from dspkg.bench.settings import DATASET, BenchSettings
from dspkg.bench.tools import S5CMD_MISSING, find_s5cmd, require
from dspkg.store import PART_SIZE, UPLOAD_CONCURRENCY

RSS_LIMIT_MB = 300.0
LOCAL_PAIR = ("publish_local", "zip_local")
S3_PAIR = ("publish_s3", "s5cmd_upload")


class PublishBench:
    def __init__(self, settings: BenchSettings, work: Path, lab: S3Lab, say: Say) -> None:
        self.s = settings
        self.work = work
        self.lab = lab
        self.say = say
        self.s5cmd = find_s5cmd()
        self.outputs = work / "outputs"
        self.paths: list[str] = []
        self.rows: dict[str, Row] = {}
        self.runs = work / "runs"
        self.round = 1

    def run(self) -> tuple[list[Row], list[Target]]:
        require("zip", "install it (apt-get install zip) for the zip -0 baseline")
        s = self.s
        self.say(f"generating {s.files:,} files of {s.size:,} bytes")
        self.paths = data.generate(self.outputs, range(s.files), s.size)
        measure = {
            "publish_local": self._publish_local,
            "zip_local": self._zip,
            "publish_s3": self._publish_s3,
            "s5cmd_upload": self._s5cmd_upload,
        }
        rounds = []
        for r in range(1, s.repeat + 1):
            # Each round publishes new version names into new stores and prefixes.
            self.rows, self.runs, self.round = {}, self.work / "runs" / f"round-{r}", r
            if s.repeat > 1:
                self.say(f"round {r} of {s.repeat}")
            for key in (*alternate(LOCAL_PAIR, r - 1), *alternate(S3_PAIR, r - 1)):
                measure[key]()
            self._upload_floor()
            # Nothing is deleted until the run ends: ext4 makes new files slow for minutes
            # after many were deleted (its inode allocator skips recently freed inodes),
            # which would tax the rows after a deletion and not the others.
            rounds.append(self.rows)
        targets = combine_targets([self._targets(r) for r in rounds])
        return combine_rounds(rounds), targets

    def _name(self, version: str) -> None:
        """Point the tree's metadata at a fresh version, then warm the page cache."""
        uri = f"dataset://{DATASET}/{version}"
        data.write_metadata(self.outputs, self.paths, [{"uri": uri, "packaging": True}])
        data.warm(self.outputs)

    def _publish_local(self) -> None:
        key, method = "publish_local", "dspkg publish --packages-only, file:// store"
        self.say(f"measuring: {method}")
        self._name(f"local-{self.round}")
        store = self.runs / key / "store"
        env = self.lab.env(cache=self.runs / key / "cache")
        argv = dspkg_argv(
            "publish", str(self.outputs), "--packages-only", "--store", f"file://{store}", "--json"
        )
        sample = self.lab.run(argv, env=env)
        self.rows[key] = Row(
            key=key,
            method=method,
            files=self.s.files,
            seconds=sample.seconds,
            peak_rss_kib=sample.peak_rss_kib,
            cpu_seconds=sample.cpu_seconds,
            extra={"dspkg": dspkg_figures(sample)},
        )

    def _zip(self) -> None:
        key, method = "zip_local", "zip -0 -r -q of the same tree"
        self.say(f"measuring: {method}")
        data.warm(self.outputs)
        out = self.runs / key / "tree.zip"
        out.parent.mkdir(parents=True)
        sample = self.lab.run(
            ["zip", "-0", "-r", "-q", str(out), ".", "-x", data.METADATA], cwd=self.outputs
        )
        self.rows[key] = Row(
            key=key,
            method=method,
            files=self.s.files,
            seconds=sample.seconds,
            peak_rss_kib=sample.peak_rss_kib,
            cpu_seconds=sample.cpu_seconds,
            extra={"zip_bytes": out.stat().st_size},
        )

    def _publish_s3(self) -> None:
        key, method = "publish_s3", "dspkg publish --packaging --packages-only, S3"
        self.say(f"measuring: {method}")
        self._name(f"s3-{self.round}")
        env = self.lab.env(store=s3_url(f"publish-{self.round}"), cache=self.runs / key / "cache")
        argv = dspkg_argv("publish", str(self.outputs), "--packaging", "--packages-only", "--json")
        measured = self.lab.measure(argv, env)
        figures = dspkg_figures(measured.sample)
        self.rows[key] = store_row(key, method, self.s.files, measured, "up", {"dspkg": figures})

    def _s5cmd_upload(self) -> None:
        key, method = "s5cmd_upload", "s5cmd cp, per-file upload (256 workers)"
        if self.s5cmd is None:
            self.rows[key] = Row(key, method, self.s.files, skipped=S5CMD_MISSING)
            return
        self.say(f"measuring: {method}")
        data.warm(self.outputs)
        argv = s5cmd_argv(
            self.s5cmd,
            self.lab,
            "cp",
            "--exclude",
            data.METADATA,
            f"{self.outputs}/*",
            s3_url(f"plain-upload-{self.round}") + "/",
        )
        measured = self.lab.measure(argv, self.lab.env())
        self.rows[key] = store_row(key, method, self.s.files, measured, "up")

    def _upload_floor(self) -> None:
        """The S3 publish's package bytes up the link as it uploads them (multipart, same
        parts, same concurrency), from memory by a child that reads no file: the floor
        this server and link put under the publish, the server's work included."""
        key = "upload_floor"
        method = (
            f"floor: the package bytes up the link (multipart, {PART_SIZE >> 20} MiB parts, "
            f"{UPLOAD_CONCURRENCY} at once, from memory)"
        )
        self.say(f"measuring: {method}")
        versions = self.rows["publish_s3"].extra["dspkg"]["versions"]
        sizes = [p["size"] for v in versions for p in v["packages"]]
        prefix = f"upload-floor-{self.round}"
        objects = [(f"{prefix}/{i}.bin", size) for i, size in enumerate(sizes)]
        self.rows[key] = floor_row(self.lab, key, method, self.s.files, "put", objects)

    def _targets(self, r: dict[str, Row]) -> list[Target]:
        no_s5 = S5CMD_MISSING if self.s5cmd is None else None
        return [
            Target(
                "publish_local_vs_zip",
                "local publish / zip -0 -r",
                ratio(r["publish_local"], r["zip_local"]),
                "<=",
                1.3,
                "x",
                answers="issue 13",
            ),
            Target(
                "publish_s3_vs_s5cmd",
                "S3 publish vs s5cmd per-file upload (s5cmd time / dspkg time)",
                ratio(r["s5cmd_upload"], r["publish_s3"]),
                ">=",
                PER_FILE_GOAL,
                "x",
                no_s5,
                answers="issue 13",
            ),
            Target(
                "publish_local_rss",
                "peak RSS of the local publish",
                r["publish_local"].peak_rss_mb,
                "<",
                RSS_LIMIT_MB,
                "MB",
                answers="earlier goal",
                worst_round=True,
            ),
            Target(
                "publish_s3_rss",
                "peak RSS of the S3 publish",
                r["publish_s3"].peak_rss_mb,
                "<",
                RSS_LIMIT_MB,
                "MB",
                answers="earlier goal",
                worst_round=True,
            ),
        ]


def upload_reach(rows: Sequence[Row], mbit: float) -> str | None:
    """:func:`reach_note` for the publish's per-file goal, once its rows are combined."""
    by_key = {r.key: r for r in rows}
    per_file, floor = by_key.get("s5cmd_upload"), by_key.get("upload_floor")
    if per_file is None or per_file.skipped or floor is None:
        return None
    return reach_note(per_file, floor, PER_FILE_GOAL, "a publish", mbit)


def run_publish(settings: BenchSettings, work: Path, say: Say) -> Outcome:
    started = time.monotonic()
    with S3Lab(work, settings.link, say, settings.server) as lab:
        rows, targets = PublishBench(settings, work, lab, say).run()
        facts = testbed_facts(rows, lab)
        reach = upload_reach(rows, settings.mbit)
        if reach:
            facts["notes"].append(reach)
    say(f"publish benchmark done in {time.monotonic() - started:.0f} s")
    return Outcome(tuple(rows), tuple(targets), facts)
