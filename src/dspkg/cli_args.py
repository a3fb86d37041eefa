"""What every subcommand of the command line shares: argument types, store options, progress.

Used by :mod:`dspkg.cli` and the subcommands registered from elsewhere (``run``, ``bench``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import ParamSpec, TypeVar

from dspkg.errors import DspkgError, InvalidArgument, UsageError
from dspkg.progress import LinePrinter, Progress, TerminalProgress

T = TypeVar("T")
P = ParamSpec("P")


def add_store(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", help="store URL (default: $DSPKG_STORE or a local file:// store)")
    p.add_argument(
        "--store-option",
        action="append",
        metavar="KEY=VALUE",
        help="obstore configuration for the store (repeatable), e.g. region=eu-west-1",
    )


def store_options(pairs: Sequence[str] | None) -> dict[str, str]:
    """``--store-option KEY=VALUE`` values (the last of a repeated key wins)."""
    return pairs_option("--store-option", pairs)


def pairs_option(option: str, pairs: Sequence[str] | None) -> dict[str, str]:
    return {key: values[-1] for key, values in multi_pairs(option, pairs, "KEY=VALUE").items()}


def multi_pairs(option: str, pairs: Sequence[str] | None, form: str) -> dict[str, list[str]]:
    """Repeated ``KEY=VALUE`` options, every value of each key in order."""
    out: dict[str, list[str]] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidArgument(f"{option} {pair!r}: expected {form}")
        out.setdefault(key.strip(), []).append(value)
    return out


def progress(*, as_json: bool = False) -> Progress:
    """Live progress on a terminal, plain lines otherwise; with ``--json`` on stderr."""
    out = sys.stderr if as_json else sys.stdout
    if sys.stderr.isatty():
        return TerminalProgress(out=out)
    return LinePrinter(out=out)


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be at least 0")
    return value


def positive_int(text: str) -> int:
    value = non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("must be a finite number >= 0")
    return value


def usage(parse: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``parse(...)``, whose errors are bad usage (exit 2, one line)."""
    try:
        return parse(*args, **kwargs)
    except UsageError:
        raise
    except DspkgError as exc:
        raise UsageError(str(exc)) from None
