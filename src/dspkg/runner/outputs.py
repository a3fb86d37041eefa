"""After the command: store every output file, then publish the versions its metadata names.

Every output is stored at ``executions/<execution-id>/outputs/<relative path>``
in the store (the metadata files themselves are read, not stored, as on the
platform). Then, when the metadata names dataset versions, they are published
with :func:`dspkg.api.publish`, which packages a version when its entry asks for
it and ``VH_ENABLE_DATASET_VERSION_PACKAGING`` is set in the execution's
environment.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dspkg import api
from dspkg.concurrency import BoundedTasks, run_sync
from dspkg.layout import execution_prefix
from dspkg.metadata import JSONL_NAME, SIDECAR_SUFFIX, read_outputs
from dspkg.paths import path_problem
from dspkg.progress import Progress
from dspkg.publisher import VersionResult
from dspkg.sizes import format_size
from dspkg.store import Store

# Files up to this size go up in one PUT; larger ones stream as multipart uploads.
SINGLE_PUT_LIMIT = 16 << 20
READ_CHUNK = 8 << 20


@dataclass(frozen=True)
class OutputFile:
    rel: str
    path: Path
    size: int


@dataclass(frozen=True)
class OutputScan:
    """The output files to store, what was left out and why, and whether metadata exists."""

    files: tuple[OutputFile, ...]
    skipped: tuple[tuple[str, str], ...]
    has_metadata: bool


@dataclass(frozen=True)
class OutputsResult:
    files: int
    bytes: int
    location: str
    versions: tuple[VersionResult, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "bytes": self.bytes,
            "location": self.location,
            "versions": [v.to_json() for v in self.versions],
        }


def scan_outputs(root: Path) -> OutputScan:
    """Every regular file under ``root`` (links to files followed, directories not)."""
    files: list[OutputFile] = []
    skipped: list[tuple[str, str]] = []
    has_metadata = False
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = os.path.relpath(dirpath, root)
        for name in sorted(filenames):
            rel = name if base == "." else f"{base}/{name}"
            if rel == JSONL_NAME or name.endswith(SIDECAR_SUFFIX):
                has_metadata = True
                continue
            path = Path(dirpath, name)
            problem = path_problem(rel)
            if problem:
                skipped.append((rel, problem))
                continue
            try:
                info = path.stat()
            except OSError as exc:
                skipped.append((rel, exc.strerror or str(exc)))
                continue
            if not path.is_file():
                skipped.append((rel, "not a regular file"))
                continue
            files.append(OutputFile(rel, path, info.st_size))
    return OutputScan(tuple(files), tuple(skipped), has_metadata)


async def store_outputs(
    store: Store, execution_id: str, files: tuple[OutputFile, ...], *, jobs: int = 32
) -> None:
    """Upload ``files`` under the execution's prefix, ``jobs`` at a time."""
    prefix = execution_prefix(execution_id)

    async def one(f: OutputFile) -> None:
        key = prefix + f.rel
        if f.size <= SINGLE_PUT_LIMIT:
            data = await asyncio.to_thread(f.path.read_bytes)
            await store.put(key, data)
        else:
            await store.put_stream(key, _chunks(f.path))

    async with BoundedTasks(jobs) as tasks:
        for f in files:
            await tasks.spawn(one(f))


async def _chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as handle:
        while chunk := await asyncio.to_thread(handle.read, READ_CHUNK):
            yield chunk


def store_and_publish(
    root: Path,
    execution_id: str,
    store: Store,
    *,
    env: Mapping[str, str],
    progress: Progress,
) -> OutputsResult:
    """Store the outputs under ``root`` and publish the dataset versions they name."""
    scan = scan_outputs(root)
    for rel, why in scan.skipped:
        progress.warn(f"output {rel!r} is not stored: {why}")
    run_sync(store_outputs(store, execution_id, scan.files))
    nbytes = sum(f.size for f in scan.files)
    location = store.describe(execution_prefix(execution_id))
    progress.log(_describe_outputs(len(scan.files), nbytes, location))
    versions: tuple[VersionResult, ...] = ()
    # Metadata can carry only tags or aliases; publish only when it names versions.
    if scan.has_metadata and read_outputs(root).versions:
        result = api.publish(root, store=store, env=env, progress=progress)
        versions = result.versions
        for v in versions:
            state = "created" if v.created else "unchanged"
            packages = len(v.packages)
            progress.log(
                f"{state} {v.uri}: {v.files:,} files, {format_size(v.bytes)}, "
                f"{packages} package{'s' if packages != 1 else ''}"
            )
    return OutputsResult(len(scan.files), nbytes, location, versions)


def _describe_outputs(count: int, nbytes: int, location: str) -> str:
    if not count:
        return "outputs: none"
    files = f"{count:,} file{'s' if count != 1 else ''}"
    return f"outputs: {files} ({format_size(nbytes)}) stored at {location}"
