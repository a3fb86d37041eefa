"""A step's inputs: which URIs each gets, fetching them, and ``inputs.json``.

Each URI of an input is fetched into its own staging directory
(``<inputs>/.dspkg-staging/<input>/<i>/``): ``dataset://`` URIs with a pull
through the cache, other URIs as single files. The staged trees are then moved
into ``<inputs>/<input>/`` by renaming whole subtrees where they do not overlap,
so a million-file version costs a handful of renames; two URIs that bring the
same relative path are refused, naming both.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dspkg.cache import Cache
from dspkg.errors import InvalidName, RunError
from dspkg.loader import load_manifest
from dspkg.mounting import MountProcess, fuse_problem, mount_argv, start_mount
from dspkg.names import SCHEME, VersionUri
from dspkg.progress import Progress
from dspkg.puller import PullOptions, pull_version
from dspkg.runner.downloader import InputFile, PlainSource, fetch_plain, is_plain
from dspkg.runner.step import InputSpec, StepSpec
from dspkg.selection import Selection
from dspkg.sizes import format_size
from dspkg.store import Store
from dspkg.subset import EVERYTHING, Subset

STAGING = ".dspkg-staging"


@dataclass(frozen=True)
class PlannedInput:
    """An input and the URIs it gets (``--input`` values, else the step's defaults)."""

    spec: InputSpec
    uris: tuple[str, ...]
    subset: Subset = EVERYTHING  # for its dataset:// URIs (--include/--exclude NAME=GLOB)

    @property
    def skipped(self) -> bool:
        return not self.uris


def plan_inputs(
    step: StepSpec,
    overrides: Mapping[str, Sequence[str]],
    include: Mapping[str, Sequence[str]] | None = None,
    exclude: Mapping[str, Sequence[str]] | None = None,
) -> list[PlannedInput]:
    """Which URIs each input gets, and which files of its dataset versions
    (``include``/``exclude``: input name -> globs); errors (unknown input, missing URI,
    bad URI, a malformed glob) come here, before anything is fetched or run."""
    include = include or {}
    exclude = exclude or {}
    names = [i.name for i in step.inputs]
    for option, given in (("--input", overrides), ("--include", include), ("--exclude", exclude)):
        for name in given:
            if name not in names:
                known = ", ".join(names) or "none"
                raise RunError(
                    f"{option} {name}=...: step {step.name!r} has no input {name!r}; "
                    f"its inputs: {known}",
                    path=str(step.file),
                )
    planned = []
    for spec in step.inputs:
        uris = tuple(overrides.get(spec.name) or spec.defaults)
        if not uris and not spec.optional:
            raise RunError(
                f"input {spec.name!r} of step {step.name!r} has no default and no URI; "
                f"give --input {spec.name}=URI",
                path=str(step.file),
            )
        for uri in uris:
            _check_uri(spec.name, uri)
        subset = _subset(step, spec.name, uris, include.get(spec.name), exclude.get(spec.name))
        planned.append(PlannedInput(spec, uris, subset))
    return planned


def _subset(
    step: StepSpec,
    name: str,
    uris: Sequence[str],
    include: Sequence[str] | None,
    exclude: Sequence[str] | None,
) -> Subset:
    """The files to take of each dataset version of input ``name``."""
    if not include and not exclude:
        return EVERYTHING
    if not any(uri.startswith(SCHEME) for uri in uris):
        raise RunError(
            f"--include/--exclude {name}=...: input {name!r} of step {step.name!r} gets no "
            "dataset:// URI; filter object-store inputs with wildcards in the URI instead",
            path=str(step.file),
        )
    return Subset(Selection.build(include or (), exclude or ()))


def _check_uri(name: str, uri: str) -> None:
    try:
        if uri.startswith(SCHEME):
            VersionUri.parse(uri)
            return
        if is_plain(uri):
            if not uri.lower().startswith("http"):
                PlainSource.parse(uri)
            return
    except InvalidName as exc:
        raise RunError(f"input {name!r}: {exc}", path=uri) from None
    raise RunError(
        f"input {name!r}: unsupported URI {uri!r}; use dataset://, s3://, gs://, az://, "
        "file:// or http(s)://",
        path=uri,
    )


@dataclass(frozen=True)
class SourceResult:
    """What one URI of an input brought."""

    uri: str
    resolved: str  # the version an alias resolved to, or the URI itself
    files: tuple[InputFile, ...]
    bytes: int
    dataset: bool
    files_from_cache: int = 0
    files_fetched: int = 0
    bytes_downloaded: int = 0
    seconds: float = 0.0
    mounted: bool = False


@dataclass(frozen=True)
class InputResult:
    name: str
    directory: Path
    sources: tuple[SourceResult, ...]
    skipped: bool = False

    def files(self) -> Iterator[InputFile]:
        for source in self.sources:
            yield from source.files

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "skipped": self.skipped,
            "sources": [
                {
                    "uri": s.uri,
                    "resolved": s.resolved,
                    "files": len(s.files),
                    "bytes": s.bytes,
                    "files_from_cache": s.files_from_cache,
                    "files_fetched": s.files_fetched,
                }
                for s in self.sources
            ],
        }


