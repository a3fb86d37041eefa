"""The ``dspkg`` command line: a thin layer over :mod:`dspkg.api`.

Exit status 0 on success, 1 on an error (one line ``dspkg: error: ...``, no
traceback), 2 on bad usage. ``--json`` prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from dspkg import api, memory
from dspkg._version import __version__
from dspkg.bench.command import register as register_bench
from dspkg.cli_args import add_store, non_negative_int, positive_int, store_options, usage
from dspkg.cli_args import progress as progress_for
from dspkg.errors import DspkgError, UsageError
from dspkg.materialize import LinkMode
from dspkg.names import parse_dataset_uri
from dspkg.progress import Progress
from dspkg.publish_plan import PACKAGE_MAX_FILE
from dspkg.publish_plan import package_max_file as check_package_max_file
from dspkg.pull_plan import Tuning
from dspkg.runner.command import register as register_run
from dspkg.sizes import format_duration, format_size

if TYPE_CHECKING:
    from dspkg.manifest import ManifestRoot
    from dspkg.puller import PullResult

Handler = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return _run(args.handler, args)


def entry() -> None:
    """The ``dspkg`` program. A finished pull or publish leaves nothing to flush or release
    beyond its output, so it ends without the interpreter's teardown (freeing the manifest
    and the store client's runtime: about 0.1 s of a 1.6 s pull of 10,000 files); a
    publish on Dask closes its client the ordinary way. Its malloc keeps few arenas, so
    that freed memory is reused (see :mod:`dspkg.memory`)."""
    memory.limit_arenas()
    args = build_parser().parse_args()
    code = _run(args.handler, args)
    if getattr(args, "quick_exit", False) and not getattr(args, "dask", None):
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except OSError:  # a closed pipe: the output is lost, say so by the status
            code = code or 1
        os._exit(code)
    sys.exit(code)


def _run(handler: Handler, args: argparse.Namespace) -> int:
    try:
        return handler(args)
    except UsageError as exc:
        _error(str(exc))
        return 2
    except DspkgError as exc:
        _error(str(exc))
    except KeyboardInterrupt:
        _error("interrupted")
    except BrokenPipeError:
        # The reader went away (`dspkg show --files ... | head`): nothing to say to it,
        # and the streams' last flush at exit must not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        _error(f"{exc.strerror or exc}{where}")
    except Exception as exc:
        if os.environ.get("DSPKG_DEBUG"):
            raise
        _error(
            f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
            "(set DSPKG_DEBUG=1 for a traceback and report it)"
        )
    return 1


def _error(message: str) -> None:
    print(f"dspkg: error: {' '.join(message.split())}", file=sys.stderr, flush=True)


def _progress(args: argparse.Namespace) -> Progress:
    return progress_for(as_json=getattr(args, "json", False))


def _print_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2, sort_keys=True))


def _cmd_publish(args: argparse.Namespace) -> int:
    if args.dask:
        if args.to is not None:
            raise UsageError("--to and --dask: a Dask publish takes its versions from metadata")
        return _publish_on_dask(args, usage(check_package_max_file, args.package_max_file))
    given = [
        option
        for option, value in (
            ("--from", args.from_),
            ("--include", args.include),
            ("--exclude", args.exclude),
            ("--alias", args.alias),
        )
        if value
    ]
    if args.to is None and given:
        raise UsageError(
            f"{', '.join(given)}: only with --to dataset://DS/VER (a version from any directory)"
        )
    max_file = usage(check_package_max_file, args.package_max_file)
    if args.to is not None:
        from dspkg.dirversion import DirectoryVersion

        usage(
            DirectoryVersion.parse,
            args.to,
            from_=args.from_,
            include=args.include or (),
            exclude=args.exclude or (),
            aliases=args.alias or (),
        )
    result = api.publish(
        args.dir,
        store=args.store,
        packaging=args.packaging,
        packages_only=args.packages_only,
        package_size=args.package_size,
        package_max_file=max_file,
        jobs=args.jobs,
        part=args.part,
        to=args.to,
        from_=args.from_,
        include=args.include or (),
        exclude=args.exclude or (),
        aliases=args.alias or (),
        store_options=store_options(args.store_option),
        progress=_progress(args),
    )
    if args.json:
        _print_json(result.to_json())
        return 0
    for v in result.versions:
        state = "created" if v.created else "unchanged"
        what = v.uri
        if v.part is not None:
            state = "staged" if v.created else "already staged"
            what = f"part {v.part!r} of {v.uri}"
        packages = f", {len(v.packages)} package{'s' if len(v.packages) != 1 else ''}"
        aliases = f"; aliases {', '.join(v.aliases)}" if v.aliases else ""
        print(f"{state} {what}: {v.files:,} files, {format_size(v.bytes)}{packages}{aliases}")
    print(
        f"published {len(result.versions)} version(s) in {result.seconds:.1f} s: "
        f"{format_size(result.bytes_uploaded)} uploaded in {result.requests:,} requests"
    )
    return 0


def _publish_on_dask(args: argparse.Namespace, max_file: int) -> int:
    results = api.publish_on_dask(
        args.dir,
        args.dask,
        store=args.store,
        packaging=args.packaging,
        packages_only=args.packages_only,
        package_size=args.package_size,
        package_max_file=max_file,
        store_options=store_options(args.store_option),
        progress=_progress(args),
    )
    if args.json:
        _print_json({"versions": [r.to_json() for r in results]})
        return 0
    for r in results:
        c = r.commit
        print(
            f"{'created' if c.created else 'unchanged'} {c.uri}: {c.files:,} files, "
            f"{format_size(c.bytes)}, {c.packages} package(s) built by {r.tasks} task(s)"
        )
    return 0


def _cmd_commit(args: argparse.Namespace) -> int:
    result = api.commit(
        args.uri,
        store=args.store,
        store_options=store_options(args.store_option),
        progress=_progress(args),
    )
    if args.json:
        _print_json(result.to_json())
        return 0
    state = "committed" if result.created else "unchanged"
    print(
        f"{state} {result.uri}: {result.files:,} files, {format_size(result.bytes)}, "
        f"{result.packages} package(s) from {len(result.parts)} part(s)"
    )
    return 0


def _cmd_gc(args: argparse.Namespace) -> int:
    result = api.gc(
        store=args.store,
        grace=args.grace,
        delete=args.delete,
        store_options=store_options(args.store_option),
        progress=_progress(args),
    )
    if args.json:
        _print_json(result.to_json())
        return 0
    verb = "removed" if result.deleted else "would remove"
    for g in result.garbage:
        print(f"{verb} {g.kind} {g.key} ({format_size(g.size)})")
    counts = ", ".join(f"{n:,} {kind}(s)" for kind, n in sorted(result.counts().items()))
    print(
        f"{verb} {len(result.garbage):,} object(s), {format_size(result.bytes)}"
        f"{f' ({counts})' if counts else ''} from {result.store}; {result.versions} version(s) "
        f"referenced; {result.young:,} unreferenced object(s) younger than "
        f"{format_duration(result.grace_seconds)} kept"
    )
    if not result.deleted and result.garbage:
        print("dry run: nothing was removed; run 'dspkg gc --delete' to remove them")
    return 0


def _cmd_package(args: argparse.Namespace) -> int:
    result = api.package(
        args.uri,
        store=args.store,
        package_size=args.package_size,
        package_max_file=usage(check_package_max_file, args.package_max_file),
        jobs=args.jobs,
        dry_run=args.dry_run,
        store_options=store_options(args.store_option),
        progress=_progress(args),
    )
    if args.json:
        _print_json(result.to_json())
        return 0
    stay = f"; {result.too_big:,} file(s) stay blobs for their size" if result.too_big else ""
    if result.plan is not None:
        plan = result.plan
        print(
            f"plan for {result.uri}: {plan['files_to_package']:,} files "
            f"({format_size(plan['bytes_to_package'])}) into {len(plan['packages'])} "
            f"package(s){stay}; {plan['files_packaged_before']:,} already in packages"
        )
        for p in plan["packages"]:
            print(f"  {p['name']}  {format_size(p['size'])}  {p['files']:,} files")
        return 0
    if result.state == "packaged":
        print(
            f"packaged {result.uri}: {result.files:,} files ({format_size(result.bytes)}) into "
            f"{len(result.packages)} package(s){stay}; {format_size(result.bytes_downloaded)} "
            f"read and {format_size(result.bytes_uploaded)} written in {result.requests:,} "
            f"requests, {result.seconds:.1f} s"
        )
    return 0


def _add_package_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "package",
        help="add packages to an existing version for its files in no package",
        description="Build packages for an existing version's files that are in no package "
        "(a version made with --no-packaging, by --to, or by an older dspkg), reading their "
        "blobs, and record them in the version: its files, name and URI stay the same.",
    )
    p.add_argument("uri", help="dataset://<dataset>/<version or alias>")
    add_store(p)
    p.add_argument("--package-size", default="1GiB", help="split packages at SIZE (default 1GiB)")
    add_package_max_file(p)
    p.add_argument("--jobs", type=positive_int, default=32, help="blob reads in flight")
    p.add_argument("--dry-run", action="store_true", help="print the plan only; write nothing")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(handler=_cmd_package)


def _cmd_pull(args: argparse.Namespace) -> int:
    result = api.pull(
        args.uri,
        args.dest,
        store=args.store,
        link=args.link,
        jobs=args.jobs,
        dry_run=args.dry_run,
        store_options=store_options(args.store_option),
        progress=_progress(args),
        **_subset_options(args),
    )
    if args.json:
        _print_json(result.to_json())
        return 0
    if result.plan is not None:
        _print_selection(result)
        _print_plan(result.uri, result.plan)
        return 0
    if result.selected_files != result.files:
        _print_selection(result)
    print(
        f"pulled {result.uri} into {result.dest}: {result.selected_files:,} files, "
        f"{format_size(result.selected_bytes)} ({result.files_from_cache:,} from cache, "
        f"{result.files_fetched:,} fetched; {format_size(result.bytes_downloaded)} downloaded "
        f"in {result.requests:,} requests) in {result.seconds:.2f} s, link {result.link}"
    )
    return 0


def _subset_options(args: argparse.Namespace) -> dict[str, Any]:
    """``api.pull`` keywords from --include, --exclude, --files-from, --shard, --allow-empty.
    A list that cannot be read is bad usage (exit 2), found before anything is fetched."""
    files = None
    name = "--files-from"
    if args.files_from is not None:
        name = f"--files-from {'stdin' if args.files_from == '-' else args.files_from}"
        try:
            if args.files_from == "-":
                text = sys.stdin.read()
            else:
                with open(args.files_from, encoding="utf-8") as handle:
                    text = handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise UsageError(f"{name}: cannot read the list ({why})") from None
        from dspkg.selection import parse_list

        files = list(parse_list(text))
    return {
        "include": args.include or (),
        "exclude": args.exclude or (),
        "files": files,
        "files_name": name,
        "shard": args.shard,
        "allow_empty": args.allow_empty,
    }


def _print_selection(result: PullResult) -> None:
    print(
        f"selected {result.selected_files:,} of {result.files:,} files of {result.uri} "
        f"({format_size(result.selected_bytes)} of {format_size(result.bytes)})"
    )


def _print_plan(uri: str, plan: dict[str, Any]) -> None:
    print(f"plan for {uri}:")
    print(
        f"  {plan['files_to_fetch']:,} files to fetch, {plan['files_cached']:,} already cached; "
        f"{format_size(plan['bytes_to_fetch'])} in {plan['requests']:,} requests "
        f"({plan['ranges']:,} ranges, {plan['blobs']:,} blobs)"
    )
    est = plan["estimates"]
    a = est["assumptions"]
    print(f"  estimated at {a['rtt_ms']:.0f} ms round trip, {a['mbit']:.0f} Mbit/s:")
    for key, label in (
        ("per_file", "per-file GETs"),
        ("whole_packages", "whole packages"),
        ("ranged", "ranged GETs (planned)"),
    ):
        e = est[key]
        print(
            f"    {label:<22} {e['requests']:>9,} requests {format_size(e['bytes']):>10} "
            f"{e['seconds']:>9.2f} s"
        )


def _cmd_ls(args: argparse.Namespace) -> int:
    if args.dataset:
        name = parse_dataset_uri(args.dataset)  # the command line takes the URI form only
        versions = api.versions(
            name, store=args.store, store_options=store_options(args.store_option)
        )
        if args.json:
            _print_json({"dataset": args.dataset, "versions": [v.to_json() for v in versions]})
            return 0
        for v in versions:
            aliases = f"  ({', '.join(v.aliases)})" if v.aliases else ""
            print(f"{v.uri}  {v.created or '-'}{aliases}")
        return 0
    datasets = api.datasets(store=args.store, store_options=store_options(args.store_option))
    if args.json:
        _print_json({"datasets": [d.to_json() for d in datasets]})
        return 0
    for d in datasets:
        print(f"dataset://{d.name}  {d.versions} version(s), latest {d.latest or '-'}")
    if not datasets:
        print("no datasets in the store")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    details = api.show(
        args.uri,
        files=args.files,
        store=args.store,
        store_options=store_options(args.store_option),
    )
    doc = details.to_json(files=args.files)
    if args.json:
        _print_json(doc)
        return 0
    print(doc["uri"])
    print(f"  files:    {doc['files']:,} ({format_size(doc['bytes'])})")
    print(f"  from:     {doc['from'] or '-'}")
    print(f"  created:  {doc['created_at']}")
    print(f"  aliases:  {', '.join(doc['aliases']) or '-'}")
    print(
        f"  blobs:    {'yes' if doc['blobs'] else 'no (packaged files are only inside packages)'}"
    )
    if doc["packages"]:
        print(f"  packages: {len(doc['packages'])} ({doc['packaged_files']:,} files packaged)")
        for p in doc["packages"]:
            print(
                f"    {p['name']}  {format_size(p['size'])}  {p['entries']:,} entries"
                f"  ({p['files_used']:,} used by this version)"
            )
    else:
        print(
            f"  packages: none (files are fetched one by one; dspkg package {doc['uri']} adds them)"
        )
    big, rest = doc["unpackaged"]["too_big"], doc["unpackaged"]["not_packaged"]
    if big["files"]:
        print(
            f"  big files: {big['files']:,} of {format_size(doc['package_max_file'])} or more "
            f"({format_size(big['bytes'])}) stored as blobs, not packaged: too big to gain "
            "from a package; pulled in parallel parts"
        )
    if rest["files"] and doc["packages"]:
        print(
            f"  unpackaged: {rest['files']:,} file(s) ({format_size(rest['bytes'])}) in no "
            f"package, stored as blobs: made without packaging (dspkg package {doc['uri']})"
        )
    if args.files:
        for f in doc["file_list"]:
            where = f"  [{f['package']} @ {f['offset']}]" if f["package"] else "  [blob]"
            print(f"    {f['path']}  {f['size']:,}  {f['sha256'][:12]}{where}")
    return 0


def _cmd_cache(args: argparse.Namespace) -> int:
    action: str = args.action
    if action == "info":
        info = api.cache_info()
        if args.json:
            _print_json(info.to_json())
            return 0
        limit = format_size(info.max_size) if info.max_size else "none"
        print(
            f"cache {info.root}: {info.objects:,} objects, {format_size(info.disk_bytes)} on disk"
        )
        print(f"  size limit: {limit}")
        for v in info.versions:
            pinned = "  (in use)" if v.pinned else ""
            part = " (pulled in part)" if v.partial else ""
            print(
                f"  {v.uri}  {v.files:,} files{part}, {format_size(v.bytes)}, "
                f"last used {v.to_json()['last_used']}{pinned}  [{v.store}]"
            )
        return 0
    if action == "verify":
        checked = api.cache_verify()
        if args.json:
            _print_json(checked.to_json())
        else:
            print(f"checked {checked.objects:,} objects ({format_size(checked.bytes)})")
            for obj, problem in checked.bad:
                print(f"  dropped {obj}: {problem}")
        if checked.bad:
            _error(
                f"{len(checked.bad)} cached object(s) were bad and have been dropped; "
                "the next pull fetches them again"
            )
            return 1
        return 0
    if action == "prune":
        pruned = api.cache_prune(args.max_size)
        if args.json:
            _print_json(pruned.to_json())
        else:
            print(
                f"pruned to {format_size(pruned.after)} (limit {format_size(pruned.max_size)}, "
                f"was {format_size(pruned.before)}): {len(pruned.evicted)} version(s) evicted, "
                f"{pruned.objects_removed:,} objects removed"
            )
            for uri in pruned.evicted:
                print(f"  evicted {uri}")
        if not pruned.reached:
            in_use = len(pruned.in_use)
            _error(
                f"the cache still takes {format_size(pruned.after)}, above the limit of "
                f"{format_size(pruned.max_size)}: "
                + (
                    f"{in_use} version(s) in use by running pulls or jobs cannot be evicted; "
                    "prune again when they end"
                    if in_use
                    else "what remains is not evictable (records and directories)"
                )
            )
            return 1
        return 0
    cleared = api.cache_clear()
    if args.json:
        _print_json(cleared)
    else:
        print(
            f"cleared {cleared['objects_removed']:,} objects "
            f"({format_size(cleared['bytes_removed'])})"
        )
    return 0


def _cmd_mount(args: argparse.Namespace) -> int:
    options = store_options(args.store_option)
    if args.background:
        pid, log_file = api.mount_background(
            args.uri,
            args.mountpoint,
            store=args.store,
            prefetch=args.prefetch,
            store_options=options,
        )
        print(
            f"mounted {args.uri} at {args.mountpoint} (process {pid}, log {log_file}); "
            f"stop it with dspkg unmount {args.mountpoint}"
        )
        return 0
    from dspkg.mounting import announce_ready, exit_with_parent

    if args.exit_with_parent is not None:
        exit_with_parent(args.exit_with_parent)

    def log(line: str) -> None:
        print(f"dspkg mount: {line}", file=sys.stderr, flush=True)

    def ready(root: ManifestRoot) -> None:
        print(
            f"mounted {root.uri} at {args.mountpoint}: {root.files:,} files, "
            f"{format_size(root.bytes)}; Ctrl-C or dspkg unmount {args.mountpoint} "
            "to stop",
            flush=True,
        )
        if args.ready_fd is not None:
            announce_ready(args.ready_fd)

    summary = api.mount(
        args.uri,
        args.mountpoint,
        store=args.store,
        prefetch=args.prefetch,
        store_options=options,
        log=log,
        on_ready=ready,
    )
    print(summary.describe(), flush=True)
    return 0


def _cmd_unmount(args: argparse.Namespace) -> int:
    api.unmount(args.mountpoint)
    print(f"unmounted {args.mountpoint}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from dspkg.demo import run_demo

    return run_demo(files=args.files, root=args.root, wan=args.wan)


def _cmd_diff(args: argparse.Namespace) -> int:
    result = api.diff(
        args.uri_a, args.uri_b, store=args.store, store_options=store_options(args.store_option)
    )
    if args.json:
        _print_json(result.to_json())
        return 0
    marks = {"added": "+", "removed": "-", "changed": "~"}
    for c in result.changes:
        before = format_size(c.a.size) if c.a else ""
        after = format_size(c.b.size) if c.b else ""
        sizes = f"{before} -> {after}" if before and after else before or after
        print(f"{marks[c.kind]} {c.path}  ({sizes})")
    print(
        f"{result.a} -> {result.b}: {result.added.files:,} added "
        f"({format_size(result.added.bytes)}), {result.removed.files:,} removed "
        f"({format_size(result.removed.bytes)}), {result.changed.files:,} changed, "
        f"{result.unchanged.files:,} unchanged; {format_size(result.bytes_a_to_b)} new in "
        f"{result.b}, {format_size(result.bytes_b_to_a)} of {result.a} gone"
    )
    return 0


def _add_diff_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("diff", help="added, removed and changed files between two versions")
    p.add_argument("uri_a", help="dataset://<dataset>/<version or alias>: the older one")
    p.add_argument("uri_b", help="dataset://<dataset>/<version or alias>: the newer one")
    add_store(p)
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(handler=_cmd_diff)


def _cmd_serve(args: argparse.Namespace) -> int:
    from dspkg.config import Settings
    from dspkg.errors import MissingDependency
    from dspkg.web import WEB_MODULES

    try:
        from dspkg.web.server import serve
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in WEB_MODULES:
            raise
        raise MissingDependency(
            f"dspkg serve needs the web extra ({exc.name} is missing): pip install 'dspkg[web]'",
            extra="web",
        ) from None
    settings = Settings.from_env()
    token = args.token or settings.env.get("DSPKG_SERVE_TOKEN") or None
    store = api.resolve_store(args.store, settings, store_options(args.store_option))
    serve(store, host=args.host, port=args.port, token=token)
    return 0


def _add_serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="web pages and a JSON API for the store's datasets")
    add_store(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument(
        "--port", type=non_negative_int, default=8000, help="port (default 8000; 0: any free one)"
    )
    p.add_argument(
        "--token",
        help="require this token on every request (default $DSPKG_SERVE_TOKEN); "
        "needed with a --host other than loopback",
    )
    p.set_defaults(handler=_cmd_serve)


def _add_subset(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("subsets and shards (see docs/cli.md)")
    g.add_argument(
        "--include",
        action="append",
        metavar="GLOB",
        help="take only files matching GLOB (repeatable; gitignore rules: * within a folder, "
        "** across folders, a matched folder brings what is under it)",
    )
    g.add_argument(
        "--exclude", action="append", metavar="GLOB", help="leave out files matching GLOB"
    )
    g.add_argument(
        "--files-from",
        metavar="FILE",
        help="take the paths listed in FILE, one a line ('-' for stdin; # comments)",
    )
    g.add_argument(
        "--shard",
        metavar="RANK/WORLD",
        help="take rank RANK's share of WORLD, balanced by bytes and contiguous; 'auto' reads "
        "RANK and WORLD_SIZE (as torchrun sets them)",
    )
    g.add_argument(
        "--allow-empty",
        action="store_true",
        help="accept patterns or listed paths that match nothing, and an empty result",
    )


def add_package_max_file(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--package-max-file",
        metavar="SIZE",
        default=str(PACKAGE_MAX_FILE),
        help=f"files of SIZE or more stay out of packages, stored as blobs "
        f"(default {format_size(PACKAGE_MAX_FILE)})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dspkg",
        description="Package datasets of many small files into a few ZIP packages, and pull "
        "them fast through a shared local cache.",
    )
    parser.add_argument("--version", action="version", version=f"dspkg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "publish", help="publish the dataset versions named by a directory's metadata"
    )
    p.add_argument(
        "dir",
        help="directory of outputs with valohai.metadata.jsonl and/or sidecars; "
        "with --to, any directory",
    )
    add_store(p)
    p.add_argument(
        "--to",
        metavar="URI",
        help="publish every file of DIR as this version (dataset://DS/VER); metadata is ignored",
    )
    p.add_argument(
        "--from",
        dest="from_",
        metavar="URI",
        help="with --to: build on this version (its files, plus DIR's)",
    )
    p.add_argument(
        "--include",
        action="append",
        metavar="GLOB",
        help="with --to: take only DIR's files this glob matches (repeatable)",
    )
    p.add_argument(
        "--exclude",
        action="append",
        metavar="GLOB",
        help="with --to: leave out the files (DIR's and --from's) this glob matches (repeatable)",
    )
    p.add_argument(
        "--alias",
        action="append",
        metavar="NAME",
        help="with --to: move this alias to the version too (repeatable)",
    )
    p.add_argument(
        "--packaging",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="package every version (--no-packaging: none); default: versions whose metadata "
        "asks for it, when VH_ENABLE_DATASET_VERSION_PACKAGING is set",
    )
    p.add_argument(
        "--packages-only", action="store_true", help="store files only inside packages (no blobs)"
    )
    p.add_argument("--package-size", default="1GiB", help="split packages at SIZE (default 1GiB)")
    add_package_max_file(p)
    p.add_argument("--jobs", type=positive_int, default=32, help="requests in flight")
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--part",
        metavar="NAME",
        help="stage these files as part NAME of each version; 'dspkg commit URI' merges the parts",
    )
    where.add_argument(
        "--dask",
        metavar="ADDRESS",
        help="build the packages on the workers of this Dask scheduler (they must read DIR)",
    )
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(handler=_cmd_publish, quick_exit=True)

    p = sub.add_parser("commit", help="merge the staged parts of a version into it")
    p.add_argument("uri", help="dataset://<dataset>/<version>")
    add_store(p)
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(handler=_cmd_commit)

    p = sub.add_parser("pull", help="make a dataset version appear in a directory")
    p.add_argument("uri", help="dataset://<dataset>/<version or alias>")
    p.add_argument("dest", help="destination directory (absent or empty)")
    add_store(p)
    p.add_argument(
        "--link",
        default="auto",
        choices=[m.value for m in LinkMode],
        help="how files appear in DEST (default auto: reflink, then hardlink, then copy)",
    )
    p.add_argument(
        "--jobs",
        type=positive_int,
        default=Tuning().blob_requests,
        help=f"requests in flight (default {Tuning().blob_requests}; ranged GETs use at most "
        f"{Tuning().range_requests})",
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan and estimates only")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    _add_subset(p)
    p.set_defaults(handler=_cmd_pull, quick_exit=True)

    p = sub.add_parser("ls", help="list datasets, or the versions of one dataset")
    p.add_argument("dataset", nargs="?", help="dataset://<dataset>")
    add_store(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_cmd_ls)

    p = sub.add_parser("show", help="one version: files, bytes, parent, aliases and packages")
    p.add_argument("uri", help="dataset://<dataset>/<version or alias>")
    p.add_argument("--files", action="store_true", help="list every file too")
    add_store(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_cmd_show)

    _add_package_parser(sub)
    _add_diff_parser(sub)
    _add_serve_parser(sub)
    p = sub.add_parser(
        "gc", help="remove packages, blobs, shards and parts that no version references"
    )
    add_store(p)
    p.add_argument(
        "--grace",
        default="24h",
        help="never remove anything younger than this (default 24h; 90m, 7d, 3600s)",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--dry-run", action="store_true", help="only report what would go (the default)"
    )
    mode.add_argument("--delete", action="store_true", help="remove what is reported")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(handler=_cmd_gc)

    p = sub.add_parser("mount", help="mount a version read-only; files are fetched when opened")
    p.add_argument("uri", help="dataset://<dataset>/<version or alias>")
    p.add_argument("mountpoint", help="directory to mount on (created if absent)")
    add_store(p)
    p.add_argument(
        "--prefetch", action="store_true", help="fill the cache with the whole version meanwhile"
    )
    p.add_argument(
        "--background", action="store_true", help="return once mounted; serve from a process"
    )
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    p.add_argument("--exit-with-parent", type=int, metavar="PID", help=argparse.SUPPRESS)
    p.set_defaults(handler=_cmd_mount)

    p = sub.add_parser("unmount", help="unmount a dspkg mount")
    p.add_argument("mountpoint")
    p.set_defaults(handler=_cmd_unmount)

    register_bench(sub)

    register_run(sub)

    p = sub.add_parser("cache", help="the local cache: info, verify, prune, clear")
    p.add_argument("action", choices=["info", "verify", "prune", "clear"])
    p.add_argument("--max-size", help="prune: evict down to SIZE (default $DSPKG_CACHE_MAX_SIZE)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(handler=_cmd_cache)

    p = sub.add_parser("demo", help="publish and pull a generated dataset, with timings")
    p.add_argument("--files", type=positive_int, default=20_000, help="files to generate")
    p.add_argument("--root", help="work directory (default: a temporary directory)")
    p.add_argument(
        "--wan",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="pull from a local S3 server (SeaweedFS) behind an emulated 30 ms network "
        "(default when SeaweedFS is installed); --no-wan: from the default local store",
    )
    p.set_defaults(handler=_cmd_demo)
    return parser


if __name__ == "__main__":
    entry()
