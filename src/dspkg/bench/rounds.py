"""The order of a benchmark's rounds and of the rows within them (pure).

Two rules keep a slow moment of the machine from deciding a target:

- Rows that compete (a dspkg pull and the baseline it is judged against) run side by
  side in every round, and their order flips from one round to the next (AB, BA, AB,
  ...), so whatever drifts during a round (writeback, the disk, other work) does not
  always tax the same one. Each round yields one ratio; the median of the rounds is the
  verdict, their min and max the spread.
- The disk is measured in two states. "rested": nothing deleted for minutes (the harness
  deletes nothing until a run ends). "deleted": within a minute of deleting the
  previous round's trees, when ext4 creates files several times slower (its inode
  allocator skips recently freed inodes). Rested rounds run first, then each "deleted"
  round deletes the round before it, syncs, and runs the competing rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dspkg.bench.results import DISK_STATES, DiskState


@dataclass(frozen=True)
class RoundPlan:
    """One round: its disk state, its number within that state (0-based), and whether it
    starts by deleting the previous round's trees. A priming round only leaves trees for
    the first "deleted" round to delete; it is not reported."""

    state: DiskState
    index: int
    delete_previous: bool
    priming: bool = False

    @property
    def name(self) -> str:
        return "priming" if self.priming else f"{self.state}-{self.index + 1}"


def plan_rounds(states: Sequence[DiskState], repeat: int) -> list[RoundPlan]:
    """Every round of a run, in order: ``repeat`` rested rounds, then ``repeat`` rounds
    after deletions (each state only if asked for)."""
    plans = []
    if "rested" in states:
        plans += [RoundPlan("rested", i, delete_previous=False) for i in range(repeat)]
    if "deleted" in states:
        if not plans:
            plans.append(RoundPlan("deleted", 0, delete_previous=False, priming=True))
        plans += [RoundPlan("deleted", i, delete_previous=True) for i in range(repeat)]
    return plans


def alternate(rows: Sequence[str], index: int) -> list[str]:
    """``rows`` in their order in even rounds, reversed in odd ones (AB, BA, AB, ...)."""
    return list(rows) if index % 2 == 0 else list(reversed(rows))


def parse_disk_states(text: str) -> tuple[DiskState, ...]:
    """``rested,deleted`` (either or both, any order) into states in run order; a
    ValueError names what is wrong."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in DISK_STATES]
    if unknown or not names:
        raise ValueError(f"{text!r}: give rested, deleted or both (rested,deleted)")
    return tuple(s for s in DISK_STATES if s in names)
