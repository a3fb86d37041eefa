"""Run the app with uvicorn on one socket, which we bind ourselves for a one-line error."""

from __future__ import annotations

import errno
import logging
import socket
import sys
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
    say: Callable[[str], None] | None = None,
) -> None:
    """Serve the pages of ``store`` until interrupted (Ctrl-C or SIGTERM)."""
    say = say or _say
    check_bind(host, token)
    _log_to_stderr()
    app = create_app(store, token=token, hosts=None if token else LOOPBACK_NAMES)
    sock = listen(host, port)
    bound_port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    needs = " (every request needs the token)" if token else ""
    say(f"serving {store.url} on http://{shown}:{bound_port}/{needs}; Ctrl-C stops")
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        pass  # uvicorn re-raises Ctrl-C once it has shut down: a normal stop
    finally:
        sock.close()
    say("stopped")


def _log_to_stderr() -> None:
    """The app's own warnings (an aborted download, an internal error) as one line each."""
    log = logging.getLogger("dspkg.web")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("dspkg serve: %(levelname)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def _say(line: str) -> None:
    # Flushed: uvicorn ends the process with the signal that stopped it, skipping buffers.
    print(line, flush=True)
