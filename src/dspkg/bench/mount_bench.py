"""Mount mode: reading a packaged version through ``dspkg mount`` against pulling it first.

Setup, unthrottled: one tree published as a packaged version. Then, with the requested
latency and cap, each row runs as its own measured process with a fresh cache, after a
sync (the rows that compete alternate round by round, ``--repeat`` rounds, as in the pull
bench: each round gives one ratio, the median decides, min and max are the spread):

- a cold ``dspkg pull``, then reading every file of DEST in os.walk order;
- ``dspkg mount``, the first file's bytes (time from starting the mount), then every
  file through the mount in os.walk order;
- ``dspkg mount``, then a seeded random 1% of the files.

Bytes and requests are what crossed the emulated link during each row.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from dspkg.bench import data
from dspkg.bench.harness import S3Lab, Say
from dspkg.bench.processes import dspkg_argv
from dspkg.bench.results import Outcome, Row, Target, combine_rounds, combine_targets
from dspkg.bench.rounds import alternate
from dspkg.bench.scenario import check_tree, dspkg_figures, s3_url, store_row, testbed_facts
from dspkg.bench.settings import DATASET, BenchSettings

PACKAGED = f"dataset://{DATASET}/packaged"
STORE_PREFIX = "store"
DRIVER = [sys.executable, "-m", "dspkg.bench._mount_driver"]
PAIR = ("pull_read", "mount_pass")  # the rows that compete: alternated round by round


class MountBench:
    def __init__(self, settings: BenchSettings, work: Path, lab: S3Lab, say: Say) -> None:
        self.s = settings
        self.work = work
        self.lab = lab
        self.say = say
        self.store = s3_url(STORE_PREFIX)
        self.runs = work / "runs"
        self.rows: dict[str, Row] = {}

    def setup(self) -> None:
        s = self.s
        outputs = self.work / "outputs"
        self.say(f"generating {s.files:,} files of {s.size:,} bytes")
        paths = data.generate(outputs, range(s.files), s.size)
        data.write_metadata(outputs, paths, [{"uri": PACKAGED, "packaging": True}])
        env = {**self.lab.env(store=self.store), "VH_ENABLE_DATASET_VERSION_PACKAGING": "1"}
        with self.lab.unthrottled():
            self.say("setup: publishing the packaged version (unthrottled)")
            self.lab.run(dspkg_argv("publish", str(outputs), "--json"), env=env)

    def run(self) -> tuple[list[Row], list[Target]]:
        self.setup()
        measures = {"pull_read": self._pull_then_read, "mount_pass": self._mount_pass}
        rounds: list[dict[str, Row]] = []
        for index in range(self.s.repeat):
            # Every round starts from empty directories and caches of its own.
            self.rows, self.runs = {}, self.work / "runs" / f"rested-{index + 1}"
            self.say(f"round rested-{index + 1} ({index + 1} of {self.s.repeat})")
            for key in alternate(PAIR, index):
                # Each row from a server that has just served the packages, whichever
                # row ran before (see S3Lab.warm_server).
                self.lab.warm_server(STORE_PREFIX + "/")
                measures[key]()
            rounds.append(self.rows)
        # The random 1% is judged by its bytes (a seeded choice: the same in every round),
        # so it runs once, after the rounds.
        self.runs = self.work / "runs" / "random"
        self.rows = {}
        self.lab.warm_server(STORE_PREFIX + "/")
        self._mount("mount_random", "dspkg mount, a random 1% of the files", "random")
        random = self.rows["mount_random"]
        targets = combine_targets([self._pair_targets(r) for r in rounds])
        return [*combine_rounds(rounds), random], [*targets, self._random_target(random)]

    def _mount_pass(self) -> None:
        self._mount("mount_pass", "dspkg mount, every file in os.walk order", "pass")

    def _pull_then_read(self) -> None:
        method = "dspkg pull (cold), then read every file"
        self.say(f"measuring: {method}")
        run = self.runs / "pull"
        dest = run / "dest"
        run.mkdir(parents=True, exist_ok=True)
        env = self.lab.env(store=self.store, cache=run / "cache")
        pulled = self.lab.measure(dspkg_argv("pull", PACKAGED, str(dest), "--json"), env)
        figures = dspkg_figures(pulled.sample)
        check_tree(dest, figures["files"], figures["bytes"], method)
        read = self.lab.run([*DRIVER, "read", str(dest)])
        reading = json.loads(read.stdout)
        row = store_row("pull_read", method, self.s.files, pulled, "down", {"dspkg": figures})
        self.rows["pull_read"] = Row(
            key=row.key,
            method=row.method,
            files=row.files,
            seconds=pulled.sample.seconds + reading["seconds"],
            requests=row.requests,
            wire_bytes=row.wire_bytes,
            peak_rss_kib=row.peak_rss_kib,
            cpu_seconds=(row.cpu_seconds or 0) + read.cpu_seconds,
            extra={
                **row.extra,
                "pull_seconds": round(pulled.sample.seconds, 4),
                "read_seconds": round(reading["seconds"], 4),
            },
        )

    def _mount(self, key: str, method: str, mode: str) -> None:
        self.say(f"measuring: {method}")
        run = self.runs / key
        point = run / "mnt"
        point.mkdir(parents=True, exist_ok=True)
        env = self.lab.env(store=self.store, cache=run / "cache")
        argv = [
            *DRIVER,
            "mount",
            mode,
            str(point),
            "--",
            *dspkg_argv("mount", PACKAGED, str(point)),
        ]
        measured = self.lab.measure(argv, env)
        doc = json.loads(measured.sample.stdout)
        row = store_row(key, method, doc["files_read"], measured, "down")
        self.rows[key] = Row(
            key=key,
            method=method,
            files=doc["files_read"],
            seconds=doc["seconds"],
            requests=row.requests,
            wire_bytes=row.wire_bytes,
            peak_rss_kib=doc["mount_peak_rss_kib"],
            cpu_seconds=row.cpu_seconds,
            extra={
                **row.extra,
                "first_byte_seconds": round(doc["first_byte_seconds"], 4),
                "mounted_seconds": round(doc["mounted_seconds"], 4),
                "bytes_read": doc["bytes_read"],
            },
        )

    def _pair_targets(self, r: dict[str, Row]) -> list[Target]:
        """The targets one round's pair of rows answers."""
        passed, pull = r["mount_pass"], r["pull_read"]
        return [
            Target(
                "mount_first_byte",
                "mount: seconds from starting dspkg mount to the first file's bytes",
                passed.extra["first_byte_seconds"],
                "<=",
                1.0,
                "s",
                answers="issue 10",
            ),
            Target(
                "mount_pass_vs_pull",
                "mount: every file read through the mount / (cold pull + reading DEST)",
                (passed.seconds or 0) / pull.seconds if pull.seconds else None,
                "<=",
                1.5,
                "x",
                answers="issue 10",
            ),
            Target(
                "mount_rss",
                "mount: peak RSS of the mount process (full pass)",
                passed.peak_rss_mb,
                "<",
                300.0,
                "MB",
                answers="issue 10",
                worst_round=True,
            ),
        ]

    def _random_target(self, rand: Row) -> Target:
        percent = 100.0 * (rand.wire_bytes or 0) / max(self.s.total_bytes, 1)
        return Target(
            "mount_random_bytes",
            "mount: bytes downloaded for a random 1% of files / version bytes",
            percent,
            "<=",
            3.0,
            "%",
            answers="issue 10",
            rounds=(percent,),
        )


def run_mount(settings: BenchSettings, work: Path, say: Say) -> Outcome:
    started = time.monotonic()
    with S3Lab(work, settings.link, say, settings.server) as lab:
        bench = MountBench(settings, work, lab, say)
        rows, targets = bench.run()
        facts = testbed_facts(rows, lab)
    say(f"mount benchmark done in {time.monotonic() - started:.0f} s")
    return Outcome(tuple(rows), tuple(targets), facts)
