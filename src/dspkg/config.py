"""Settings read from the environment, once, at the edge (the CLI and the public API)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dspkg.errors import InvalidArgument
from dspkg.sizes import parse_size

TRUTHY = {"1", "yes", "true", "on"}
FALSY = {"0", "no", "false", "off"}


def truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in TRUTHY


@dataclass(frozen=True)
class Settings:
    store_url: str
    cache_dir: Path
    packaging_gate: bool
    no_data_cache: bool
    cache_max_size: int | None
    speedups: bool  # the compiled extractor (DSPKG_SPEEDUPS=0 turns it off)
    env: Mapping[str, str]
    # Files a pull of a whole version holds at once (DSPKG_PULL_BATCH_FILES); None: the
    # puller's default.
    pull_batch_files: int | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        store = env.get("DSPKG_STORE") or "file://" + str(_user_dir("data") / "store")
        cache = Path(env.get("DSPKG_CACHE") or _user_dir("cache")).expanduser()
        max_size_text = env.get("DSPKG_CACHE_MAX_SIZE") or _config_file_max_size(cache)
        try:
            max_size = parse_size(max_size_text) if max_size_text else None
        except InvalidArgument as exc:
            raise InvalidArgument(f"DSPKG_CACHE_MAX_SIZE: {exc}") from None
        batch_text = (env.get("DSPKG_PULL_BATCH_FILES") or "").strip()
        if batch_text and (not batch_text.isdigit() or int(batch_text) < 1):
            raise InvalidArgument(
                f"DSPKG_PULL_BATCH_FILES: {batch_text!r} is not a positive number of files"
            )
        return cls(
            store_url=store,
            cache_dir=cache,
            packaging_gate=truthy(env.get("VH_ENABLE_DATASET_VERSION_PACKAGING")),
            no_data_cache=truthy(env.get("VH_NO_DATA_CACHE")),
            cache_max_size=max_size,
            speedups=(env.get("DSPKG_SPEEDUPS") or "1").strip().lower() not in FALSY,
            env=env,
            pull_batch_files=int(batch_text) if batch_text else None,
        )


def _user_dir(kind: str) -> Path:
    """The user's data or cache directory for dspkg (platformdirs, imported only when
    DSPKG_STORE or DSPKG_CACHE leaves it to us: every command starts here)."""
    import platformdirs

    if kind == "data":
        return Path(platformdirs.user_data_dir("dspkg"))
    return Path(platformdirs.user_cache_dir("dspkg"))


def _config_file_max_size(cache: Path) -> str | None:
    """``max_size = "10GB"`` in ``<cache>/config.toml`` (tomllib imported when there is one)."""
    path = cache / "config.toml"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"{path} cannot be read: {exc}") from None
    import tomllib

    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(f"{path} cannot be read: {exc}") from None
    value = doc.get("max_size")
    return None if value is None else str(value)
