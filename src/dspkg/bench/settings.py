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
