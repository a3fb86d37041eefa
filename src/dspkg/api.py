"""The public Python API: what the command line does, callable from notebooks and training code.

Every function is synchronous, reads the environment (or the ``env`` mapping it is
given) only here, returns a typed result whose ``to_json()`` is what ``--json``
prints, and raises the errors of :mod:`dspkg.errors`.

    >>> import dspkg
    >>> dspkg.publish("/valohai/outputs", store="s3://bucket/datasets")   # doctest: +SKIP
    >>> dspkg.pull("dataset://images/train-v1", "/valohai/inputs/images")   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from dspkg.cache import Cache, store_id
from dspkg.catalog import Catalog
from dspkg.concurrency import run_sync
from dspkg.config import Settings
from dspkg.errors import InvalidArgument, NotFound
from dspkg.loader import load_manifest
from dspkg.names import SCHEME, VersionUri, check_name, parse_dataset_uri
from dspkg.progress import Progress
from dspkg.pull_plan import Tuning
from dspkg.sizes import format_size, parse_duration, parse_size
from dspkg.store import Store, open_store

# What only one command needs is imported where it is used: a pull (the command a
# training job runs) starts about 0.1 s sooner without publishing, packaging, browsing,
# mounting or gc code, and a mount (whose first byte is timed from its start) without
# the pull's and the cache upkeep's.
if TYPE_CHECKING:
    from dspkg.browse import DatasetSummary, VersionDetails, VersionSummary
    from dspkg.collector import GcResult
    from dspkg.committer import CommitResult
    from dspkg.distributed import DistributedResult
    from dspkg.manifest import ManifestRoot
    from dspkg.materialize import LinkMode
    from dspkg.mounting import MountSummary
    from dspkg.packing import PackResult
    from dspkg.publisher import PublishOptions, PublishResult
    from dspkg.puller import PullOptions, PullResult
    from dspkg.reader import VersionReader
    from dspkg.sharding import Shard
    from dspkg.subset import Selected, Subset
    from dspkg.upkeep import CacheInfo, PruneResult, VerifyResult
    from dspkg.versiondiff import VersionDiff

StoreLike = Store | str | None
Patterns = str | Iterable[str]
# (rank, world), "RANK/WORLD", or "auto": RANK and WORLD_SIZE from the environment.
ShardLike = tuple[int, int] | str | None
# Smaller packages hold hardly more than their headers; a usage mistake, not a choice.
MIN_PACKAGE_SIZE = 4096


def resolve_store(
    store: StoreLike, settings: Settings, options: Mapping[str, str] | None = None
) -> Store:
    """A :class:`Store` from a Store, a URL, or the configured default."""
    if isinstance(store, Store):
        return store
    return open_store(store or settings.store_url, options, settings.env)


def publish(
    outputs_dir: str | Path,
    *,
    store: StoreLike = None,
    packaging: bool | None = None,
    packages_only: bool = False,
    package_size: int | str = "1GiB",
    package_max_file: int | str | None = None,
    jobs: int = 32,
    part: str | None = None,
    to: str | None = None,
    from_: str | None = None,
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    aliases: Iterable[str] = (),
    store_options: Mapping[str, str] | None = None,
    progress: Progress | None = None,
    env: Mapping[str, str] | None = None,
) -> PublishResult:
    """Publish the dataset versions that the metadata in ``outputs_dir`` asks for; or,
    with ``to``, every file of ``outputs_dir`` as the version ``to`` (no metadata).

    ``packaging``: None follows each version's ``"packaging": true`` gated by
    ``VH_ENABLE_DATASET_VERSION_PACKAGING``; True packages every version; False none.
    ``part``: stage these files as that part of each version instead; :func:`commit`
    merges the parts into the version.
    Files of ``package_max_file`` bytes or more (default 10 MB) stay out of packages
    and are stored as blobs, also with ``packages_only``.

    With ``to``: ``from_`` is the version to build on (its files, minus those that
    ``exclude`` globs match, plus the directory's), ``include`` globs pick the
    directory's files (default: all), ``aliases`` move to the new version besides
    ``latest``. A version with no new files is fine; the same files under an existing
    name are a no-op (its ``aliases`` still move), different ones an error.
    """
    from dspkg.dirversion import DirectoryVersion
    from dspkg.publisher import publish_directory, publish_tree

    include, exclude, aliases = tuple(include), tuple(exclude), tuple(aliases)
    if to is None and (from_ or include or exclude or aliases):
        raise InvalidArgument(
            "from_, include, exclude and aliases describe the version that to= names; give to="
        )
    target = (
        DirectoryVersion.parse(to, from_=from_, include=include, exclude=exclude, aliases=aliases)
        if to is not None
        else None
    )
    settings = Settings.from_env(env)
    options = publish_options(
        settings, packaging, packages_only, package_size, jobs, package_max_file
    )
    if part is not None:
        check_name(part, what="part name")
        if target is not None:
            raise InvalidArgument("part= stages files of versions named by metadata; drop to=")
    where = resolve_store(store, settings, store_options)
    if target is not None:
        return run_sync(publish_tree(Path(outputs_dir), target, where, options, progress))
    return run_sync(publish_directory(Path(outputs_dir), where, options, progress, part=part))


def commit(
    uri: str,
    *,
    store: StoreLike = None,
    store_options: Mapping[str, str] | None = None,
    progress: Progress | None = None,
    env: Mapping[str, str] | None = None,
) -> CommitResult:
    """Merge the staged parts of ``dataset://<dataset>/<version>`` into the version, with
    one conditional create: of two commits at once, exactly one creates it."""
    from dspkg.committer import commit_version

    version = VersionUri.parse(uri)
    target = resolve_store(store, Settings.from_env(env), store_options)
    return run_sync(commit_version(target, version, progress))


def package(
    uri: str,
    *,
    store: StoreLike = None,
    package_size: int | str = "1GiB",
    package_max_file: int | str | None = None,
    jobs: int = 32,
    dry_run: bool = False,
    store_options: Mapping[str, str] | None = None,
    progress: Progress | None = None,
    env: Mapping[str, str] | None = None,
) -> PackResult:
    """Add packages to an existing version (or the one an alias names) for its files in no
    package, read from their blobs; files of ``package_max_file`` or more stay blobs.

    The version keeps its files, name and URI; only its package facts are added, by a
    conditional replace of its manifest (of runs at once exactly one wins). Idempotent:
    a version with nothing to package is left as it is. ``dry_run`` returns the plan.
    """
    from dspkg.packing import PackOptions, package_version
    from dspkg.publish_plan import PACKAGE_MAX_FILE
    from dspkg.publish_plan import package_max_file as check_package_max_file

    version = VersionUri.parse(uri)
    options = PackOptions(
        package_size=_package_size(package_size),
        package_max_file=check_package_max_file(
            PACKAGE_MAX_FILE if package_max_file is None else package_max_file
        ),
        jobs=max(jobs, 1),
        dry_run=dry_run,
    )
    source = resolve_store(store, Settings.from_env(env), store_options)
    return run_sync(package_version(version, source, options, progress))


def pull_options(
    settings: Settings,
    *,
    link: str | LinkMode = "auto",
    jobs: int = Tuning().blob_requests,
    dry_run: bool = False,
    refetch: bool | None = None,
) -> PullOptions:
    """How to pull, from the settings of the environment and the caller's choices."""
    from dspkg.materialize import LinkMode
    from dspkg.puller import BATCH_FILES, PullOptions

    return PullOptions(
        link=LinkMode.parse(str(link)),
        dry_run=dry_run,
        refetch=settings.no_data_cache if refetch is None else refetch,
        max_cache_size=settings.cache_max_size,
        tuning=Tuning().with_jobs(jobs),
        speedups=settings.speedups,
        batch_files=settings.pull_batch_files or BATCH_FILES,
    )


def publish_options(
    settings: Settings,
    packaging: bool | None = None,
    packages_only: bool = False,
    package_size: int | str = "1GiB",
    jobs: int = 32,
    package_max_file: int | str | None = None,
) -> PublishOptions:
    from dspkg.publish_plan import PACKAGE_MAX_FILE
    from dspkg.publish_plan import package_max_file as check_package_max_file
    from dspkg.publisher import PublishOptions

    return PublishOptions(
        packaging=packaging,
        gate=settings.packaging_gate,
        packages_only=packages_only,
        package_size=_package_size(package_size),
        package_max_file=check_package_max_file(
            PACKAGE_MAX_FILE if package_max_file is None else package_max_file
        ),
        jobs=max(jobs, 1),
        speedups=settings.speedups,
    )


def publish_on_dask(
    outputs_dir: str | Path,
    address: str,
    *,
    store: StoreLike = None,
    packaging: bool | None = None,
    packages_only: bool = False,
    package_size: int | str = "1GiB",
    package_max_file: int | str | None = None,
    store_options: Mapping[str, str] | None = None,
    progress: Progress | None = None,
    env: Mapping[str, str] | None = None,
) -> list[DistributedResult]:
    """:func:`publish` with the packages built by the workers of the Dask scheduler at
    ``address`` (see :mod:`dspkg.distributed`); the files must be readable by them.
    Files of ``package_max_file`` bytes or more (default 10 MB) stay blobs, uploaded
    by tasks of their own."""
    try:
        from distributed import Client
    except ImportError:
        raise InvalidArgument("publishing on Dask needs Dask: pip install 'dspkg[dask]'") from None
    from dspkg.distributed import publish_outputs

    settings = Settings.from_env(env)
    options = publish_options(
        settings, packaging, packages_only, package_size, package_max_file=package_max_file
    )
    target = resolve_store(store, settings, store_options)
    try:
        client = Client(address, timeout="20s")  # type: ignore[no-untyped-call]
    except OSError as exc:
        raise InvalidArgument(
            f"cannot reach the Dask scheduler at {address} ({exc}); check --dask"
        ) from None
    with client:
        # The workers open the store themselves: they need its options too.
        return publish_outputs(
            outputs_dir,
            client,
            store=target,
            options=options,
            store_options=store_options,
            progress=progress,
        )


def gc(
    *,
    store: StoreLike = None,
    grace: float | str | None = None,
    delete: bool = False,
    store_options: Mapping[str, str] | None = None,
    progress: Progress | None = None,
    env: Mapping[str, str] | None = None,
) -> GcResult:
    """What no version references and is older than ``grace`` (seconds, or ``"24h"``):
    packages, blobs, manifest shards, staged parts, killed uploads. Removed only with
    ``delete``; by default a dry run that reports them. ``grace`` defaults to 24 hours."""
    from dspkg.collector import DEFAULT_GRACE, collect

    seconds = DEFAULT_GRACE if grace is None else parse_duration(grace)
    target = resolve_store(store, Settings.from_env(env), store_options)
    return run_sync(collect(target, grace=seconds, delete=delete, progress=progress))


def _package_size(text: int | str) -> int:
    size = parse_size(text)
    if size < MIN_PACKAGE_SIZE:
        raise InvalidArgument(
            f"package size {text!r} is too small: use at least {format_size(MIN_PACKAGE_SIZE)} "
            "(the default, 1GiB, suits most datasets)"
        )
    return size


def pull(
    uri: str,
    dest: str | Path,
    *,
    store: StoreLike = None,
    link: str | LinkMode = "auto",
    jobs: int = 128,
    dry_run: bool = False,
    cache_dir: str | Path | None = None,
    refetch: bool | None = None,
    include: Patterns = (),
    exclude: Patterns = (),
    files: Iterable[str] | None = None,
    shard: ShardLike = None,
    allow_empty: bool = False,
    files_name: str = "files",
    store_options: Mapping[str, str] | None = None,
    progress: Progress | None = None,
    env: Mapping[str, str] | None = None,
) -> PullResult:
    """Make ``dataset://<dataset>/<version-or-alias>`` appear in ``dest`` (absent or empty).

    ``refetch`` (default: ``VH_NO_DATA_CACHE``) downloads again what the cache holds.
    ``include``/``exclude`` (globs), ``files`` (paths of the version) and ``shard``
    (``(rank, world)``, ``"RANK/WORLD"`` or ``"auto"``) take part of the version, as
    :func:`select` says; only those files are fetched and linked. ``files_name`` names
    the list in messages (the command line passes ``--files-from FILE``).
    """
    from dspkg.puller import pull_version

    settings = Settings.from_env(env)
    version = VersionUri.parse(uri)
    subset = make_subset(include, exclude, files, shard, allow_empty, settings.env, files_name)
    options = pull_options(settings, link=link, jobs=jobs, dry_run=dry_run, refetch=refetch)
    source = resolve_store(store, settings, store_options)
    cache = _cache(cache_dir, settings)
    pulling = pull_version(version, Path(dest), source, cache, options, progress, subset=subset)
    if dry_run:  # reads the cache as it is: nothing is created, locked or written
        return run_sync(pulling)
    with cache:
        return run_sync(pulling)


def select(
    uri: str,
    *,
    include: Patterns = (),
    exclude: Patterns = (),
    files: Iterable[str] | None = None,
    shard: ShardLike = None,
    allow_empty: bool = False,
    store: StoreLike = None,
    cache_dir: str | Path | None = None,
    store_options: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Selected:
    """The files of a version that :func:`pull` with the same arguments would take,
    without fetching them: only the manifest is read (from the cache when it holds it),
    and nothing is written.

    Globs follow ``.gitignore``: ``*`` stays within a folder, ``**`` crosses folders, a
    pattern with a ``/`` is anchored at the root, one without matches at any depth, and a
    matched folder brings everything under it. Includes (patterns and ``files``) pick,
    then excludes remove. ``shard`` splits the result into contiguous runs balanced by
    bytes, the same on every machine. A pattern or path that matches nothing, or an
    empty result, raises :class:`~dspkg.errors.SelectionError` unless ``allow_empty``.
    """
    settings = Settings.from_env(env)
    version = VersionUri.parse(uri)
    subset = make_subset(include, exclude, files, shard, allow_empty, settings.env)
    source = resolve_store(store, settings, store_options)
    cache = _cache(cache_dir, settings)
    manifest = run_sync(load_manifest(source, cache, version, read_only=True))
    from dspkg.subset import Selected

    return Selected.of(manifest, subset)


def make_subset(
    include: Patterns,
    exclude: Patterns,
    files: Iterable[str] | None,
    shard: ShardLike,
    allow_empty: bool,
    env: Mapping[str, str],
    files_name: str = "files",
) -> Subset:
    """Check and compile a selection and a shard (a :class:`~dspkg.errors.UsageError`
    when malformed), before anything is fetched."""
    from dspkg.selection import Selection
    from dspkg.subset import Subset

    selection = Selection.build(
        _patterns(include),
        _patterns(exclude),
        None if files is None else [files] if isinstance(files, str) else list(files),
        list_name=files_name,
        allow_empty=allow_empty,
    )
    return Subset(selection, _shard(shard, env))


def _patterns(patterns: Patterns) -> list[str]:
    return [patterns] if isinstance(patterns, str) else list(patterns)


def _shard(shard: ShardLike, env: Mapping[str, str]) -> Shard | None:
    from dspkg.sharding import Shard, parse_shard

    if shard is None:
        return None
    if isinstance(shard, str):
        return parse_shard(shard, env)
    rank, world = shard
    return Shard(int(rank), int(world))


def datasets(
    *,
    store: StoreLike = None,
    store_options: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
) -> list[DatasetSummary]:
    """Every dataset in the store, with its number of versions and ``latest``."""
    from dspkg.browse import list_datasets

    source = resolve_store(store, Settings.from_env(env), store_options)
    return run_sync(list_datasets(Catalog(source)))


def versions(
    dataset: str,
    *,
    store: StoreLike = None,
    store_options: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
) -> list[VersionSummary]:
    """The versions of ``dataset`` (a name or ``dataset://name``), oldest first;
    :class:`~dspkg.errors.NotFound` when the dataset has none."""
    from dspkg.browse import list_versions

    name = parse_dataset_uri(dataset if dataset.startswith(SCHEME) else SCHEME + dataset)
    source = resolve_store(store, Settings.from_env(env), store_options)
    found = run_sync(list_versions(Catalog(source), name))
    if not found:
        known = run_sync(Catalog(source).datasets())
        hint = f"datasets: {', '.join(known[:10])}" if known else "the store holds no datasets"
        raise NotFound(f"dataset://{name} has no versions in {source.url} ({hint})", uri=name)
    return found


def show(
    uri: str,
    *,
    files: bool = True,
    store: StoreLike = None,
    store_options: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
) -> VersionDetails:
    """One version: files, bytes, parent, aliases and packages. Without ``files`` only
    its manifest root is read: the counts, not the file list."""
    from dspkg.browse import describe_version

    version = VersionUri.parse(uri)
    source = resolve_store(store, Settings.from_env(env), store_options)
    return run_sync(describe_version(Catalog(source), version, files=files))


def diff(
    uri_a: str,
    uri_b: str,
    *,
    store: StoreLike = None,
    store_options: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
) -> VersionDiff:
    """Added, removed and changed files from version ``uri_a`` to ``uri_b``, and bytes each way.

    ``uri_a`` and ``uri_b`` may name different datasets, and either may be an alias.
    """
    from dspkg.browse import compare_versions

    a, b = VersionUri.parse(uri_a), VersionUri.parse(uri_b)
    source = resolve_store(store, Settings.from_env(env), store_options)
    return run_sync(compare_versions(Catalog(source), a, b))


def _cache(cache_dir: str | Path | None, settings: Settings) -> Cache:
    return Cache(Path(cache_dir) if cache_dir else settings.cache_dir)


def cache_info(
    *, cache_dir: str | Path | None = None, env: Mapping[str, str] | None = None
) -> CacheInfo:
    """Size, objects, and the versions the cache holds with their last use."""
    settings = Settings.from_env(env)
    with _cache(cache_dir, settings) as cache:
        from dspkg import upkeep

        return upkeep.info(cache, settings.cache_max_size)


def cache_verify(
    *, cache_dir: str | Path | None = None, env: Mapping[str, str] | None = None
) -> VerifyResult:
    """Re-hash every cached object; bad ones are dropped and reported."""
    with _cache(cache_dir, Settings.from_env(env)) as cache:
        from dspkg import upkeep

        return upkeep.verify(cache)


def cache_prune(
    max_size: int | str | None = None,
    *,
    cache_dir: str | Path | None = None,
    env: Mapping[str, str] | None = None,
) -> PruneResult:
    """Evict least recently used versions until the cache fits in ``max_size``
    (default: ``DSPKG_CACHE_MAX_SIZE`` or ``max_size`` in ``<cache>/config.toml``)."""
    settings = Settings.from_env(env)
    limit = parse_size(max_size) if max_size is not None else settings.cache_max_size
    if limit is None:
        raise InvalidArgument(
            "no size to prune to: pass --max-size SIZE or set DSPKG_CACHE_MAX_SIZE"
        )
    with _cache(cache_dir, settings) as cache:
        from dspkg import upkeep

        return upkeep.prune(cache, limit)


def cache_clear(
    *, cache_dir: str | Path | None = None, env: Mapping[str, str] | None = None
) -> dict[str, int]:
    """Remove everything the cache holds."""
    with _cache(cache_dir, Settings.from_env(env)) as cache:
        from dspkg import upkeep

        return upkeep.clear(cache)


def mount(
    uri: str,
    mountpoint: str | Path,
    *,
    store: StoreLike = None,
    prefetch: bool = False,
    cache_dir: str | Path | None = None,
    store_options: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    log: Callable[[str], None] = lambda line: None,
    on_ready: Callable[[ManifestRoot], None] = lambda root: None,
) -> MountSummary:
    """Mount ``uri`` read-only at ``mountpoint`` and serve it until it is unmounted
    (``dspkg unmount``, SIGINT or SIGTERM); files are fetched when first opened.

    Raises :class:`~dspkg.errors.MountError` where FUSE is unavailable.
    """
    from dspkg.mounting import serve

    settings = Settings.from_env(env)
    version = VersionUri.parse(uri)
    source = resolve_store(store, settings, store_options)
    with _cache(cache_dir, settings) as cache:
        return serve(
            version,
            Path(mountpoint),
            source,
            cache,
            prefetch=prefetch,
            speedups=settings.speedups,
            log=log,
            on_ready=on_ready,
        )


def mount_background(
    uri: str,
    mountpoint: str | Path,
    *,
    store: str | None = None,
    prefetch: bool = False,
    store_options: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[int, Path]:
    """Start ``dspkg mount`` as a background process; return its pid and log file once
    the mount is ready (or raise its error)."""
    from dspkg.mounting import mount_argv, require_fuse, start_mount

    settings = Settings.from_env(env)
    VersionUri.parse(uri)
    require_fuse(str(mountpoint))
    point = Path(mountpoint).absolute()
    argv = mount_argv(
        uri,
        point,
        store=store or settings.store_url,
        store_options=store_options,
        prefetch=prefetch,
    )
    log = Cache(settings.cache_dir).log_file(f"mount-{store_id(str(point))}.log")
    with log.open("ab") as output:
        started = start_mount(argv, point, env=settings.env, output=output, detach=True)
    return started.proc.pid, log


def unmount(mountpoint: str | Path) -> None:
    """Unmount a dspkg mount (also one whose process was killed)."""
    from dspkg.mounting import unmount as unmount_point

    unmount_point(Path(mountpoint).absolute())


def open_version(
    uri: str,
    *,
    store: StoreLike = None,
    cache_dir: str | Path | None = None,
    store_options: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
) -> VersionReader:
    """A version's files to read without pulling it: ``files()``, ``open(path)``,
    ``read(path)``, and ``len(v)`` / ``v[i]`` (bytes of the i-th file in manifest order) as
    a map-style dataset. Files are fetched into the shared cache when first read and
    verified before any byte is returned. Safe in threads and in forked workers.

    ``store`` is a URL (or a :class:`Store`, whose URL is used: the fetching runs in a
    helper process with a connection of its own); ``memory://`` stores cannot be read.
    """
    from dspkg.reader import start_reader

    settings = Settings.from_env(env)
    VersionUri.parse(uri)
    url = store.url if isinstance(store, Store) else store or settings.store_url
    if url.startswith("memory:"):
        raise InvalidArgument(
            f"open_version cannot read {url}: a memory store lives in one process and the "
            "reader fetches from a helper process; use a file:// or object store"
        )
    cache = Path(cache_dir) if cache_dir else settings.cache_dir
    with Cache(cache):  # creates the cache's directories
        pass
    return start_reader(
        uri,
        store_url=url,
        store_options=dict(store_options or {}),
        cache_root=cache,
        env=dict(settings.env),
    )
