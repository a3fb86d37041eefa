"""``dspkg bench --scale --dask-workers N``: the same version published on a Dask cluster.

Issue 12's target: a ``LocalCluster`` of N worker processes publishing the scale run's
files gives the version a single process gave, byte for byte: the same content digest,
the same manifest shards (named by their SHA-256, so the same records), and the same
packages (names, sizes, SHA-256, entries). Package keys differ only in the attempt
segment, which every publish draws anew. The publish runs as ``dspkg publish --dask
ADDRESS``, as users run it, and its wall time and the client's peak RSS are recorded.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dspkg.layout import manifest_key
from dspkg.names import VersionUri

Run = Callable[[list[str], dict[str, str]], tuple[dict[str, Any], float, float]]


def stored_root(store_dir: Path, uri: str) -> dict[str, Any]:
    """The root document of ``uri`` in a ``file://`` store, as stored."""
    version = VersionUri.parse(uri)
    doc: dict[str, Any] = json.loads(
        (store_dir / manifest_key(version.dataset, version.version)).read_bytes()
    )
    return doc


def _without_attempt(package: dict[str, Any]) -> dict[str, Any]:
    # packages/<dataset>/<version>/<attempt>/<name>: the attempt is drawn per publish.
    parts = package["key"].split("/")
    return {**package, "key": "/".join(parts[:3] + parts[4:])}


def differences(single: dict[str, Any], on_dask: dict[str, Any]) -> list[str]:
    """What makes two stored roots different versions (empty when they are the same)."""
    found = [
        field
        for field in ("digest", "files", "bytes", "shards", "blobs", "package_max_file")
        if single.get(field) != on_dask.get(field)
    ]
    if [_without_attempt(p) for p in single["packages"]] != [
        _without_attempt(p) for p in on_dask["packages"]
    ]:
        found.append("packages")
    return found


def publish_on_dask(
    run: Run,
    outputs: Path,
    store_dir: Path,
    uri: str,
    workers: int,
    package_size: str,
    env: dict[str, str],
) -> dict[str, Any]:
    """Publish ``outputs`` on a new ``LocalCluster`` of ``workers`` processes into
    ``store_dir``; the figures of that run."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,  # type: ignore[no-untyped-call]
    ):
        address = client.scheduler_info()["address"]
        doc, seconds, rss = run(
            [
                "publish",
                str(outputs),
                "--packages-only",
                "--package-size",
                package_size,
                "--dask",
                address,
            ],
            {**env, "DSPKG_STORE": f"file://{store_dir}"},
        )
    [version] = doc["versions"]
    return {
        "workers": workers,
        "seconds": seconds,
        "client_peak_rss_mb": rss,
        "tasks": version["tasks"],
        "packages": version["packages"],
        "uri": uri,
    }
