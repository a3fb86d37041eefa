"""Publishing one version on a Dask cluster: each task builds one package, one commit.

The client lists the files and cuts them into packages exactly as a single publish would
(:func:`~dspkg.publish_plan.plan_tasks`: same ``package_max_file``, same splits, same
names); each package is a task that a worker runs: read and hash its files, stream the
package to the store, upload blobs, stage the result as a part
(:func:`~dspkg.publisher.stage_files`). The files a single publish keeps out of the
packages (``package_max_file`` or more) are tasks of their own, a bounded share each, that
upload them as blobs and stage them as parts the same way. The client then commits those
parts (:func:`~dspkg.committer.commit_version`): the version has the same files, packages
(bytes, names, SHA-256), shards and ``package_max_file`` as a single publish of the same
files; only the ``<attempt>`` in package keys differs.

A worker lost mid-task: Dask runs the task again elsewhere; the attempt that died never
staged its part, so whatever it uploaded is referenced by nothing (``dspkg gc`` removes
it). Blobs are named by content and created conditionally, so a task run again never
replaces nor duplicates one. Part names come from the plan, so running the same publish
again after a failure stages only the parts still missing. Workers read the files at the
client's paths (a shared file system) and reach the store with their own environment
(credentials) and the client's store options.

Dask is an optional dependency: ``pip install 'dspkg[dask]'``.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dspkg import publish_plan
from dspkg.catalog import Catalog
from dspkg.committer import CommitResult, commit_version
from dspkg.concurrency import run_sync
from dspkg.config import Settings
from dspkg.errors import AlreadyExists, InvalidArgument, InvalidMetadata
from dspkg.metadata import VersionRequest, directory_files, read_outputs
from dspkg.names import VersionUri
from dspkg.packager import log_few_files
from dspkg.paths import path_problem, tree_problem
from dspkg.progress import Progress
from dspkg.publish_plan import PACKAGE_MAX_FILE
from dspkg.publish_plan import package_max_file as check_package_max_file
from dspkg.publisher import PublishOptions, in_dependency_order, packaging_of, stage_files
from dspkg.sizes import format_size, parse_size
from dspkg.sources import LocalFile
from dspkg.store import Store, open_store

if TYPE_CHECKING:
    from distributed import Client

# Without packages, a task stages this many files (or bytes) as one part.
UNPACKAGED_TASK_FILES = 20_000
UNPACKAGED_TASK_BYTES = 1 << 30
# A task of files too big to package uploads at most this many blobs, and about a
# package's worth of bytes (--package-size): tasks stay alike in size, and a task
# retried after a lost worker redoes a bounded amount of work.
BLOB_TASK_FILES = 1_000


@dataclass(frozen=True)
class PartTask:
    """What one task needs: plain data, pickled to a worker."""

    store: str
    store_options: tuple[tuple[str, str], ...]
    uri: str
    parent: str | None
    exclude: tuple[str, ...]
    start_fresh: bool
    aliases: tuple[str, ...]
    part: str
    files: tuple[tuple[str, str, int], ...]  # (path in the version, path to read, size)
    package: str | None  # the package name, when the files make one
    packaging: bool  # of the version: its files below package_max_file are packaged
    packages_only: bool
    package_size: int
    package_max_file: int


@dataclass(frozen=True)
class DistributedResult:
    """The committed version, and how many tasks (parts) built it."""

    commit: CommitResult
    tasks: int
    staged: int  # parts staged by this run (the others were staged already)

    def to_json(self) -> dict[str, Any]:
        return {**self.commit.to_json(), "tasks": self.tasks, "staged": self.staged}


def run_part(task: PartTask) -> bool:
    """The task a worker runs: stage one part; True when it staged it now."""
    store = open_store(task.store, dict(task.store_options), os.environ)
    request = VersionRequest(
        uri=VersionUri.parse(task.uri),
        files=tuple(rel for rel, _, _ in task.files),
        packaging=task.packaging,
        parent=VersionUri.parse(task.parent) if task.parent else None,
        exclude=task.exclude,
        start_fresh=task.start_fresh,
        aliases=task.aliases,
    )
    options = PublishOptions(
        packaging=task.packaging,
        packages_only=task.packages_only,
        package_size=task.package_size,
        package_max_file=task.package_max_file,
    )
    files = [LocalFile(rel, path, size) for rel, path, size in task.files]
    result = run_sync(
        stage_files(store, request, files, task.part, options, package_name=task.package)
    )
    return result.created


def collect_files(files_or_dirs: Iterable[str | Path]) -> list[LocalFile]:
    """The files to publish: a directory's data files under their path inside it, a file
    under its name; checked as publish checks them."""
    found: dict[str, LocalFile] = {}
    for item in map(Path, files_or_dirs):
        if item.is_dir():
            entries = directory_files(item)
        else:
            problem = path_problem(item.name)
            if problem or not item.is_file():
                raise InvalidMetadata(
                    f"cannot publish {item}: {problem or 'not a regular file'}", path=str(item)
                )
            entries = {item.name: (str(item.resolve()), item.stat().st_size)}
        for rel, (path, size) in entries.items():
            if rel in found:
                raise InvalidMetadata(
                    f"{rel!r} comes from two of the inputs ({found[rel].path} and {path}); "
                    "publish them under different paths",
                    path=str(item),
                )
            found[rel] = LocalFile(rel, path, size)
    collision = tree_problem(sorted(found))
    if collision:
        raise InvalidMetadata(
            f"file {collision[0]!r} {collision[1]}; rename one of them", path=collision[0]
        )
    return [found[rel] for rel in sorted(found)]


def plan_tasks(
    store: Store,
    request: VersionRequest,
    files: Sequence[LocalFile],
    *,
    packaging: bool,
    packages_only: bool,
    package_size: int,
    package_max_file: int = PACKAGE_MAX_FILE,
    store_options: Mapping[str, str] | None = None,
) -> list[PartTask]:
    """One task per package a single publish would build, then tasks of the files it keeps
    out of the packages (``package_max_file`` or more), each uploading at most about a
    package's worth of blobs (or, without packaging, chunks of files); part names follow
    from the plan, so the same plan stages the same parts."""
    uri = request.uri
    plans = publish_plan.plan_tasks(
        uri,
        files,
        packaging=packaging,
        package_size=package_size,
        max_file=package_max_file,
        task_files=BLOB_TASK_FILES if packaging else UNPACKAGED_TASK_FILES,
        task_bytes=package_size if packaging else UNPACKAGED_TASK_BYTES,
    )
    plan_id = hashlib.sha256(
        "".join(f"{f.rel}\0{f.size}\n" for f in files).encode()
        + f"{packaging}{packages_only}{package_size}{package_max_file}".encode()
    ).hexdigest()[:12]
    width = len(str(len(plans)))
    return [
        PartTask(
            store=store.url,
            store_options=tuple(sorted((store_options or {}).items())),
            uri=str(uri),
            parent=str(request.parent) if request.parent else None,
            exclude=request.exclude,
            start_fresh=request.start_fresh,
            aliases=request.aliases,
            part=f"dask-{plan_id}-{i + 1:0{width}d}-of-{len(plans)}"
            + ("" if plan.package is not None or not packaging else "-blobs"),
            files=tuple((f.rel, f.path, f.size) for f in plan.files),
            package=plan.package,
            packaging=packaging,
            packages_only=packages_only,
            package_size=package_size,
            package_max_file=package_max_file,
        )
        for i, plan in enumerate(plans)
    ]


def _say_where_files_go(progress: Progress, uri: VersionUri, tasks: Sequence[PartTask]) -> None:
    """The lines a single publish prints about big files and small versions."""
    if not tasks or not tasks[0].packaging:
        return
    big = [size for t in tasks if t.package is None for _, _, size in t.files]
    if big:
        progress.log(
            f"{uri}: {len(big):,} file{'s' if len(big) != 1 else ''} of "
            f"{format_size(tasks[0].package_max_file)} or more ({format_size(sum(big))}) "
            "stored as blobs, not packaged (--package-max-file)"
        )
    if any(t.package is not None for t in tasks):
        log_few_files(progress, uri, sum(len(t.files) for t in tasks))


def publish(
    files_or_dirs: Iterable[str | Path],
    uri: str,
    client: Client,
    *,
    store: Store | str | None = None,
    packaging: bool = True,
    packages_only: bool = False,
    package_size: int | str = "1GiB",
    package_max_file: int | str | None = None,
    parent: str | None = None,
    retries: int = 3,
    store_options: Mapping[str, str] | None = None,
    progress: Progress | None = None,
    env: Mapping[str, str] | None = None,
) -> DistributedResult:
    """Publish ``files_or_dirs`` as version ``uri`` on the Dask cluster of ``client``.

    Directories contribute their files under their path inside the directory, files
    under their name. ``parent``: a version the new one is built ``from``. Files of
    ``package_max_file`` bytes or more (default 10 MB) stay out of the packages and are
    uploaded as blobs by tasks of their own, as a single publish keeps them.
    """
    max_file = check_package_max_file(
        PACKAGE_MAX_FILE if package_max_file is None else package_max_file
    )
    request = VersionRequest(
        uri=VersionUri.parse(uri),
        files=(),
        packaging=packaging,
        parent=VersionUri.parse(parent) if parent else None,
    )
    target = _store(store, store_options, env)
    files = collect_files(files_or_dirs)
    tasks = plan_tasks(
        target,
        request,
        files,
        packaging=packaging,
        packages_only=packages_only,
        package_size=parse_size(package_size),
        package_max_file=max_file,
        store_options=store_options,
    )
    return publish_request(target, request, tasks, client, retries=retries, progress=progress)


def publish_request(
    store: Store,
    request: VersionRequest,
    tasks: Sequence[PartTask],
    client: Client,
    *,
    retries: int = 3,
    progress: Progress | None = None,
) -> DistributedResult:
    """Run ``tasks`` on the cluster, then commit their parts."""
    progress = progress or Progress()
    uri = request.uri
    if not tasks:
        raise InvalidArgument(f"no files to publish as {uri}")
    if run_sync(_exists(store, uri)):
        raise AlreadyExists(
            f"{uri} already exists; versions are immutable, publish under a new version name",
            uri=str(uri),
        )
    _say_where_files_go(progress, uri, tasks)
    workers = len(client.scheduler_info()["workers"])
    blobs = sum(t.package is None for t in tasks) if tasks[0].packaging else 0
    of_blobs = f" ({blobs} of them uploading big files as blobs)" if blobs else ""
    progress.log(f"{uri}: {len(tasks)} task(s){of_blobs} on {workers} worker(s)")
    run_id = secrets.token_hex(4)  # task keys never meet an earlier run's on the scheduler
    futures = [
        client.submit(run_part, task, key=f"dspkg-{task.part}-{run_id}", retries=retries)
        for task in tasks
    ]
    staged = sum(f.result() for f in futures)  # raises the first task error, if any
    commit = run_sync(commit_version(store, uri, progress, only={t.part for t in tasks}))
    return DistributedResult(commit=commit, tasks=len(tasks), staged=staged)


def publish_outputs(
    outputs_dir: str | Path,
    client: Client,
    *,
    store: Store | str | None = None,
    options: PublishOptions | None = None,
    retries: int = 3,
    store_options: Mapping[str, str] | None = None,
    progress: Progress | None = None,
    env: Mapping[str, str] | None = None,
) -> list[DistributedResult]:
    """``dspkg publish DIR --dask ADDRESS``: every version the metadata in ``outputs_dir``
    asks for, each built by tasks on the cluster and committed in turn (parents first)."""
    progress = progress or Progress()
    options = options or PublishOptions()
    target = _store(store, store_options, env)
    outputs = read_outputs(Path(outputs_dir))
    results = []
    for request in in_dependency_order(outputs.versions):
        files = list(outputs.local(request))
        packaging = packaging_of(request, options, progress)
        tasks = plan_tasks(
            target,
            request,
            files,
            packaging=packaging,
            packages_only=options.packages_only,
            package_size=options.package_size,
            package_max_file=options.package_max_file,
            store_options=store_options,
        )
        results.append(
            publish_request(target, request, tasks, client, retries=retries, progress=progress)
        )
    return results


async def _exists(store: Store, uri: VersionUri) -> bool:
    return await Catalog(store).find_root(uri) is not None


def _store(
    store: Store | str | None, options: Mapping[str, str] | None, env: Mapping[str, str] | None
) -> Store:
    if isinstance(store, Store):
        return store
    settings = Settings.from_env(env)
    return open_store(store or settings.store_url, options, settings.env)
