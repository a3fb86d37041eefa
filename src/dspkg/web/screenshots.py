"""Screenshots of the main pages for docs/web.md, and the parts the browser tests share.

    python -m dspkg.web.screenshots [OUT_DIR]      (default docs/images)

Publishes a small sample store (generated PNGs, a CSV, JSON, text and binary files, two
datasets, lineage and aliases) into a temporary directory, serves it on a free loopback
port and photographs each page in headless Chromium driven by Playwright. Chromium comes
from the system (Debian's ``chromium`` package): Playwright cannot download browsers here.
Needs the ``dev`` extra (Playwright).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import struct
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn
from starlette.types import ASGIApp

from dspkg import api
from dspkg.store import open_store
from dspkg.web.app import create_app
from dspkg.web.server import listen

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Playwright

CHROMIUM = os.environ.get("DSPKG_CHROMIUM", "/usr/bin/chromium")
# Without the networking switches Chromium keeps trying to reach Google's hosts, which a
# closed network refuses; --no-sandbox because tests run as root.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium_available() -> bool:
    return Path(CHROMIUM).is_file() or shutil.which(CHROMIUM) is not None


def launch(playwright: Playwright, user_data_dir: Path) -> BrowserContext:
    """Debian's Chromium, headless, with a fresh profile in ``user_data_dir``."""
    return playwright.chromium.launch_persistent_context(
        str(user_data_dir),
        executable_path=CHROMIUM,
        headless=True,
        args=CHROMIUM_ARGS,
        viewport={"width": 1000, "height": 600},
    )


@contextlib.contextmanager
def serve_in_thread(app: ASGIApp) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port; yield its base URL."""
    sock = listen("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the web server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def png(width: int, height: int, pixel: Callable[[int, int], tuple[int, int, int]]) -> bytes:
    """A real RGB PNG, so the sample needs no imaging library."""
    rows = b"".join(
        b"\x00" + bytes(c for x in range(width) for c in pixel(x, y)) for y in range(height)
    )

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data)
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows, 9))
        + chunk(b"IEND", b"")
    )


def _picture(seed: int) -> bytes:
    r0, g0, b0 = (seed * 67) % 256, (seed * 139) % 256, (seed * 29) % 256

    def pixel(x: int, y: int) -> tuple[int, int, int]:
        ring = ((x - 48) ** 2 + (y - 48) ** 2) // (90 + seed * 7) % 2
        return ((r0 + 2 * x) % 256, (g0 + 2 * y) % 256, (b0 + 120 * ring) % 256)

    return png(96, 96, pixel)


def _write(root: Path, files: dict[str, bytes], entries: list[dict[str, Any]]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        lines.append(json.dumps({"file": rel, "metadata": {"valohai.dataset-versions": entries}}))
    (root / "valohai.metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


def sample_files(version: int) -> dict[str, bytes]:
    """The files of the sample dataset ``pets`` at version 1 or 2."""
    files: dict[str, bytes] = {}
    for i in range(1, 7 if version == 1 else 9):
        files[f"images/cat/cat-{i:04d}.png"] = _picture(i)
        files[f"images/dog/dog-{i:04d}.png"] = _picture(40 + i)
    if version == 2:
        del files["images/dog/dog-0003.png"]
        files["images/cat/cat-0002.png"] = _picture(99)
    rows = ["file,label,width,height"] + [
        f"{p},{p.split('/')[1]},96,96" for p in sorted(files) if p.endswith(".png")
    ]
    files["labels.csv"] = ("\n".join(rows) + "\n").encode()
    files["meta.json"] = json.dumps(
        {"name": "pets", "version": version, "classes": ["cat", "dog"], "license": "CC0"}
    ).encode()
    files["README.txt"] = (
        f"Sample pets dataset, version {version}.\nGenerated images of 96x96 pixels.\n"
    ).encode()
    files["extra/weights.bin"] = bytes(range(256)) * 4
    return files


def publish_sample(store_url: str, work: Path, env: dict[str, str] | None = None) -> None:
    """Two datasets: ``pets`` (packaged, v1 -> v2, alias ``prod``), ``sensors`` (unpackaged)."""
    env = {**(env or {}), "VH_ENABLE_DATASET_VERSION_PACKAGING": "1"}
    v1 = {"uri": "dataset://pets/v1", "packaging": True, "targeting_aliases": ["prod"]}
    api.publish(_write(work / "pets-v1", sample_files(1), [v1]), store=store_url, env=env)
    v2 = {
        "uri": "dataset://pets/v2",
        "packaging": True,
        "from": "dataset://pets/v1",
        "exclude": ["images/dog/dog-0003.png"],
    }
    old = sample_files(1)
    new = {p: d for p, d in sample_files(2).items() if old.get(p) != d}
    api.publish(_write(work / "pets-v2", new, [v2]), store=store_url, env=env)
    readings = "\n".join(
        ["time,sensor,value"]
        + [f"2026-12-01T10:{m:02d}:00Z,s{m % 3},{m * 0.37:.2f}" for m in range(60)]
    )
    sensors = {"2026/12/01.csv": readings.encode() + b"\n", "calibration.bin": os.urandom(300)}
    entry = {"uri": "dataset://sensors/day-1", "packaging": False}
    api.publish(_write(work / "sensors", sensors, [entry]), store=store_url, env=env)


PAGES = [
    ("datasets", "/"),
    ("dataset", "/datasets/pets"),
    ("version", "/datasets/pets/v2"),
    ("folder", "/datasets/pets/v2/tree/images/cat"),
    ("file-image", "/datasets/pets/v2/files/images/cat/cat-0002.png"),
    ("file-csv", "/datasets/pets/v2/files/labels.csv"),
    ("diff", "/diff?a=dataset://pets/v1&b=dataset://pets/v2"),
]


def take(out_dir: Path, work: Path) -> list[Path]:
    from playwright.sync_api import sync_playwright

    store_url = f"file://{work / 'store'}"
    publish_sample(store_url, work / "outputs", {"DSPKG_CACHE": str(work / "cache")})
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    app = create_app(open_store(store_url), hosts=None)
    with serve_in_thread(app) as base, sync_playwright() as playwright:
        context = launch(playwright, work / "profile")
        try:
            page = context.new_page()
            for name, path in PAGES:
                page.goto(base + path)
                if name == "version":
                    page.locator("details#packages summary").click()
                target = out_dir / f"web-{name}.png"
                page.screenshot(path=str(target), full_page=True)
                written.append(target)
        finally:
            context.close()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dspkg.web.screenshots")
    parser.add_argument("out", nargs="?", default="docs/images", help="directory for the PNGs")
    args = parser.parse_args(argv)
    if not chromium_available():
        print(f"chromium not installed ({CHROMIUM}); apt-get install chromium", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="dspkg-shots-") as tmp:
        for path in take(Path(args.out), Path(tmp)):
            print(f"{path} ({path.stat().st_size // 1000} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
