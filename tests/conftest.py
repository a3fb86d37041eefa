"""Shared fixtures: S3 (moto, SeaweedFS), Azure (Azurite) and GCS servers on loopback, stores.

The servers are started by dspkg.bench.servers, the launcher the benchmark uses too, once
per session each, and only when a test asks for one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from hypothesis import settings

from dspkg.bench.servers import (
    LocalServer,
    start_azurite,
    start_fake_gcs,
    start_moto,
    start_seaweedfs,
)
from tests.helpers import (
    AZURITE_BIN,
    BUCKET,
    S3_CREDENTIALS,
    STORE_KINDS,
    StoreCase,
    make_store_url,
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


def _credentials(server: LocalServer) -> dict[str, str]:
    """The server's environment less its endpoint: each store URL's env names that."""
    endpoints = ("AWS_ENDPOINT_URL", "AZURE_STORAGE_ENDPOINT", "GOOGLE_BASE_URL")
    return {k: v for k, v in server.env().items() if k not in endpoints}


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """moto's S3 server in a subprocess on 127.0.0.1, with one bucket."""
    log = tmp_path_factory.mktemp("moto") / "log"
    with start_moto(BUCKET, S3_CREDENTIALS, log=log) as server, _process_env(_credentials(server)):
        yield server


@pytest.fixture(scope="session")
def seaweedfs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """SeaweedFS (`weed mini`) on 127.0.0.1, with one bucket; it checks signatures."""
    work = tmp_path_factory.mktemp("seaweedfs")
    with (
        start_seaweedfs(BUCKET, S3_CREDENTIALS, work, log=work / "log") as server,
        _process_env(_credentials(server)),
    ):
        yield server


@pytest.fixture(scope="session")
def azurite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """Azurite's blob service in a subprocess on 127.0.0.1, with one container."""
    work = tmp_path_factory.mktemp("azurite")
    with (
        start_azurite(BUCKET, work, AZURITE_BIN, log=work / "log") as server,
        _process_env(_credentials(server)),
    ):
        yield server


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """fake-gcs-server in a subprocess on 127.0.0.1, with one bucket."""
    work = tmp_path_factory.mktemp("gcs")
    with (
        start_fake_gcs(BUCKET, work, log=work / "log") as server,
        _process_env(_credentials(server)),
    ):
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
    """A clean environment for the API and CLI: private cache, no packaging gate.
    ``DSPKG_PULL_BATCH_FILES`` passes through: the suite then pulls in small batches."""
    clean = {"DSPKG_CACHE": str(tmp_path / "cache"), "PATH": os.environ.get("PATH", "")}
    if "DSPKG_PULL_BATCH_FILES" in os.environ:
        clean["DSPKG_PULL_BATCH_FILES"] = os.environ["DSPKG_PULL_BATCH_FILES"]
    return clean
