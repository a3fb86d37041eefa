"""Every error dspkg raises on purpose, by what the caller can do about it.

The command line prints ``dspkg: error: <str(exc)>`` and exits 1 for any
:class:`DspkgError`, so each message names the object and the next step, on one line.
"""

from __future__ import annotations

from typing import Any


class DspkgError(Exception):
    """Root of dspkg's errors; ``str(exc)`` is a one-line message for the user."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))

    def __reduce__(self) -> tuple[Any, ...]:
        # Subclasses take keyword-only fields, which pickle's default cannot pass: errors
        # must cross process boundaries intact (multiprocessing pools, DataLoader workers).
        return (_rebuild, (type(self), str(self), self.__dict__))


def _rebuild(cls: type[DspkgError], message: str, fields: dict[str, Any]) -> DspkgError:
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    exc.__dict__.update(fields)
    return exc


class InvalidName(DspkgError):
    """A dataset, version or alias name or a ``dataset://`` URI breaks the naming rule."""

    def __init__(self, message: str, *, name: str) -> None:
        super().__init__(message)
        self.name = name


class InvalidMetadata(DspkgError):
    """Outputs metadata that cannot be used: bad JSON, a missing file, a bad URI."""

    def __init__(self, message: str, *, path: str, line: int | None = None) -> None:
        where = f"{path}, line {line}" if line is not None else path
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line = line


class InvalidArgument(DspkgError):
    """A value given by the caller (size, option, directory) cannot be used."""


class UsageError(InvalidArgument):
    """A malformed option, found before anything is fetched: the command line exits 2."""


class SelectionError(DspkgError):
    """A subset that cannot be taken: a pattern or listed path that matches nothing in the
    version, an empty selection or shard; ``items`` are the patterns or paths at fault."""

    def __init__(self, message: str, *, items: tuple[str, ...]) -> None:
        super().__init__(message)
        self.items = items


class NotFound(DspkgError):
    """A dataset, version, alias or object does not exist."""

    def __init__(self, message: str, *, uri: str) -> None:
        super().__init__(message)
        self.uri = uri


class AlreadyExists(DspkgError):
    """A version name is taken by different content; versions are immutable."""

    def __init__(self, message: str, *, uri: str) -> None:
        super().__init__(message)
        self.uri = uri


class Integrity(DspkgError):
    """Bytes that do not match what the manifest promises (size, sha256, CRC)."""

    def __init__(self, message: str, *, obj: str) -> None:
        super().__init__(message)
        self.obj = obj


class UnsafePackage(DspkgError):
    """A package or manifest from the store that dspkg refuses to extract."""

    def __init__(self, message: str, *, obj: str, entry: str | None = None) -> None:
        super().__init__(message)
        self.obj = obj
        self.entry = entry


class StoreError(DspkgError):
    """The store refused or failed a request (permissions, network, configuration)."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class RetriesExceeded(StoreError):
    """A transient store error persisted through every retry; keeps the last cause."""

    def __init__(self, message: str, *, key: str | None, last: BaseException) -> None:
        super().__init__(message, key=key)
        self.last = last


class DestinationError(DspkgError):
    """The pull destination cannot be used (not empty, not a directory, unwritable)."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class CacheError(DspkgError):
    """The local cache cannot be used (disk full, permissions, corrupt entries)."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class SourceChanged(DspkgError):
    """A file being published changed, vanished or became unreadable while being read."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class RunError(DspkgError):
    """A valohai.yaml or step that ``dspkg run`` cannot use."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class MissingDependency(DspkgError):
    """A command needs an optional part of dspkg that is not installed (an extra)."""

    def __init__(self, message: str, *, extra: str) -> None:
        super().__init__(message)
        self.extra = extra


class MountError(DspkgError):
    """A version cannot be mounted or unmounted here (no FUSE, a bad or busy mount point)."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class ServerError(DspkgError):
    """A local server for the benchmark or the tests (moto, SeaweedFS, Azurite,
    fake-gcs-server) is not installed, did not start or did not answer."""

    def __init__(self, message: str, *, server: str) -> None:
        super().__init__(message)
        self.server = server
