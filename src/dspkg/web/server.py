"""Run the app with uvicorn on one socket, which we bind ourselves for a one-line error."""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable

import uvicorn

from dspkg.errors import InvalidArgument
from dspkg.store import Store
from dspkg.web.app import create_app
from dspkg.web.security import LOOPBACK_NAMES, check_bind


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        hint = "choose another --port" if exc.errno == errno.EADDRINUSE else "check --host"
        raise InvalidArgument(f"cannot listen on {host}:{port}: {exc.strerror}; {hint}") from None
    except (socket.gaierror, UnicodeError) as exc:
        sock.close()
        raise InvalidArgument(f"cannot listen on {host}:{port}: {exc}; check --host") from None
    sock.listen(128)
    return sock


def serve(
    store: Store,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    say: Callable[[str], None] = print,
) -> None:
    """Serve the pages of ``store`` until interrupted."""
    check_bind(host, token)
    app = create_app(store, token=token, hosts=None if token else LOOPBACK_NAMES)
    sock = listen(host, port)
    bound_port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    needs = " (every request needs the token)" if token else ""
    say(f"serving {store.url} on http://{shown}:{bound_port}/{needs}; Ctrl-C stops")
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])
