"""dspkg: dataset version packaging for datasets of many small files.

Publish a job's outputs as an immutable dataset version packed into a few
uncompressed ZIP packages, and pull versions into an inputs directory through a
shared local cache. See :mod:`dspkg.api` for the functions below.
"""

from dspkg import errors
from dspkg._version import __version__
from dspkg.api import (
    cache_clear,
    cache_info,
    cache_prune,
    cache_verify,
    datasets,
    diff,
    mount,
    open_version,
    package,
    publish,
    pull,
    select,
    show,
    unmount,
    versions,
)

__all__ = [
    "__version__",
    "cache_clear",
    "cache_info",
    "cache_prune",
    "cache_verify",
    "datasets",
    "diff",
    "errors",
    "mount",
    "open_version",
    "package",
    "publish",
    "pull",
    "select",
    "show",
    "unmount",
    "versions",
]
