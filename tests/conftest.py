"""Shared fixtures: S3 (moto), Azure (Azurite) and GCS servers on loopback, stores of every kind."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from hypothesis import settings

from tests.helpers import (
    AZURE_ENV,
    BUCKET,
    S3_ENV,
    STORE_KINDS,
    AzuriteServer,
    GcsServer,
    S3Server,
    StoreCase,
    free_port,
    make_store_url,
    start_azurite,
    start_fake_gcs,
    start_moto,
    write_gcs_credentials,
)

# CI runs the same examples every time, so a landing is never blocked by a new random draw;
# locally each run explores new ones.
settings.register_profile("ci", derandomize=True, deadline=None)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@contextlib.contextmanager
def _process_env(values: Mapping[str, str]) -> Iterator[None]:
    """``values`` in ``os.environ`` for a while: obstore reads credentials from there."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _stopped_at_end(proc: subprocess.Popen[bytes]) -> Iterator[None]:
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server in a subprocess on 127.0.0.1, with one bucket."""
    port = free_port()
    proc = start_moto(port)
    server = S3Server(endpoint=f"http://127.0.0.1:{port}", port=port)
    with _stopped_at_end(proc), _process_env(S3_ENV):
        server.create_bucket(BUCKET)
        yield server


@pytest.fixture(scope="session")
def azurite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteServer]:
    """Azurite's blob service in a subprocess on 127.0.0.1, with one container."""
    port = free_port()
    proc = start_azurite(port, tmp_path_factory.mktemp("azurite"))
    server = AzuriteServer(endpoint=f"http://127.0.0.1:{port}/devstoreaccount1", port=port)
    with _stopped_at_end(proc), _process_env(AZURE_ENV):
        server.create_container(BUCKET)
        yield server


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcsServer]:
    """fake-gcs-server in a subprocess on 127.0.0.1, with one bucket."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    credentials = write_gcs_credentials(
        tmp_path_factory.mktemp("gcs") / "service-account.json", endpoint
    )
    proc = start_fake_gcs(port)
    server = GcsServer(endpoint=endpoint, port=port, credentials=credentials)
    with _stopped_at_end(proc), _process_env({"GOOGLE_SERVICE_ACCOUNT": str(credentials)}):
        server.create_bucket(BUCKET)
        yield server


@pytest.fixture(params=STORE_KINDS)
def store_case(request: pytest.FixtureRequest, tmp_path: Path) -> StoreCase:
    url, env = make_store_url(request.param, tmp_path, request)
    return StoreCase(request.param, url, env)


@pytest.fixture(params=["file", "s3"])
def durable_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreCase:
    """The stores a user would publish to: a local directory and S3."""
    url, env = make_store_url(request.param, tmp_path, request)
    return StoreCase(request.param, url, env)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A clean environment for the API and CLI: private cache, no packaging gate."""
    return {"DSPKG_CACHE": str(tmp_path / "cache"), "PATH": os.environ.get("PATH", "")}
