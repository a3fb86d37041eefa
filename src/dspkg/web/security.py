"""Who may ask the server anything: the bind rule, the token gate and the response headers.

- Bound to a loopback address, the server answers only requests whose ``Host`` is a
  loopback name, so a web page elsewhere cannot reach it through DNS rebinding.
- Bound anywhere else it needs a token, and then every request must carry it: the
  header ``Authorization: Bearer <token>``, or the cookie that opening any page once with
  ``?token=<token>`` sets (the server then redirects to the same page without the token,
  so it stays out of the address bar and the history).
- Every response carries a strict Content-Security-Policy (no inline script, images only
  from the server or ``data:``), ``nosniff`` and ``no-referrer``.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
from collections.abc import Collection
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl, urlencode

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dspkg.errors import InvalidArgument

COOKIE = "dspkg_token"
# URL-unreserved characters only: a token travels in a query string, a header and a cookie.
_TOKEN = re.compile(r"[A-Za-z0-9._~-]{8,200}")
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self' data:; style-src 'self'; "
    "script-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def is_loopback(host: str) -> bool:
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond this machine without a token, or with an unusable one."""
    if token is not None and not _TOKEN.fullmatch(token):
        raise InvalidArgument(
            "the token must be 8-200 characters of A-Z a-z 0-9 . _ ~ - "
            "(for example: python -c 'import secrets; print(secrets.token_urlsafe())')"
        )
    if not is_loopback(host) and not token:
        raise InvalidArgument(
            f"--host {host} lets other machines reach the server: give --token TOKEN "
            "(or set DSPKG_SERVE_TOKEN), or leave --host at 127.0.0.1"
        )


def host_name(header: str) -> str:
    """The name of a ``Host`` header without its port: ``[::1]:8000`` -> ``::1``."""
    if header.startswith("["):
        return header[1:].partition("]")[0].lower()
    return header.rpartition(":")[0].lower() if header.count(":") == 1 else header.lower()


class Gate:
    """ASGI middleware: the Host check, the token, and the security headers."""

    def __init__(self, app: ASGIApp, *, token: str | None, hosts: Collection[str] | None) -> None:
        self.app = app
        self.token = token
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        path: str = scope["path"]
        if self.hosts is not None and host_name(headers.get("host", "")) not in self.hosts:
            await _refuse(send, path, 400, "this server answers only to localhost names")
            return
        if self.token:
            query = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
            given = [v for k, v in query if k == "token"]
            if given:
                if not self._valid(given[-1]):
                    await _refuse(send, path, 401, "wrong token")
                    return
                rest = urlencode([(k, v) for k, v in query if k != "token"])
                await _redirect(send, scope.get("root_path", "") + path, rest, self.token)
                return
            if not self._valid(_presented(headers)):
                await _refuse(
                    send,
                    path,
                    401,
                    "this server needs its token: open a page once with ?token=TOKEN, "
                    "or send the header Authorization: Bearer TOKEN",
                )
                return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                out = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    if name not in out:
                        out[name] = value
            await send(message)

        await self.app(scope, receive, with_headers)

    def _valid(self, given: str | None) -> bool:
        assert self.token is not None
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())


def _presented(headers: Headers) -> str | None:
    auth = headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value:
        return value.strip()
    cookie = SimpleCookie()
    try:
        cookie.load(headers.get("cookie", ""))
    except Exception:
        return None
    morsel = cookie.get(COOKIE)
    return morsel.value if morsel is not None else None


async def _redirect(send: Send, path: str, query: str, token: str) -> None:
    location = path + (f"?{query}" if query else "")
    headers = [
        (b"location", location.encode("latin-1", "replace")),
        (
            b"set-cookie",
            f"{COOKIE}={token}; HttpOnly; SameSite=Lax; Path=/".encode("latin-1", "replace"),
        ),
        (b"content-length", b"0"),
        (b"referrer-policy", b"no-referrer"),
    ]
    await send({"type": "http.response.start", "status": 303, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


async def _refuse(send: Send, path: str, status: int, message: str) -> None:
    if path == "/api" or path.startswith("/api/"):
        body = json.dumps({"error": message, "status": status}).encode()
        kind = b"application/json"
    else:
        body = (
            f"<!doctype html><meta charset=utf-8><title>dspkg</title><p>dspkg: error: {message}</p>"
        ).encode()
        kind = b"text/html; charset=utf-8"
    headers = [(b"content-type", kind), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
