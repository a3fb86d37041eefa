"""A balanced, deterministic split of a version's files between the ranks of a job (pure).

Every machine computes the same split from the manifest alone, with no coordination:
the files (after any selection) in manifest order, which is path order and, for a
packaged version, package order, are cut into ``world`` contiguous runs, so each rank
reads a few long byte ranges rather than scattered files.

The cut is by bytes. Lay the files end to end on ``[0, T)`` (``T`` the total bytes); file
``i`` covers ``[C_i, C_i + s_i)`` and goes to the rank whose slice
``[r*T/W, (r+1)*T/W)`` holds its midpoint ``C_i + s_i/2``.

Bound: rank ``r`` holds exactly the files whose midpoints lie in its slice, and those
files are adjacent, covering ``[A, B)``. The first of them has its midpoint at or after
``r*T/W``, so ``A >= r*T/W - s/2``; the file before it has its midpoint before
``r*T/W`` and ends at ``A``, so ``A < r*T/W + s'/2``. The same holds at the upper end.
Hence ``|bytes(r) - T/W| <= max file size``: each rank is within one largest file of a
fair share (within 5% whenever the largest file is at most 5% of ``T/W``). Midpoints
never decrease along the files, so each rank's files are contiguous, every file goes to
exactly one rank, and the union of the ranks is the whole input.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate
from operator import add
from typing import TypeVar

from dspkg.errors import UsageError
from dspkg.manifest import FileEntry

T = TypeVar("T")
# The variables torchrun (and torch.distributed.launch, Lightning, Accelerate) set.
RANK_VARIABLE = "RANK"
WORLD_VARIABLE = "WORLD_SIZE"


@dataclass(frozen=True)
class Shard:
    """Rank ``rank`` of ``world`` (0 <= rank < world)."""

    rank: int
    world: int

    def __post_init__(self) -> None:
        if self.world < 1:
            raise UsageError(f"--shard {self}: WORLD must be at least 1")
        if not 0 <= self.rank < self.world:
            raise UsageError(
                f"--shard {self}: RANK must be from 0 to WORLD-1 (0 to {self.world - 1})"
            )

    def __str__(self) -> str:
        return f"{self.rank}/{self.world}"

    def take(self, files: Sequence[FileEntry]) -> tuple[FileEntry, ...]:
        """This rank's run of ``files``."""
        starts = split_points([f.size for f in files], self.world)
        return tuple(files[starts[self.rank] : starts[self.rank + 1]])


def split_points(sizes: Sequence[int], world: int) -> list[int]:
    """Where each rank's run starts, and ``len(sizes)`` last: rank ``r`` takes items
    ``[points[r], points[r + 1])``. By the midpoints of the cumulative byte ranges (see
    the module docstring); by count when every size is zero."""
    n = len(sizes)
    total = sum(sizes)
    if total == 0:
        return [r * n // world for r in range(world)] + [n]
    ends = list(accumulate(sizes))
    # Twice each midpoint, in integers: C_i + C_(i+1).
    doubled = list(map(add, [0, *ends[:-1]], ends))
    # Rank r starts at the first file whose midpoint is at least r*T/W.
    starts = [bisect.bisect_left(doubled, -(-2 * total * r // world)) for r in range(world)]
    return [*starts, n]


def parse_shard(text: str, env: Mapping[str, str]) -> Shard:
    """``RANK/WORLD``, or ``auto``: ``RANK`` and ``WORLD_SIZE`` from ``env`` (the caller
    passes the environment; nothing here reads it)."""
    if text.strip().lower() == "auto":
        rank, world = env.get(RANK_VARIABLE), env.get(WORLD_VARIABLE)
        if rank is None or world is None:
            raise UsageError(
                f"--shard auto needs {RANK_VARIABLE} and {WORLD_VARIABLE} in the environment "
                "(torchrun sets them); give --shard RANK/WORLD instead"
            )
        return Shard(
            _whole(rank, f"{RANK_VARIABLE}={rank!r}"), _whole(world, f"{WORLD_VARIABLE}={world!r}")
        )
    rank_text, sep, world_text = text.partition("/")
    if not sep:
        raise UsageError(f"--shard {text!r}: expected RANK/WORLD such as 0/4, or auto")
    what = f"--shard {text!r}"
    return Shard(_whole(rank_text, what), _whole(world_text, what))


def _whole(text: str, what: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise UsageError(f"{what}: {text.strip()!r} is not a whole number") from None
