"""A pull onto XFS with reflinks: files in DEST share the cache's blocks but not its inodes.

The cache and DEST sit on a small XFS image (``mkfs.xfs -m reflink=1``) on a loop
device, as a user's disk would be. Shared blocks are read back with the FIEMAP ioctl:
a reflinked file maps the same physical extents as its cache object, flagged shared,
where a copy would map blocks of its own and a hardlink would be the same inode.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import struct
from pathlib import Path

import pytest

from dspkg import api
from dspkg.cache import Cache
from tests.helpers import loop_mount, read_tree, run_cli, write_outputs

URI = "dataset://reflinked/v1"
FILES = {
    **{f"shard/{i:02d}.bin": random.Random(i).randbytes(64 * 1024 + i) for i in range(12)},
    "labels.txt": b"cat\ndog\n",
}

_FS_IOC_FIEMAP = 0xC020660B
_FIEMAP_FLAG_SYNC = 0x1
_FIEMAP_EXTENT_SHARED = 0x2000
_FIEMAP_HEADER = struct.Struct("=QQIIII")  # start, length, flags, mapped, count, reserved
_FIEMAP_EXTENT = struct.Struct("=QQQ16xI12x")  # logical, physical, length, flags
_MAX_EXTENTS = 64


def _extents(path: Path) -> list[tuple[int, int, bool]]:
    """(physical offset, length, shared) of each extent of ``path``, after a sync."""
    request = bytearray(_FIEMAP_HEADER.size + _FIEMAP_EXTENT.size * _MAX_EXTENTS)
    _FIEMAP_HEADER.pack_into(request, 0, 0, 2**64 - 1, _FIEMAP_FLAG_SYNC, 0, _MAX_EXTENTS, 0)
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, _FS_IOC_FIEMAP, request)
    finally:
        os.close(fd)
    mapped = _FIEMAP_HEADER.unpack_from(request, 0)[3]
    extents = []
    for i in range(mapped):
        _, physical, length, flags = _FIEMAP_EXTENT.unpack_from(
            request, _FIEMAP_HEADER.size + i * _FIEMAP_EXTENT.size
        )
        extents.append((physical, length, bool(flags & _FIEMAP_EXTENT_SHARED)))
    return extents


@pytest.mark.slow
def test_reflink_and_auto_clone_the_cache_objects_on_xfs(tmp_path: Path) -> None:
    store = f"file://{tmp_path / 'store'}"
    outputs = write_outputs(tmp_path / "outputs", FILES, [{"uri": URI, "packaging": True}])
    api.publish(outputs, store=store, packaging=True, env={"DSPKG_CACHE": str(tmp_path / "c")})
    # XFS takes no image under 300 MB; the image is sparse, so this costs what it holds.
    with loop_mount(tmp_path, "xfs", size_mb=320, mkfs_options=("-m", "reflink=1")) as mount:
        for mode in ("reflink", "auto"):
            cache, dest = mount / f"cache-{mode}", mount / f"dest-{mode}"
            pulled = run_cli(
                ["pull", URI, str(dest), "--store", store, "--link", mode, "--json"],
                {"DSPKG_CACHE": str(cache)},
            )
            assert pulled.returncode == 0, pulled.stderr
            assert json.loads(pulled.stdout)["link"] == "reflink"
            assert read_tree(dest) == FILES
            with Cache(cache) as opened:
                for rel, data in FILES.items():
                    obj = Path(opened.object_path(hashlib.sha256(data).hexdigest()))
                    mine = (dest / rel).stat()
                    assert mine.st_ino != obj.stat().st_ino, rel  # not a hardlink
                    assert mine.st_nlink == 1, rel
                    cloned, original = _extents(dest / rel), _extents(obj)
                    assert cloned, rel
                    # The same blocks, marked shared: a clone, not a copy.
                    assert cloned == original, rel
                    assert all(shared for _, _, shared in cloned), rel
