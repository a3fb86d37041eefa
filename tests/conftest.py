"""Shared fixtures: a real S3 server (moto) on loopback, stores of every kind."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.helpers import (
    BUCKET,
    S3_ENV,
    STORE_KINDS,
    S3Server,
    StoreCase,
    free_port,
    make_store_url,
    start_moto,
)

# CI runs the same examples every time, so a landing is never blocked by a new random draw;
# locally each run explores new ones.
settings.register_profile("ci", derandomize=True, deadline=None)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server in a subprocess on 127.0.0.1, with one bucket."""
    port = free_port()
    proc = start_moto(port)
    server = S3Server(endpoint=f"http://127.0.0.1:{port}", port=port)
    saved = {k: os.environ.get(k) for k in S3_ENV}
    os.environ.update(S3_ENV)  # obstore reads credentials from the process environment
    try:
        server.create_bucket(BUCKET)
        yield server
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        proc.terminate()
        proc.wait(timeout=10)


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
