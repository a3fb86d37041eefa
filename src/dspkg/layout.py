"""Where everything lives in a store: the one owner of every key (pure).

::

    blobs/sha256/<hex[0:2]>/<hex[2:]>                                  a file's content
    packages/<dataset>/<version>/<attempt>/<dataset>.<version>.vhpkgzip      one package
    packages/<dataset>/<version>/<attempt>/<dataset>.<version>.<i>-of-<n>.vhpkgzip
    packages/.index/<shape>.json                                       packages by layout, for reuse
    datasets/<dataset>/versions/<version>.json                         the manifest (v1, or v2 root)
    datasets/<dataset>/shards/<sha256>.json.gz                         a v2 manifest shard
    datasets/<dataset>/staging/<version>/<part>.json                   a staged part, until commit
    datasets/<dataset>/aliases/<alias>.json                            {"version": "..."}
    executions/<execution-id>/outputs/<path>                           outputs of ``dspkg run``

``<attempt>`` is a random name each publish draws for the packages it uploads: two
publishers racing for one version never write (or clean up) the same object, and the
manifest, written last with a conditional create, is the only commit point. Shards are
named by their content (SHA-256), written before the root that lists them and never
changed, so a root that is replaced later never pulls a shard from under a reader.
"""

from __future__ import annotations

import secrets

from dspkg.paths import path_problem

LATEST = "latest"
PACKAGE_SUFFIX = ".vhpkgzip"
PACKAGES_PREFIX = "packages/"
BLOBS_PREFIX = "blobs/sha256/"
DATASETS_PREFIX = "datasets/"
_INDEX_PREFIX = "packages/.index/"


def blob_key(sha256: str) -> str:
    return f"{BLOBS_PREFIX}{sha256[:2]}/{sha256[2:]}"


def manifest_key(dataset: str, version: str) -> str:
    return f"{versions_prefix(dataset)}{version}.json"


def versions_prefix(dataset: str) -> str:
    return f"{DATASETS_PREFIX}{dataset}/versions/"


SHARD_SUFFIX = ".json.gz"


def shards_prefix(dataset: str) -> str:
    return f"{DATASETS_PREFIX}{dataset}/shards/"


def shard_key(dataset: str, sha256: str) -> str:
    return f"{shards_prefix(dataset)}{sha256}{SHARD_SUFFIX}"


def staging_prefix(dataset: str, version: str) -> str:
    """Where the parts of a version wait for ``dspkg commit``."""
    return f"{DATASETS_PREFIX}{dataset}/staging/{version}/"


def part_key(dataset: str, version: str, part: str) -> str:
    return f"{staging_prefix(dataset, version)}{part}.json"


def part_package_name(dataset: str, version: str, part: str, index: int, count: int) -> str:
    """``ds.ver.<part>.vhpkgzip``, or ``ds.ver.<part>.<i>-of-<n>.vhpkgzip``: the packages of
    parts of one version keep apart by name as well as by key."""
    return package_name(dataset, f"{version}.{part}", index, count)


def alias_key(dataset: str, alias: str) -> str:
    return f"{aliases_prefix(dataset)}{alias}.json"


def aliases_prefix(dataset: str) -> str:
    return f"{DATASETS_PREFIX}{dataset}/aliases/"


def name_from_key(key: str, prefix: str) -> str | None:
    """``<name>`` of ``<prefix><name>.json``, or None for any other key."""
    rest = key.removeprefix(prefix)
    if rest == key or "/" in rest or not rest.endswith(".json"):
        return None
    return rest.removesuffix(".json")


def new_attempt() -> str:
    """A name no other publish will draw, for the packages of one publish."""
    return secrets.token_hex(8)


def package_name(dataset: str, version: str, index: int, count: int) -> str:
    """``ds.ver.vhpkgzip``, or ``ds.ver.<i>-of-<n>.vhpkgzip`` (1-based) when split."""
    if count == 1:
        return f"{dataset}.{version}{PACKAGE_SUFFIX}"
    return f"{dataset}.{version}.{index + 1}-of-{count}{PACKAGE_SUFFIX}"


def package_key(dataset: str, version: str, attempt: str, name: str) -> str:
    return f"{PACKAGES_PREFIX}{dataset}/{version}/{attempt}/{name}"


def package_key_problem(key: object, name: object) -> str | None:
    """Why ``key`` cannot be the key of package ``name`` (read from a manifest or an
    index: untrusted), or None. The one rule for publishing, reusing and pulling."""
    if not isinstance(key, str) or not isinstance(name, str):
        return "not a string"
    if not key.startswith(PACKAGES_PREFIX) or key.startswith(_INDEX_PREFIX):
        return f"not under {PACKAGES_PREFIX}"
    problem = path_problem(key)
    if problem:
        return problem
    if not key.endswith(PACKAGE_SUFFIX) or key.rpartition("/")[2] != name:
        return f"does not end in the package's name {name!r}"
    return None


INDEX_PREFIX = _INDEX_PREFIX


def package_index_key(shape: str) -> str:
    # Dataset names cannot start with ".", so this never meets a dataset's packages.
    return f"{_INDEX_PREFIX}{shape}.json"


def execution_prefix(execution_id: str) -> str:
    return f"executions/{execution_id}/outputs/"


def garbage_kind(key: str) -> str | None:
    """What ``dspkg gc`` may remove at ``key`` when nothing references it (``package``,
    ``blob``, ``shard``, ``part``), or None: manifests, aliases, the package index, and
    anything not laid out by dspkg are never removed."""
    parts = key.split("/")
    if key.startswith(BLOBS_PREFIX) and len(parts) == 4:
        return "blob"
    if key.startswith(PACKAGES_PREFIX) and not key.startswith(_INDEX_PREFIX):
        return "package" if len(parts) == 5 and key.endswith(PACKAGE_SUFFIX) else None
    if key.startswith(DATASETS_PREFIX) and len(parts) >= 4:
        if parts[2] == "shards" and len(parts) == 4 and key.endswith(SHARD_SUFFIX):
            return "shard"
        if parts[2] == "staging" and len(parts) == 5 and key.endswith(".json"):
            return "part"
    return None


def version_of_key(key: str) -> tuple[str, str] | None:
    """``(dataset, version)`` of a manifest key ``datasets/<dataset>/versions/<version>.json``."""
    parts = key.split("/")
    if len(parts) != 4 or parts[0] + "/" != DATASETS_PREFIX or parts[2] != "versions":
        return None
    version = name_from_key(key, versions_prefix(parts[1]))
    return None if version is None else (parts[1], version)


def part_of_key(key: str) -> tuple[str, str, str] | None:
    """``(dataset, version, part)`` of a part key."""
    parts = key.split("/")
    if len(parts) != 5 or parts[2] != "staging" or not parts[4].endswith(".json"):
        return None
    return parts[1], parts[3], parts[4].removesuffix(".json")


def blob_sha(key: str) -> str:
    """The sha256 of the blob at ``key`` (``blobs/sha256/ab/cdef...``)."""
    parts = key.split("/")
    return parts[2] + parts[3]
