"""A version as a mount sees it while it starts: the root at once, shards as folders need them.

A mount appears as soon as the version's root is read. Its shards then load in the
background, in order (the next one downloading while one decodes), and a folder that is
listed or looked up first starts, ahead of the others, the shards whose path range can
hold it (``ManifestRoot.shards_for``): the answer waits for those only. Each shard is
checked as it loads (its hash, every record); the index refuses a name that is both a
file and a folder; once all are in, they are checked together as any consumer checks a
version
(:func:`~dspkg.loader.join_files`: paths across shards, package layout), and only then
is the whole manifest handed out (to read files).

A shard that cannot be loaded or fails a check is remembered with its error: every
question that needs it gets that error (the mount answers EIO and logs it once), never
a listing without it. A v1 manifest comes whole with its root.

Runs on the mount's event loop.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
from collections.abc import Callable, Sequence
from itertools import accumulate

from dspkg.cache import Cache
from dspkg.catalog import whole
from dspkg.dirindex import DirectoryIndex
from dspkg.errors import DspkgError
from dspkg.layout import manifest_key
from dspkg.loader import join_files, shard_loader
from dspkg.manifest import FileEntry, Manifest, ManifestRoot, collector_paused, make_entries
from dspkg.shards import Records
from dspkg.store import Store


class VersionView:
    """The files of ``root`` loaded so far, and the directory index over them."""

    def __init__(
        self,
        store: Store,
        cache: Cache,
        root: ManifestRoot,
        *,
        log: Callable[[str], None] = lambda line: None,
    ) -> None:
        self.store = store
        self.cache = cache
        self.root = root
        self.log = log
        self.obj = store.describe(manifest_key(root.dataset, root.version))
        self.index = DirectoryIndex(obj=self.obj)
        self.manifest: Manifest | None = None  # once every shard is in and checked
        self.failure: DspkgError | None = None  # why the version as a whole cannot be read
        self._bases = [0, *accumulate(s.count for s in root.shards)]
        self._records: dict[int, Records] = {}
        self._entries: dict[int, tuple[FileEntry, ...]] = {}  # made as each shard arrives
        self._loads: dict[int, asyncio.Task[None]] = {}
        self._failed: dict[int, DspkgError] = {}
        self._load = shard_loader(store, cache, root)
        if root.inline is not None:
            self.manifest = whole(root, root.inline)
            self.index.add(0, [f.path for f in root.inline])

    def holds(self, prefix: str) -> bool:
        """Whether every shard that may hold paths starting with ``prefix`` is in (then
        the index answers for them without waiting). Safe from any thread."""
        if self.manifest is not None:
            return True
        return all(i in self._records for i in self._positions(prefix))

    def size(self, index: int) -> int:
        """The size of file ``index``, whose shard is in. Safe from any thread."""
        manifest = self.manifest
        if manifest is None:
            shard = bisect.bisect_right(self._bases, index) - 1
            records = self._records.get(shard)
            if records is not None:
                size: int = records.sizes[index - self._bases[shard]]
                return size
            manifest = self.manifest  # the records went to the manifest meanwhile
            assert manifest is not None, "the shard of this file is not in"
        return manifest.files[index].size

    async def need(self, prefix: str) -> None:
        """Load every shard that may hold paths starting with ``prefix`` ("" for all),
        now, ahead of the background; raise the error of one that fails."""
        await asyncio.gather(*(self._shard(i) for i in self._positions(prefix)))

    async def load_all(self) -> Manifest:
        """Every shard, in order, then the checks across shards: the whole manifest.
        Raises (and keeps) the first error, logged once."""
        if self.manifest is not None:
            return self.manifest
        count = len(self.root.shards)
        try:
            # Paused from the first shard to the checks across them (as load_files does):
            # a collection in between would walk the columns of every shard loaded so far.
            with collector_paused():
                for i in range(count):
                    for j in range(i, min(i + 2, count)):  # the next downloads while one decodes
                        self._task(j)
                    await self._shard(i)
                loop = asyncio.get_running_loop()
                records = [self._records[i] for i in range(count)]
                entries = [self._entries[i] for i in range(count)]
                join = functools.partial(
                    join_files,
                    self.store,
                    self.cache,
                    self.root,
                    self.root.shards,
                    records,
                    entries=entries,
                )
                try:
                    files = await loop.run_in_executor(None, join)
                except DspkgError as exc:
                    self.log(f"{exc}; every file of {self.root.uri} reads as EIO")
                    raise
        except DspkgError as exc:
            self.failure = exc
            raise
        self.manifest = whole(self.root, files)
        self._records.clear()  # the manifest holds the files now
        self._entries.clear()
        return self.manifest

    async def close(self) -> None:
        for task in self._loads.values():
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*self._loads.values(), return_exceptions=True)

    def _positions(self, prefix: str) -> Sequence[int]:
        return [i for i, s in enumerate(self.root.shards) if s.may_hold(prefix)]

    async def _shard(self, i: int) -> None:
        failed = self._failed.get(i)
        if failed is not None:
            raise failed
        if i not in self._records:
            await asyncio.shield(self._task(i))

    def _task(self, i: int) -> asyncio.Task[None]:
        """The load of shard ``i``, started now if it was not."""
        task = self._loads.get(i)
        if task is None:
            task = self._loads[i] = asyncio.create_task(self._load_one(i))
            # A load started ahead and never awaited (an earlier one failed) is not an
            # unretrieved error: its failure is kept in _failed.
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return task

    async def _load_one(self, i: int) -> None:
        shard = self.root.shards[i]
        try:
            # Checked on its own (hash, records); a name that is both a file and a
            # folder is refused by the index when its folder is listed, and every check
            # across shards runs in load_all.
            records = await self._load(shard)
        except DspkgError as exc:
            self._failed[i] = exc
            self.log(f"{exc}; its folders and every file of {self.root.uri} read as EIO")
            raise
        self._entries[i] = make_entries(*records)
        self.index.add(self._bases[i], records.paths)
        self._records[i] = records
