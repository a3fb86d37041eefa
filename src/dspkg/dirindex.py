"""A version's directory tree, built once from its manifest (pure).

The mount answers ``stat``, ``ls`` and ``os.walk`` from this index alone: a listing
never costs a request. Paths are absolute within the mount (``/cat/1.jpg``), as FUSE
passes them; the manifest's path rules guarantee that no file is also a directory.
"""

from __future__ import annotations

from dataclasses import dataclass

from dspkg.manifest import Manifest

DIRECTORY = -1


@dataclass(frozen=True)
class DirectoryIndex:
    files: dict[str, int]  # "/a/b.jpg" -> index in the manifest
    children: dict[str, dict[str, int]]  # "/a" -> {name: file index, or DIRECTORY}

    @classmethod
    def of(cls, manifest: Manifest) -> DirectoryIndex:
        files: dict[str, int] = {}
        children: dict[str, dict[str, int]] = {"/": {}}
        for index, f in enumerate(manifest.files):
            path = "/" + f.path
            files[path] = index
            parent, _, name = path.rpartition("/")
            parent = parent or "/"
            entries = children.get(parent)
            if entries is None:
                entries = children[parent] = {}
                _add_parents(children, parent)
            entries[name] = index
        return cls(files, children)

    def file(self, path: str) -> int | None:
        return self.files.get(path)

    def is_dir(self, path: str) -> bool:
        return path in self.children

    def listing(self, path: str) -> list[tuple[str, int]]:
        """The entries of directory ``path``, sorted by name."""
        return sorted(self.children[path].items())

    def subdirectories(self, path: str) -> int:
        return sum(1 for v in self.children[path].values() if v == DIRECTORY)


def _add_parents(children: dict[str, dict[str, int]], path: str) -> None:
    """Record ``path`` in its parent, and the parent in its own, up to the first known."""
    while path != "/":
        parent, _, name = path.rpartition("/")
        parent = parent or "/"
        entries = children.get(parent)
        known = entries is not None
        if entries is None:
            entries = children[parent] = {}
        entries[name] = DIRECTORY
        if known:
            return
        path = parent
