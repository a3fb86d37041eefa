"""``dspkg demo``: generate a small-file dataset, publish it, and pull it two ways.

The dataset (class folders of 0-20 KB files, with one metadata line per file asking
for a packaged version) is published twice to the default store: once with
packages and once without. Each version is then pulled with a cold cache and the
two times are compared. The data is seeded, so running the demo again republishes
identical content (a no-op) and only the pulls are timed anew.
"""

from __future__ import annotations

import filecmp
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from dspkg import api
from dspkg.progress import LinePrinter
from dspkg.sizes import format_size

DATASET = "dspkg-demo"
CLASSES = ("cat", "dog", "bird")


def generate(root: Path, files: int, version: str, *, packaging: bool, seed: int = 1) -> int:
    """Write ``files`` files into class folders plus their metadata lines; return bytes."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    total = 0
    for i in range(files):
        cls = CLASSES[i % len(CLASSES)]
        rel = f"{cls}/{cls}_{i:06d}.jpg"
        size = rng.randint(0, 20_000)
        (root / cls).mkdir(exist_ok=True)
        (root / rel).write_bytes(rng.randbytes(size))
        total += size
        entry = {"uri": f"dataset://{DATASET}/{version}", "packaging": packaging}
        lines.append(json.dumps({"file": rel, "metadata": {"valohai.dataset-versions": [entry]}}))
    (root / "valohai.metadata.jsonl").write_text("\n".join(lines) + "\n")
    return total


def run_demo(files: int = 20_000, root: str | None = None) -> int:
    out = LinePrinter()
    with tempfile.TemporaryDirectory(prefix="dspkg-demo-") as tmp:
        work = Path(root) if root else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        packaged_version = f"images-{files}"
        plain_version = f"images-{files}-unpackaged"
        started = time.monotonic()
        nbytes = generate(work / "outputs", files, packaged_version, packaging=True)
        generate(work / "outputs-plain", files, plain_version, packaging=False)
        print(
            f"generated {files:,} files ({format_size(nbytes)}) in {len(CLASSES)} class folders "
            f"in {time.monotonic() - started:.1f} s"
        )
        result = api.publish(work / "outputs", packaging=True, progress=out)
        version = result.versions[0]
        print(
            f"{'published' if version.created else 'already published'} {version.uri}: "
            f"{version.files:,} files, {len(version.packages)} package(s), "
            f"{result.seconds:.1f} s"
        )
        plain = api.publish(work / "outputs-plain", packaging=False, progress=out)
        print(
            f"{'published' if plain.versions[0].created else 'already published'} "
            f"{plain.versions[0].uri} without packages"
        )
        timings = {}
        for label, uri in (
            ("individual files", plain.versions[0].uri),
            ("packages", version.uri),
        ):
            dest = work / f"pulled-{label.replace(' ', '-')}"
            pulled = api.pull(uri, dest, cache_dir=work / f"cache-{label.replace(' ', '-')}")
            timings[label] = pulled.seconds
            print(
                f"pull from {label:<16} {pulled.files:,} files in {pulled.seconds:6.2f} s "
                f"({pulled.requests:,} requests, {format_size(pulled.bytes_downloaded)})"
            )
        same = _same_tree(work / "outputs", work / "pulled-packages")
        speedup = timings["individual files"] / max(timings["packages"], 1e-9)
        print(f"speedup from packages: {speedup:.1f}x on this store (local disk; over a network")
        print("with tens of milliseconds per request the gap grows: try 'dspkg bench')")
        print(f"pulled tree identical to the outputs: {'yes' if same else 'NO'}")
        return 0 if same else 1


def _same_tree(a: Path, b: Path) -> bool:
    left = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    left = [p for p in left if p.name != "valohai.metadata.jsonl"]
    right = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    if left != right:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, [str(p) for p in left], shallow=False)
    return not mismatch and not errors


if __name__ == "__main__":
    sys.exit(run_demo())
