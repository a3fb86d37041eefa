"""What changed between two versions: added, removed and changed files (pure).

Manifests list their files sorted by path, so one merge walk over both lists finds every
difference in linear time without building a dictionary of a million paths. A file is
*changed* when its path is in both versions with other bytes (sha256 or size); where a
file lives (package, offset) is transport, not content, and never counts as a change.

``dspkg diff``, :func:`dspkg.diff` and the web page's diff all come from :func:`diff_files`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from dspkg.manifest import FileEntry

ChangeKind = Literal["added", "removed", "changed"]
KINDS: tuple[ChangeKind, ...] = ("added", "removed", "changed")


class Change(NamedTuple):
    """One path that differs; ``a`` is its entry in the first version, ``b`` in the second."""

    path: str
    kind: ChangeKind
    a: FileEntry | None
    b: FileEntry | None

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "change": self.kind,
            "size_a": self.a.size if self.a else None,
            "size_b": self.b.size if self.b else None,
            "sha256_a": self.a.sha256 if self.a else None,
            "sha256_b": self.b.sha256 if self.b else None,
        }


@dataclass(frozen=True)
class DiffCounts:
    files: int = 0
    bytes: int = 0

    def to_json(self) -> dict[str, int]:
        return {"files": self.files, "bytes": self.bytes}


@dataclass(frozen=True)
class VersionDiff:
    """The differences from version ``a`` to version ``b``, in path order.

    ``changed.bytes`` are the changed files' sizes in ``b``, ``changed_bytes_a`` in ``a``.
    """

    a: str
    b: str
    changes: tuple[Change, ...]
    added: DiffCounts
    removed: DiffCounts
    changed: DiffCounts
    changed_bytes_a: int
    unchanged: DiffCounts

    @property
    def bytes_a_to_b(self) -> int:
        """Bytes of ``b`` that ``a`` lacks: added files plus the new content of changed ones."""
        return self.added.bytes + self.changed.bytes

    @property
    def bytes_b_to_a(self) -> int:
        """Bytes of ``a`` that ``b`` lacks: removed files plus the old content of changed ones."""
        return self.removed.bytes + self.changed_bytes_a

    @property
    def identical(self) -> bool:
        return not self.changes

    def of_kind(self, kind: ChangeKind | None) -> Sequence[Change]:
        if kind is None:
            return self.changes
        return [c for c in self.changes if c.kind == kind]

    def summary_json(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "added": self.added.to_json(),
            "removed": self.removed.to_json(),
            "changed": {**self.changed.to_json(), "bytes_a": self.changed_bytes_a},
            "unchanged": self.unchanged.to_json(),
            "bytes_a_to_b": self.bytes_a_to_b,
            "bytes_b_to_a": self.bytes_b_to_a,
        }

    def to_json(self) -> dict[str, Any]:
        """The summary and every change (what ``dspkg diff --json`` prints)."""
        return {**self.summary_json(), "changes": [c.to_json() for c in self.changes]}


def diff_files(
    a_files: Sequence[FileEntry], b_files: Sequence[FileEntry], *, a: str = "a", b: str = "b"
) -> VersionDiff:
    """Compare two file lists sorted by path (as every manifest's are)."""
    changes: list[Change] = []
    add_n = add_b = rem_n = rem_b = chg_n = chg_b = chg_a = same_n = same_b = 0
    i = j = 0
    n, m = len(a_files), len(b_files)
    while i < n and j < m:
        fa, fb = a_files[i], b_files[j]
        if fa.path == fb.path:
            if fa.sha256 == fb.sha256 and fa.size == fb.size:
                same_n += 1
                same_b += fa.size
            else:
                changes.append(Change(fa.path, "changed", fa, fb))
                chg_n += 1
                chg_a += fa.size
                chg_b += fb.size
            i += 1
            j += 1
        elif fa.path < fb.path:
            changes.append(Change(fa.path, "removed", fa, None))
            rem_n += 1
            rem_b += fa.size
            i += 1
        else:
            changes.append(Change(fb.path, "added", None, fb))
            add_n += 1
            add_b += fb.size
            j += 1
    for fa in a_files[i:]:
        changes.append(Change(fa.path, "removed", fa, None))
        rem_n += 1
        rem_b += fa.size
    for fb in b_files[j:]:
        changes.append(Change(fb.path, "added", None, fb))
        add_n += 1
        add_b += fb.size
    return VersionDiff(
        a=a,
        b=b,
        changes=tuple(changes),
        added=DiffCounts(add_n, add_b),
        removed=DiffCounts(rem_n, rem_b),
        changed=DiffCounts(chg_n, chg_b),
        changed_bytes_a=chg_a,
        unchanged=DiffCounts(same_n, same_b),
    )
