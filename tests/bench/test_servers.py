"""The launcher of local servers (dspkg.bench.servers): loopback only, clear failures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dspkg.bench.servers import LocalServer, start_azurite
from dspkg.errors import ServerError

_LISTEN = "0A"  # TCP state in /proc/net/tcp


def _sockets(pid: int) -> list[tuple[str, str, str]]:
    """(state, local, remote) of every TCP socket of ``pid``, addresses as the kernel
    writes them (hex ``host:port``)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = []
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[9] in inodes:
                    found.append((fields[3], fields[1], fields[2]))
    return found


def test_seaweedfs_listens_on_loopback_only(seaweedfs_server: LocalServer) -> None:
    sockets = _sockets(seaweedfs_server.process.pid)
    listening = [local for state, local, _ in sockets if state == _LISTEN]
    # master, volume, filer, S3 and admin, each HTTP and gRPC: nothing else, nothing wider.
    assert len(listening) == 10, listening
    assert all(a.startswith("0100007F:") for a in listening), listening
    assert f"0100007F:{seaweedfs_server.port:04X}" in listening
    # Talking only to itself (its telemetry, on by default, is off).
    remotes = {remote for state, _, remote in sockets if state != _LISTEN}
    assert all(r.startswith("0100007F:") for r in remotes), remotes


def test_a_missing_server_names_how_to_install_it(tmp_path: Path) -> None:
    with pytest.raises(ServerError, match="missing; run `make azurite` to install Azurite"):
        start_azurite("c", tmp_path, tmp_path / "no-azurite")


def test_a_server_that_exits_at_start_is_reported_with_its_log(tmp_path: Path) -> None:
    fake = tmp_path / "azurite-blob"
    fake.write_text("#!/bin/sh\necho 'cannot bind: address in use'\nexit 3\n")
    fake.chmod(0o755)
    log = tmp_path / "log"
    with pytest.raises(
        ServerError,
        match=r"Azurite exited at start \(status 3\); its log .* ends: cannot bind: address in use",
    ):
        start_azurite("c", tmp_path, fake, log=log)
