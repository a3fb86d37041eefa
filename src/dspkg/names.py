"""Dataset, version and alias names and ``dataset://`` URIs (pure)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from dspkg.errors import InvalidName
from dspkg.paths import path_problem

SCHEME = "dataset://"
NAME_RULE = (
    "1-100 characters of A-Z a-z 0-9 . _ -, not starting or ending with '.', "
    "not a device name such as con, nul, com1 or lpt1"
)
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")


def check_name(name: str, *, what: str = "name") -> str:
    """Return ``name`` if it follows the naming rule, else raise :class:`InvalidName`."""
    # A name is also a component of store keys and paths: the path rule applies too,
    # so that no name publishes what a pull would then refuse.
    if not isinstance(name, str) or not _NAME.fullmatch(name) or path_problem(name):
        raise InvalidName(f"invalid {what} {name!r}: use {NAME_RULE}", name=str(name))
    return name


@dataclass(frozen=True, order=True)
class VersionUri:
    """``dataset://<dataset>/<version>``; the version part may also be an alias."""

    dataset: str
    version: str

    @classmethod
    def parse(cls, text: str) -> VersionUri:
        if not isinstance(text, str) or not text.startswith(SCHEME):
            raise InvalidName(
                f"invalid dataset version URI {text!r}: expected dataset://<dataset>/<version>",
                name=str(text),
            )
        parts = text[len(SCHEME) :].split("/")
        if len(parts) != 2:
            raise InvalidName(
                f"invalid dataset version URI {text!r}: expected dataset://<dataset>/<version>",
                name=text,
            )
        return cls(check_name(parts[0], what="dataset name"), check_name(parts[1], what="version"))

    def __str__(self) -> str:
        return f"{SCHEME}{self.dataset}/{self.version}"


def parse_dataset_uri(text: str) -> str:
    """Parse ``dataset://<dataset>`` (no version) and return the dataset name."""
    if not isinstance(text, str) or not text.startswith(SCHEME):
        raise InvalidName(f"invalid dataset URI {text!r}: expected dataset://<dataset>", name=text)
    return check_name(text[len(SCHEME) :].rstrip("/"), what="dataset name")
