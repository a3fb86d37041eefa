"""Every read of a manifest the web app makes, and what it keeps of them between requests.

Versions are immutable, so a manifest read once stays right for the life of the process:
:class:`ManifestCache` keeps the last few (bounded by their number of files) together with a
directory index built once, keyed by store and exact version. Aliases move, so they are
resolved on every request that names one. Only this module touches manifests; when they
become sharded, this is the one place to change.

Reading and validating a large manifest and indexing it take seconds of CPU; both run in
a worker thread so that other pages keep being served meanwhile.
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import threading
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dspkg.browse import files_per_package
from dspkg.catalog import Catalog
from dspkg.concurrency import run_sync
from dspkg.layout import manifest_key
from dspkg.manifest import FileEntry, Manifest
from dspkg.names import VersionUri
from dspkg.versiondiff import VersionDiff, diff_files

Key = tuple[str, str, str]
"""``(store URL, dataset, exact version)``."""


@dataclass(frozen=True)
class VersionFacts:
    """What the lists of datasets and versions show of one version."""

    dataset: str
    version: str
    parent: str | None
    created_at: str
    files: int
    bytes: int
    packages: int
    package_bytes: int
    blobs: bool

    @property
    def uri(self) -> str:
        return str(VersionUri(self.dataset, self.version))

    @classmethod
    def of(cls, manifest: Manifest) -> VersionFacts:
        return cls(
            dataset=manifest.dataset,
            version=manifest.version,
            parent=manifest.parent,
            created_at=manifest.created_at,
            files=len(manifest.files),
            bytes=manifest.total_bytes,
            packages=len(manifest.packages),
            package_bytes=sum(p.size for p in manifest.packages),
            blobs=manifest.blobs,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "dataset": self.dataset,
            "version": self.version,
            "from": self.parent,
            "created_at": self.created_at,
            "files": self.files,
            "bytes": self.bytes,
            "packaged": self.packages > 0,
            "packages": self.packages,
            "package_bytes": self.package_bytes,
            "blobs": self.blobs,
        }


@dataclass
class Folder:
    """One folder of a version: its subfolders, and its own files as indexes into the
    manifest (an ``array``: a folder of a million files costs 8 MB, not 36). Filled in by
    :func:`build_folders`, then only read."""

    path: str
    subfolders: list[str] = field(default_factory=list)
    files: array[int] = field(default_factory=lambda: array("Q"))
    total_files: int = 0
    total_bytes: int = 0

    @property
    def name(self) -> str:
        return self.path.rpartition("/")[2]

    @property
    def entries(self) -> int:
        return len(self.subfolders) + len(self.files)


def build_folders(files: Sequence[FileEntry]) -> dict[str, Folder]:
    """Every folder of a sorted file list by path (``""`` is the root), with totals.

    One pass: files come sorted by path, so a folder's own files arrive in name order
    and runs of files share a folder (one dictionary lookup per run, not per file).
    """
    folders: dict[str, Folder] = {"": Folder("")}
    current = folders[""]
    current_path = ""
    own_bytes: dict[str, int] = {}
    run_bytes = 0
    for i, f in enumerate(files):
        parent = f.path.rpartition("/")[0]
        if parent != current_path:
            own_bytes[current_path] = own_bytes.get(current_path, 0) + run_bytes
            run_bytes = 0
            found = folders.get(parent)
            current = found if found is not None else _add_folder(folders, parent)
            current_path = parent
        current.files.append(i)
        run_bytes += f.size
    own_bytes[current_path] = own_bytes.get(current_path, 0) + run_bytes
    # Totals bottom-up: deepest folders first, each adds itself to its parent.
    for path in sorted(folders, key=lambda p: p.count("/") + bool(p), reverse=True):
        folder = folders[path]
        folder.total_files += len(folder.files)
        folder.total_bytes += own_bytes.get(path, 0)
        # "a.b" sorts before "a" by full path ('.' < '/'); a folder lists subfolders by name.
        folder.subfolders.sort()
        if path:
            above = folders[path.rpartition("/")[0]]
            above.total_files += folder.total_files
            above.total_bytes += folder.total_bytes
    return folders


def _add_folder(folders: dict[str, Folder], path: str) -> Folder:
    folder = Folder(path)
    folders[path] = folder
    parent_path = path.rpartition("/")[0]
    parent = folders.get(parent_path)
    if parent is None:
        parent = _add_folder(folders, parent_path)
    parent.subfolders.append(path)
    return folder


@dataclass(frozen=True)
class VersionView:
    """A manifest with what the pages need of it computed once."""

    manifest: Manifest
    folders: dict[str, Folder]
    files_per_package: tuple[int, ...]
    facts: VersionFacts

    @classmethod
    def of(cls, manifest: Manifest) -> VersionView:
        return cls(
            manifest=manifest,
            folders=build_folders(manifest.files),
            files_per_package=tuple(files_per_package(manifest)),
            facts=VersionFacts.of(manifest),
        )

    @property
    def uri(self) -> VersionUri:
        return self.manifest.uri

    def file(self, path: str) -> FileEntry | None:
        """The file at ``path``, by binary search over the sorted list (no million-key dict)."""
        files = self.manifest.files
        i = bisect.bisect_left(files, path, key=lambda f: f.path)
        if i < len(files) and files[i].path == path:
            return files[i]
        return None

    def folder(self, path: str) -> Folder | None:
        return self.folders.get(path)


class ManifestCache:
    """Recently used versions (indexed), facts of every version seen, and recent diffs.

    Bounded by the files the cached versions hold, since that is what costs memory (a
    million files take several hundred MB); the most recent version always stays.
    """

    def __init__(self, max_files: int = 2_000_000, max_diffs: int = 4) -> None:
        self.max_files = max_files
        self.max_diffs = max_diffs
        self._views: OrderedDict[Key, VersionView] = OrderedDict()
        self._facts: dict[Key, VersionFacts] = {}
        self._diffs: OrderedDict[tuple[Key, Key], VersionDiff] = OrderedDict()
        # Requests may run on several threads and event loops (test clients, workers):
        # keep updates whole. Reads in progress are shared, so that two requests for a
        # version not yet cached parse its manifest once; they run on this pool, apart
        # from any request, so a client that goes away does not cancel the others' read.
        self._lock = threading.RLock()  # re-entered when a read ends before it is awaited
        self._loading: dict[object, concurrent.futures.Future[Any]] = {}
        self._pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="dspkg-web")

    async def view(self, catalog: Catalog, uri: VersionUri) -> VersionView:
        """The version ``uri`` names (its version part may be an alias)."""
        cached = self._cached_view(_key(catalog, uri))
        if cached is not None:
            return cached
        exact = await _resolve(catalog, uri)
        key = _key(catalog, exact)
        cached = self._cached_view(key)
        if cached is not None:
            return cached
        view: VersionView = await self._shared(("view", key), _read_view, catalog, exact)
        return view

    async def facts(self, catalog: Catalog, dataset: str, version: str) -> VersionFacts:
        """Facts of an exact version, reading its manifest only the first time."""
        key = (catalog.store.url, dataset, version)
        with self._lock:
            known = self._facts.get(key)
            view = self._views.get(key)
        if known is not None:
            return known
        if view is not None:
            return view.facts
        facts: VersionFacts = await self._shared(
            ("facts", key), _read_facts, catalog, VersionUri(dataset, version)
        )
        return facts

    async def diff(self, catalog: Catalog, a: VersionUri, b: VersionUri) -> VersionDiff:
        first, second = await asyncio.gather(self.view(catalog, a), self.view(catalog, b))
        key = (_key(catalog, first.uri), _key(catalog, second.uri))
        with self._lock:
            found = self._diffs.get(key)
            if found is not None:
                self._diffs.move_to_end(key)
                return found
        result = await asyncio.to_thread(
            diff_files,
            first.manifest.files,
            second.manifest.files,
            a=str(first.uri),
            b=str(second.uri),
        )
        with self._lock:
            self._diffs[key] = result
            while len(self._diffs) > self.max_diffs:
                self._diffs.popitem(last=False)
        return result

    async def _shared(self, job: tuple[str, Key], read: Any, *args: Any) -> Any:
        """``read(*args)`` on the pool, once for all requests asking at the same time."""
        with self._lock:
            future = self._loading.get(job)
            if future is None:
                future = self._pool.submit(read, *args)
                self._loading[job] = future
                future.add_done_callback(lambda done: self._finished(job, done))
        return await asyncio.shield(asyncio.wrap_future(future))

    def _finished(self, job: tuple[str, Key], done: concurrent.futures.Future[Any]) -> None:
        kind, key = job
        if not done.cancelled() and done.exception() is None:
            result = done.result()
            if kind == "view":
                self._remember(key, result)
            else:
                with self._lock:
                    self._facts[key] = result
        with self._lock:
            self._loading.pop(job, None)

    def _cached_view(self, key: Key) -> VersionView | None:
        with self._lock:
            view = self._views.get(key)
            if view is not None:
                self._views.move_to_end(key)
            return view

    def _remember(self, key: Key, view: VersionView) -> None:
        with self._lock:
            self._views[key] = view
            self._views.move_to_end(key)
            self._facts[key] = view.facts
            total = sum(len(v.manifest.files) for v in self._views.values())
            while total > self.max_files and len(self._views) > 1:
                _, dropped = self._views.popitem(last=False)
                total -= len(dropped.manifest.files)


async def _resolve(catalog: Catalog, uri: VersionUri) -> VersionUri:
    """The exact version ``uri`` names: itself if that version exists (one HEAD, no
    download), else what its alias says (as :meth:`Catalog.read_manifest` decides)."""
    if await catalog.store.head(manifest_key(uri.dataset, uri.version)) is not None:
        return uri
    return await catalog.resolve_alias(uri)


def _key(catalog: Catalog, uri: VersionUri) -> Key:
    return (catalog.store.url, uri.dataset, uri.version)


def _read_manifest(catalog: Catalog, uri: VersionUri) -> Manifest:
    # In a worker thread: its own event loop for the store's requests.
    return run_sync(catalog.read_manifest(uri))


def _read_view(catalog: Catalog, uri: VersionUri) -> VersionView:
    return VersionView.of(_read_manifest(catalog, uri))


def _read_facts(catalog: Catalog, uri: VersionUri) -> VersionFacts:
    return VersionFacts.of(_read_manifest(catalog, uri))
