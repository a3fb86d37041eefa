"""The knobs of one benchmark run, fixed at the command line."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from dspkg.bench.results import DiskState
    from dspkg.bench.wan import WanConfig

ServerKind = Literal["seaweedfs", "moto"]
SERVERS: tuple[ServerKind, ...] = ("seaweedfs", "moto")
SERVER_NAMES: dict[ServerKind, str] = {"seaweedfs": "SeaweedFS", "moto": "moto"}

DATASET = "bench"
PULL_FILES = 10_000
PUBLISH_FILES = 20_000
MOUNT_FILES = 100_000
FILE_SIZE = 10_000
RTT_MS = 30.0
MBIT = 1000.0
REPEAT = 3  # rounds: a target's verdict is the median of its per-round ratios

Mode = Literal["pull", "publish", "mount"]
# Copies of the generated tree a run keeps on its work disk at its fullest, counted from
# the rows (a hardlinked DEST costs no copy; a cache, an unzipped tree, a download, a
# server's copy or the floor's files cost one each). Setup: the tree itself and what the
# server holds. A round: what its rows leave; rounds are kept until the run ends (a
# "deleted" round removes the one before it).
_SETUP_COPIES: dict[Mode, int] = {"pull": 5, "publish": 1, "mount": 2}
_ROUND_COPIES: dict[Mode, int] = {"pull": 9, "publish": 4, "mount": 2}
_DELETED_ROUND_COPIES = 4  # the cold pull, s5cmd's download and unzip, the floor
_BLOCK = 4096  # a file takes whole blocks on the work disk


@dataclass(frozen=True)
class BenchSettings:
    files: int
    size: int
    rtt_ms: float = RTT_MS
    mbit: float = MBIT
    repeat: int = REPEAT  # rounds of measurements (per disk state)
    server: ServerKind = "seaweedfs"
    disk_states: tuple[DiskState, ...] = ("rested",)

    @property
    def link(self) -> WanConfig:
        # Imported here: `dspkg` imports this module at every start, the emulator only runs
        # in the benchmark.
        from dspkg.bench.wan import WanConfig

        return WanConfig(rtt_ms=self.rtt_ms, mbit=self.mbit)

    @property
    def total_bytes(self) -> int:
        return self.files * self.size

    def disk_bytes_needed(self, mode: Mode) -> int:
        """About how much the work disk must have free for a run of ``mode``: a run that
        fills the disk fails in its second round, after many minutes."""
        copy = self.files * -(-self.size // _BLOCK) * _BLOCK
        kept = self.repeat * _ROUND_COPIES[mode] if "rested" in self.disk_states else 0
        if mode == "pull" and "deleted" in self.disk_states:
            kept = max(kept, 2 * _DELETED_ROUND_COPIES)
        return copy * (_SETUP_COPIES[mode] + kept)

    def to_json(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "size": self.size,
            "bytes": self.total_bytes,
            "rtt_ms": self.rtt_ms,
            "mbit": self.mbit,
            "repeat": self.repeat,
            "server": self.server,
            "disk_states": list(self.disk_states),
        }