@dataclass
class DatasetSource:
    """Where ``dataset://`` inputs come from: the store, the cache and the pull options;
    ``mounts`` collects the mounts of on-demand inputs, which the caller stops."""

    store: Store
    cache: Cache
    options: PullOptions
    store_options: Mapping[str, str] = field(default_factory=dict)
    mounts: list[MountProcess] = field(default_factory=list)


async def fetch_inputs(
    planned: Sequence[PlannedInput],
    inputs_dir: Path,
    *,
    datasets: DatasetSource | None,
    env: Mapping[str, str],
    progress: Progress,
) -> list[InputResult]:
    """Fetch every planned input into ``inputs_dir/<name>/`` (which must not exist yet)."""
    staging_root = inputs_dir / STAGING
    results = []
    try:
        for item in planned:
            name = item.spec.name
            directory = inputs_dir / name
            if item.skipped:
                progress.log(f"input {name}: skipped (optional, no URI given)")
                results.append(InputResult(name, directory, (), skipped=True))
                continue
            if datasets is not None and _mountable(item, progress):
                source = await _mount(item.uris[0], directory, datasets, env)
                progress.log(_describe(name, source))
                results.append(InputResult(name, directory, (source,)))
                continue
            staging = staging_root / name
            sources = []
            for index, uri in enumerate(item.uris):
                part = staging / str(index)
                if uri.startswith(SCHEME):
                    assert datasets is not None, "uses_datasets() saw this URI"
                    source = await _pull(uri, part, datasets, progress, item.subset)
                else:
                    source = await _download(name, uri, part, item.spec.keep_directories, env)
                progress.log(_describe(name, source))
                sources.append(source)
            directory.mkdir(parents=True, exist_ok=True)
            _merge_parts(name, staging, directory, [s.uri for s in sources])
            results.append(_renamed(item.spec, directory, tuple(sources)))
    finally:
        shutil.rmtree(staging_root, ignore_errors=True)
    return results


def _mountable(item: PlannedInput, progress: Progress) -> bool:
    """Whether an input is mounted (``download: on-demand``) rather than pulled."""
    if not item.spec.on_demand:
        return False
    name = item.spec.name
    if (
        len(item.uris) != 1
        or not item.uris[0].startswith(SCHEME)
        or item.spec.filename
        or not item.subset.everything
    ):
        progress.warn(
            f"input {name}: download: on-demand mounts one whole dataset:// version (no "
            "filename, --include, --exclude or shard); pulling it instead"
        )
        return False
    problem = fuse_problem()
    if problem is not None:
        progress.warn(f"input {name}: cannot mount on demand ({problem}); pulling it instead")
        return False
    return True


async def _mount(
    uri: str, directory: Path, datasets: DatasetSource, env: Mapping[str, str]
) -> SourceResult:
    started = time.monotonic()
    manifest = await load_manifest(datasets.store, datasets.cache, VersionUri.parse(uri))
    resolved = str(manifest.uri)
    argv = mount_argv(
        resolved, directory, store=datasets.store.url, store_options=datasets.store_options
    )
    # The mount process's lines (a refused file) go to the execution's output.
    datasets.mounts.append(start_mount(argv, directory, env=env, with_parent=True))
    files = tuple(InputFile(f.path, resolved, f.size, f.sha256) for f in manifest.files)
    return SourceResult(
        uri=uri,
        resolved=resolved,
        files=files,
        bytes=manifest.total_bytes,
        dataset=True,
        mounted=True,
        seconds=time.monotonic() - started,
    )


async def _pull(
    uri: str, dest: Path, datasets: DatasetSource, progress: Progress, subset: Subset
) -> SourceResult:
    started = time.monotonic()
    pulled = await pull_version(
        VersionUri.parse(uri),
        dest,
        datasets.store,
        datasets.cache,
        datasets.options,
        progress,
        subset=subset,
    )
    manifest = pulled.manifest  # only the files the subset took
    assert manifest is not None  # every pull that is not a dry run has one
    files = tuple(InputFile(f.path, pulled.uri, f.size, f.sha256) for f in manifest.files)
    return SourceResult(
        uri=uri,
        resolved=pulled.uri,
        files=files,
        bytes=pulled.selected_bytes,
        dataset=True,
        files_from_cache=pulled.files_from_cache,
        files_fetched=pulled.files_fetched,
        bytes_downloaded=pulled.bytes_downloaded,
        seconds=time.monotonic() - started,
    )


