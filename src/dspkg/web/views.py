"""The data of every page, as JSON-ready documents: the API returns them, the pages render them.

One function per page, so a page and its ``/api/`` twin cannot disagree. Names from the
URL are checked against the naming rule and paths are looked up in the manifest (never
joined onto anything), so a request can only reach what a manifest names.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from dspkg.browse import list_datasets, list_versions
from dspkg.catalog import Catalog
from dspkg.errors import DspkgError, InvalidArgument, NotFound
from dspkg.names import VersionUri, check_name
from dspkg.store import Store
from dspkg.versiondiff import KINDS, ChangeKind
from dspkg.web.manifests import Folder, ManifestCache, VersionFacts, VersionView
from dspkg.web.preview import (
    PREVIEW_MAX_BYTES,
    failed,
    make_preview,
    read_verified,
    source_of,
    too_large,
)

T = TypeVar("T")
MAX_LINEAGE = 50
# Manifests read at once for the lists of versions: each can take hundreds of MB while
# it is parsed, and parsing holds the GIL anyway.
READ_AT_ONCE = 2


@dataclass(frozen=True)
class Limits:
    per_page: int = 200
    """Entries on one page of a folder or a diff."""
    preview_max: int = PREVIEW_MAX_BYTES
    """Larger files get no preview (a verified preview reads the whole file)."""
    buffered_max: int = 8 << 20
    """Larger downloads are streamed and verified on the way (see ``downloads``)."""


@dataclass(frozen=True)
class Site:
    """What every page reads from: one store, and the manifests kept between requests."""

    store: Store
    cache: ManifestCache
    limits: Limits = Limits()

    @property
    def per_page(self) -> int:
        return self.limits.per_page

    @property
    def catalog(self) -> Catalog:
        return Catalog(self.store)


def version_uri(dataset: str, version: str) -> VersionUri:
    return VersionUri(check_name(dataset, what="dataset name"), check_name(version, what="version"))


async def _bounded(jobs: Iterable[Awaitable[T]], limit: int = READ_AT_ONCE) -> list[T]:
    slots = asyncio.Semaphore(limit)

    async def one(job: Awaitable[T]) -> T:
        async with slots:
            return await job

    return list(await asyncio.gather(*(one(j) for j in jobs)))


async def _facts_or_error(site: Site, dataset: str, version: str) -> VersionFacts | DspkgError:
    try:
        return await site.cache.facts(site.catalog, dataset, version)
    except DspkgError as exc:  # one damaged version must not hide the others
        return exc


def _page_of(total: int, page: int, per_page: int, what: str) -> tuple[int, int, int]:
    """``(pages, start, end)`` of page ``page`` (1-based)."""
    pages = max(1, math.ceil(total / per_page))
    if page < 1 or page > pages:
        raise NotFound(f"page {page} of {what} does not exist (pages 1-{pages})", uri=what)
    start = (page - 1) * per_page
    return pages, start, min(start + per_page, total)


# --- datasets --------------------------------------------------------------------------


async def datasets_doc(site: Site) -> dict[str, Any]:
    found = await list_datasets(site.catalog)
    latest = await _bounded(
        _facts_or_error(site, d.name, d.latest) for d in found if d.latest is not None
    )
    by_name = {f.dataset: f for f in latest if isinstance(f, VersionFacts)}
    rows = []
    for d in found:
        facts = by_name.get(d.name)
        rows.append(
            {
                **d.to_json(),
                "files": facts.files if facts else None,
                "bytes": facts.bytes if facts else None,
                "packaged": facts.packages > 0 if facts else None,
            }
        )
    return {"store": site.store.url, "datasets": rows}


# --- one dataset -----------------------------------------------------------------------


async def dataset_doc(site: Site, dataset: str) -> dict[str, Any]:
    check_name(dataset, what="dataset name")
    catalog = site.catalog
    listed = await list_versions(catalog, dataset)
    if not listed:
        raise NotFound(
            f"dataset {dataset} not found in {site.store.url}", uri=f"dataset://{dataset}"
        )
    results = await _bounded(_facts_or_error(site, dataset, v.version) for v in listed)
    rows = []
    for summary, facts in zip(listed, results, strict=True):
        row: dict[str, Any] = {"aliases": list(summary.aliases)}
        if isinstance(facts, VersionFacts):
            row.update(facts.to_json())
        else:
            row.update(
                uri=summary.uri,
                dataset=dataset,
                version=summary.version,
                created_at=summary.created or "",
                error=str(facts),
            )
        rows.append(row)
    rows.sort(key=lambda r: (r["created_at"], r["version"]), reverse=True)
    return {
        "dataset": dataset,
        "uri": f"dataset://{dataset}",
        "versions": rows,
        "lineage": lineage_tree(rows, dataset),
    }


def lineage_tree(rows: Sequence[dict[str, Any]], dataset: str) -> list[dict[str, Any]]:
    """The versions as a tree by ``from``, flattened depth-first (oldest first).

    A version's only child stays at its depth, so a straight history is a flat list and
    only branches indent. Parents in other datasets, missing parents and (in a damaged
    store) cycles make a version a root; every version appears exactly once.
    """
    order = sorted(rows, key=lambda r: (r["created_at"], r["version"]))
    names = {r["version"] for r in order}
    children: dict[str, list[str]] = {}
    roots: list[str] = []
    parent_of: dict[str, str | None] = {}
    for r in order:
        parent = r.get("from")
        local = None
        if parent:
            uri = VersionUri.parse(parent)
            if uri.dataset == dataset and uri.version in names and uri.version != r["version"]:
                local = uri.version
        parent_of[r["version"]] = parent
        if local is None:
            roots.append(r["version"])
        else:
            children.setdefault(local, []).append(r["version"])
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for root in [*roots, *(r["version"] for r in order)]:
        stack = [(root, 0)]
        while stack:
            name, depth = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            out.append({"version": name, "depth": depth, "from": parent_of[name]})
            kids = [k for k in children.get(name, []) if k not in seen]
            step = 1 if len(kids) > 1 else 0
            stack.extend((k, depth + step) for k in reversed(kids))
    return out


# --- one version -----------------------------------------------------------------------


async def _ancestors(site: Site, start: str | None) -> list[dict[str, Any]]:
    chain: list[dict[str, Any]] = []
    seen: set[str] = set()
    parent = start
    while parent and parent not in seen and len(chain) < MAX_LINEAGE:
        seen.add(parent)
        uri = VersionUri.parse(parent)
        try:
            facts = await site.cache.facts(site.catalog, uri.dataset, uri.version)
        except DspkgError as exc:
            chain.append(
                {"uri": parent, "dataset": uri.dataset, "version": uri.version, "error": str(exc)}
            )
            break
        chain.append({**facts.to_json()})
        parent = facts.parent
    return chain


async def _view(site: Site, dataset: str, version: str) -> VersionView:
    return await site.cache.view(site.catalog, version_uri(dataset, version))


async def version_doc(site: Site, dataset: str, version: str, page: int = 1) -> dict[str, Any]:
    view = await _view(site, dataset, version)
    m = view.manifest
    aliases, versions, lineage = await asyncio.gather(
        site.catalog.aliases(m.dataset),
        site.catalog.versions(m.dataset),
        _ancestors(site, m.parent),
    )
    packages = [
        {**p.to_json(), "files_used": view.files_per_package[i]} for i, p in enumerate(m.packages)
    ]
    return {
        **view.facts.to_json(),
        "requested": version if version != m.version else None,
        "aliases": sorted(a for a, v in aliases.items() if v == m.version),
        "lineage": lineage,
        "packaged_files": sum(view.files_per_package),
        "packages": packages,
        "other_versions": [v for v in versions if v != m.version],
        "folder": folder_listing(site, view, view.folders[""], page),
    }


async def folder_doc(
    site: Site, dataset: str, version: str, path: str, page: int = 1
) -> dict[str, Any]:
    view = await _view(site, dataset, version)
    folder = view.folder(path.strip("/"))
    if folder is None:
        raise NotFound(f"no folder {path!r} in {view.uri}", uri=f"{view.uri}/{path}")
    return {
        "uri": str(view.uri),
        "dataset": view.manifest.dataset,
        "version": view.manifest.version,
        "requested": version if version != view.manifest.version else None,
        "folder": folder_listing(site, view, folder, page),
    }


def folder_listing(site: Site, view: VersionView, folder: Folder, page: int) -> dict[str, Any]:
    """One page of a folder: subfolders first, then files, each by name."""
    total = folder.entries
    where = f"{view.uri}/{folder.path}" if folder.path else str(view.uri)
    pages, start, end = _page_of(total, page, site.per_page, where)
    n_sub = len(folder.subfolders)
    items: list[dict[str, Any]] = []
    for path in folder.subfolders[start : min(end, n_sub)]:
        sub = view.folders[path]
        items.append(
            {
                "type": "folder",
                "name": sub.name,
                "path": path,
                "files": sub.total_files,
                "bytes": sub.total_bytes,
            }
        )
    m = view.manifest
    for index in folder.files[max(start - n_sub, 0) : max(end - n_sub, 0)]:
        f = m.files[index]
        items.append(
            {
                "type": "file",
                "name": f.path.rpartition("/")[2],
                "path": f.path,
                "size": f.size,
                "sha256": f.sha256,
                "package": m.packages[f.package].name if f.package is not None else None,
                "offset": f.offset,
            }
        )
    parts = folder.path.split("/") if folder.path else []
    return {
        "path": folder.path,
        "name": folder.name,
        "breadcrumbs": [
            {"name": part, "path": "/".join(parts[: i + 1])} for i, part in enumerate(parts)
        ],
        "files": folder.total_files,
        "bytes": folder.total_bytes,
        "folders_here": n_sub,
        "files_here": len(folder.files),
        "entries": total,
        "page": page,
        "pages": pages,
        "per_page": site.per_page,
        "items": items,
    }


# --- one file --------------------------------------------------------------------------


async def file_doc(site: Site, dataset: str, version: str, path: str) -> dict[str, Any]:
    view = await _view(site, dataset, version)
    m = view.manifest
    entry = view.file(path)
    if entry is None:
        raise NotFound(f"no file {path!r} in {view.uri}", uri=f"{view.uri}/{path}")
    key, start = source_of(m, entry)
    if entry.size > site.limits.preview_max:
        preview = too_large(site.limits.preview_max)
    else:
        try:
            preview = make_preview(path, await read_verified(site.store, m, entry))
        except DspkgError as exc:
            preview = failed(str(exc))
    parent = path.rpartition("/")[0]
    parts = parent.split("/") if parent else []
    return {
        "uri": str(m.uri),
        "dataset": m.dataset,
        "version": m.version,
        "requested": version if version != m.version else None,
        "path": entry.path,
        "name": entry.path.rpartition("/")[2],
        "folder": parent,
        "breadcrumbs": [
            {"name": part, "path": "/".join(parts[: i + 1])} for i, part in enumerate(parts)
        ],
        "size": entry.size,
        "sha256": entry.sha256,
        "package": m.packages[entry.package].name if entry.package is not None else None,
        "offset": entry.offset,
        "source": {
            "key": key,
            "start": start,
            "end": start + entry.size,
            "kind": "package" if entry.package is not None else "blob",
        },
        "preview": preview.to_json(),
    }


# --- diff ------------------------------------------------------------------------------


def parse_change(text: str | None) -> ChangeKind | None:
    if not text or text == "all":
        return None
    for kind in KINDS:
        if kind == text:
            return kind
    raise InvalidArgument(f"unknown change {text!r}: use added, removed, changed or all")


async def diff_doc(
    site: Site, a: str | None, b: str | None, change: str | None = None, page: int = 1
) -> dict[str, Any]:
    if not a or not b:
        raise InvalidArgument(
            "a diff needs two versions: ?a=dataset://<dataset>/<version>&b=dataset://..."
        )
    kind = parse_change(change)
    result = await site.cache.diff(site.catalog, VersionUri.parse(a), VersionUri.parse(b))
    shown = result.of_kind(kind)
    pages, start, end = _page_of(len(shown), page, site.per_page, f"the diff of {a} and {b}")
    return {
        **result.summary_json(),
        "requested_a": a,
        "requested_b": b,
        "change": kind,
        "entries": len(shown),
        "page": page,
        "pages": pages,
        "per_page": site.per_page,
        "items": [c.to_json() for c in shown[start:end]],
    }
