"""The web application: each page and its ``/api/`` twin, downloads, and one-line errors.

==========================================  ===========================================
page                                        JSON
==========================================  ===========================================
``/``                                       ``/api/datasets``
``/datasets/{dataset}``                     ``/api/datasets/{dataset}``
``/datasets/{dataset}/{version}``           ``/api/datasets/{dataset}/{version}``
``/datasets/{d}/{v}/tree/{folder}``         ``/api/datasets/{d}/{v}/tree/{folder}``
``/datasets/{d}/{v}/files/{path}``          ``/api/datasets/{d}/{v}/files/{path}``
``/diff?a=URI&b=URI``                       ``/api/diff?a=URI&b=URI``
==========================================  ===========================================

Downloads: ``/datasets/{d}/{v}/download/{path}`` (a file) and
``/datasets/{d}/{v}/packages/{name}`` (a package), both verified (see ``downloads``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from dspkg.errors import (
    DspkgError,
    Integrity,
    InvalidArgument,
    InvalidName,
    NotFound,
    StoreError,
    UnsafePackage,
)
from dspkg.sizes import format_size
from dspkg.store import Store
from dspkg.web import views
from dspkg.web.downloads import file_response, package_response
from dspkg.web.manifests import ManifestCache, VersionView
from dspkg.web.security import LOOPBACK_NAMES, Gate

log = logging.getLogger("dspkg.web")

Doc = dict[str, Any]
Builder = Callable[[views.Site, Request], Awaitable[Doc]]


def create_app(
    store: Store,
    *,
    token: str | None = None,
    hosts: Collection[str] | None = LOOPBACK_NAMES,
    cache: ManifestCache | None = None,
    limits: views.Limits | None = None,
) -> Starlette:
    """The app for one store. ``hosts``: the ``Host`` names it answers to (None: any);
    ``token``: required on every request when given."""
    site = views.Site(store, cache or ManifestCache(), limits or views.Limits())
    templates = _templates()
    routes: list[BaseRoute] = []
    for html_path, api_path, template, builder in _PAGES:
        routes.append(Route(html_path, _html(site, templates, template, builder)))
        routes.append(Route(api_path, _api(site, builder)))
    routes += [
        Route("/api", _api_index),
        Route("/api/", _api_index),
        Route(_V + "/download/{path:path}", _download_file(site, templates)),
        Route(_V + "/packages/{name}", _download_package(site, templates)),
        Mount("/static", StaticFiles(packages=[("dspkg.web", "static")]), name="static"),
    ]

    async def unknown(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        message = "no such page" if status == 404 else f"HTTP {status}"
        return _error(request, templates, status, message)

    return Starlette(
        routes=routes,
        middleware=[Middleware(Gate, token=token, hosts=hosts)],
        exception_handlers={HTTPException: unknown},
    )


# --- pages and their JSON twins ---------------------------------------------------------


def _page_number(request: Request) -> int:
    text = request.query_params.get("page", "1")
    try:
        return int(text)
    except ValueError:
        raise InvalidArgument(f"page {text!r} is not a whole number") from None


async def _datasets(site: views.Site, request: Request) -> Doc:
    return await views.datasets_doc(site)


async def _dataset(site: views.Site, request: Request) -> Doc:
    return await views.dataset_doc(site, request.path_params["dataset"])


async def _version(site: views.Site, request: Request) -> Doc:
    p = request.path_params
    return await views.version_doc(site, p["dataset"], p["version"], _page_number(request))


async def _folder(site: views.Site, request: Request) -> Doc:
    p = request.path_params
    return await views.folder_doc(
        site, p["dataset"], p["version"], p["path"], _page_number(request)
    )


async def _file(site: views.Site, request: Request) -> Doc:
    p = request.path_params
    return await views.file_doc(site, p["dataset"], p["version"], p["path"])


async def _diff(site: views.Site, request: Request) -> Doc:
    q = request.query_params
    return await views.diff_doc(
        site, q.get("a"), q.get("b"), q.get("change"), _page_number(request)
    )


_V = "/datasets/{dataset}/{version}"
_PAGES: list[tuple[str, str, str, Builder]] = [
    ("/", "/api/datasets", "datasets.html", _datasets),
    ("/datasets/{dataset}", "/api/datasets/{dataset}", "dataset.html", _dataset),
    (_V, "/api" + _V, "version.html", _version),
    (_V + "/tree/{path:path}", "/api" + _V + "/tree/{path:path}", "folder.html", _folder),
    (_V + "/files/{path:path}", "/api" + _V + "/files/{path:path}", "file.html", _file),
    ("/diff", "/api/diff", "diff.html", _diff),
]


def _html(
    site: views.Site, templates: jinja2.Environment, template: str, builder: Builder
) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            doc = await builder(site, request)
        except Exception as exc:
            status, message = _status_of(exc)
            return _error(request, templates, status, message)
        body = templates.get_template(template).render(doc=doc, **_context(request))
        return HTMLResponse(body)

    return endpoint


def _api(site: views.Site, builder: Builder) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            doc = await builder(site, request)
        except Exception as exc:
            status, message = _status_of(exc)
            return JSONResponse({"error": message, "status": status}, status_code=status)
        return JSONResponse(doc)

    return endpoint


async def _api_index(request: Request) -> Response:
    return JSONResponse({"endpoints": [api for _, api, _, _ in _PAGES]})


# --- downloads --------------------------------------------------------------------------


async def _exact_view(site: views.Site, params: dict[str, Any]) -> VersionView:
    uri = views.version_uri(params["dataset"], params["version"])
    return await site.cache.view(site.catalog, uri)


def _download_file(
    site: views.Site, templates: jinja2.Environment
) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        p = request.path_params
        try:
            view = await _exact_view(site, p)
            entry = view.file(p["path"])
            if entry is None:
                raise NotFound(f"no file {p['path']!r} in {view.uri}", uri=str(view.uri))
            return await file_response(
                site.store, view.manifest, entry, buffered_max=site.limits.buffered_max
            )
        except Exception as exc:
            status, message = _status_of(exc)
            return _error(request, templates, status, message)

    return endpoint


def _download_package(
    site: views.Site, templates: jinja2.Environment
) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        p = request.path_params
        try:
            view = await _exact_view(site, p)
            found = [pkg for pkg in view.manifest.packages if pkg.name == p["name"]]
            if not found:
                raise NotFound(f"no package {p['name']!r} in {view.uri}", uri=str(view.uri))
            return package_response(site.store, found[0])
        except Exception as exc:
            status, message = _status_of(exc)
            return _error(request, templates, status, message)

    return endpoint


# --- errors and rendering -----------------------------------------------------------------


def _status_of(exc: Exception) -> tuple[int, str]:
    """The HTTP status and one-line message for an error raised while building a page."""
    if isinstance(exc, NotFound | InvalidName):
        return 404, str(exc)
    if isinstance(exc, InvalidArgument):
        return 400, str(exc)
    if isinstance(exc, Integrity | UnsafePackage | StoreError):
        return 502, str(exc)
    if isinstance(exc, DspkgError):
        return 500, str(exc)
    log.exception("internal error")
    first = str(exc).splitlines()[0] if str(exc) else ""
    return 500, f"internal error: {type(exc).__name__}: {first} (the server log has details)"


def _error(request: Request, templates: jinja2.Environment, status: int, message: str) -> Response:
    if request.url.path.startswith("/api/") or request.url.path == "/api":
        return JSONResponse({"error": message, "status": status}, status_code=status)
    body = templates.get_template("error.html").render(
        status=status, message=" ".join(message.split()), **_context(request)
    )
    return HTMLResponse(body, status_code=status)


def _context(request: Request) -> dict[str, Any]:
    base = request.scope.get("root_path", "").rstrip("/")
    path = request.url.path
    api = "/api/datasets" if path == "/" else "/api" + path
    query = request.url.query
    return {
        "base": base,
        "query": request.query_params,
        "api_url": base + quote(api, safe="/") + (f"?{query}" if query else ""),
    }


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("dspkg.web", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["size"] = lambda n: "-" if n is None else format_size(n)
    env.filters["num"] = lambda n: "-" if n is None else f"{n:,}"
    env.filters["urlpath"] = lambda p: quote(p, safe="/")
    env.filters["urlquery"] = urlencode
    env.filters["when"] = _when
    return env


def _when(stamp: str | None) -> str:
    """``2026-12-01T16:24:36.317494Z`` -> ``2026-12-01 16:24:36 UTC``; anything else as is."""
    if not stamp:
        return "-"
    try:
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return stamp
    if moment.tzinfo is None:
        return moment.strftime("%Y-%m-%d %H:%M:%S")
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