async def _download(
    name: str, uri: str, dest: Path, keep: str, env: Mapping[str, str]
) -> SourceResult:
    started = time.monotonic()
    dest.mkdir(parents=True, exist_ok=True)
    files = tuple(await fetch_plain(name, uri, dest, keep=keep, env=env))
    nbytes = sum(f.size for f in files)
    return SourceResult(
        uri=uri,
        resolved=uri,
        files=files,
        bytes=nbytes,
        dataset=False,
        files_fetched=len(files),
        bytes_downloaded=nbytes,
        seconds=time.monotonic() - started,
    )


def _describe(name: str, source: SourceResult) -> str:
    count = f"{len(source.files):,} file{'s' if len(source.files) != 1 else ''}"
    if not source.dataset:
        return f"input {name}: {source.uri} -> {count} ({format_size(source.bytes)})"
    alias = f" ({source.resolved})" if source.resolved != source.uri else ""
    if source.mounted:
        detail = f"{format_size(source.bytes)}, mounted: files are fetched as they are read"
    elif source.files_fetched:
        detail = (
            f"{source.files_from_cache:,} from cache, {source.files_fetched:,} fetched: "
            f"{format_size(source.bytes_downloaded)} downloaded in {source.seconds:.1f} s"
        )
    else:
        detail = f"{source.files_from_cache:,} from cache"
    return f"input {name}: {source.uri}{alias} -> {count} ({detail})"


def _merge_parts(name: str, staging: Path, directory: Path, uris: list[str]) -> None:
    """Move each staged URI's tree into ``directory``; refuse paths that two URIs bring."""
    owner: dict[str, int] = {}
    for index in range(len(uris)):
        part = staging / str(index)
        if part.is_dir():
            _merge_tree(part, directory, "", index, owner, name, uris)


def _merge_tree(
    src: Path,
    dst: Path,
    rel: str,
    index: int,
    owner: dict[str, int],
    name: str,
    uris: list[str],
) -> None:
    with os.scandir(src) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        entry_rel = f"{rel}{entry.name}"
        target = dst / entry.name
        if not os.path.lexists(target):
            os.rename(entry.path, target)
            owner[entry_rel] = index
        elif entry.is_dir(follow_symlinks=False) and target.is_dir() and not target.is_symlink():
            _merge_tree(Path(entry.path), target, f"{entry_rel}/", index, owner, name, uris)
        else:
            other = _owner_of(entry_rel, owner)
            raise RunError(
                f"input {name!r}: {entry_rel!r} comes from both {uris[other]} and {uris[index]}; "
                "give them separate inputs",
                path=entry_rel,
            )


def _owner_of(rel: str, owner: dict[str, int]) -> int:
    """Which URI placed ``rel``: every path was moved in itself or inside a moved directory."""
    parts = rel.split("/")
    for cut in range(len(parts), 0, -1):
        found = owner.get("/".join(parts[:cut]))
        if found is not None:
            return found
    return 0


def _renamed(spec: InputSpec, directory: Path, sources: tuple[SourceResult, ...]) -> InputResult:
    """Apply ``filename``: it renames the input's file when there is exactly one."""
    files = [f for s in sources for f in s.files]
    if spec.filename and len(files) == 1 and files[0].name != spec.filename:
        only = files[0]
        os.rename(directory / only.name, directory / spec.filename)
        _remove_empty_parents(directory / only.name, directory)
        renamed = InputFile(spec.filename, only.uri, only.size, only.sha256)
        sources = tuple(replace(s, files=(renamed,)) if s.files else s for s in sources)
    return InputResult(spec.name, directory, sources)


def _remove_empty_parents(path: Path, stop: Path) -> None:
    parent = path.parent
    while parent != stop and parent.is_relative_to(stop):
        try:
            parent.rmdir()
        except OSError:
            return
        parent = parent.parent


def write_inputs_json(path: Path, inputs: Sequence[InputResult]) -> None:
    """``inputs.json`` in the platform's shape, written entry by entry (inputs can hold
    a million files) under a temp name, then renamed."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as out:
        out.write("{")
        first_input = True
        for result in inputs:
            if result.skipped:
                continue
            out.write(("" if first_input else ",\n ") + json.dumps(result.name) + ': {"files": [')
            first_input = False
            for i, f in enumerate(sorted(result.files(), key=lambda f: f.name)):
                entry = {
                    "name": f.name,
                    "path": str(result.directory / f.name),
                    "uri": f.uri,
                    "size": f.size,
                    "checksums": {"sha256": f.sha256},
                    "metadata": [],
                }
                out.write(("\n  " if i == 0 else ",\n  ") + json.dumps(entry))
            out.write("]}")
        out.write("}\n")
    os.replace(tmp, path)


def uses_datasets(planned: Sequence[PlannedInput]) -> bool:
    return any(uri.startswith(SCHEME) for item in planned for uri in item.uris)
