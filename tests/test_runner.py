"""``dspkg run``: valohai.yaml steps run unchanged, inputs pulled, outputs published.

Every test runs ``dspkg`` as a separate process with a private store, cache and root.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dspkg.runner.downloader import PlainSource
from dspkg.runner.execution import new_execution_id
from tests.helpers import BUCKET, S3_ENV, S3Server, assert_one_line_error, read_tree, run_cli

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PACKAGE_LINE = "(dataset version package 1/1) uploading imagenet-subset.train-v1.vhpkgzip ("

MAKE_PY = """
import argparse, json, os
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--version", default="v1")
parser.add_argument("--files", type=int, default=20)
parser.add_argument("--dir", default="part")
args = parser.parse_args()
outputs = Path(os.environ.get("VH_OUTPUTS_DIR", "/valohai/outputs"))
lines = []
for i in range(args.files):
    rel = f"{args.dir}/{i:03d}.txt"
    (outputs / rel).parent.mkdir(parents=True, exist_ok=True)
    (outputs / rel).write_text(f"{args.version}-{i}")
    entry = {"uri": f"dataset://small/{args.version}", "packaging": True}
    lines.append(json.dumps({"file": rel, "metadata": {"valohai.dataset-versions": [entry]}}))
(outputs / "valohai.metadata.jsonl").write_text("\\n".join(lines) + "\\n")
print(f"made {args.files} files for dataset://small/{args.version}")
"""

SHOW_PY = """
import os
from pathlib import Path

inputs = Path(os.environ.get("VH_INPUTS_DIR", "/valohai/inputs"))
print("greeting:", os.environ.get("GREETING"))
for directory in sorted(inputs.iterdir()):
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    print(f"input {directory.name}: {len(files)} files")
    for p in files:
        print(f"  {p.relative_to(directory).as_posix()} = {p.read_text()[:30]}")
"""

SMALL_YAML = """
- step:
    name: make
    image: python:3.12
    command: python make.py {parameters}
    parameters:
      - name: version
        default: v1
      - name: files
        type: integer
        default: 20
      - name: dir
        default: part
    environment-variables:
      - name: VH_ENABLE_DATASET_VERSION_PACKAGING
        default: "1"

- step:
    name: show
    image: python:3.12
    command: python show.py
    inputs:
      - name: data
        default: dataset://small/v1
      - name: extra
        optional: true
    environment-variables:
      - name: GREETING
        default: hello

- step:
    name: fail
    image: python:3.12
    command:
      - python make.py --version=failed --files=5
      - exit 3

- step:
    name: params
    image: python:3.12
    command:
      - python -c "import sys; print('argv:', sys.argv[1:])" {parameters}
      - python -c "import sys; print('lr:', sys.argv[1:])" {parameter:lr}
    parameters:
      - name: lr
        type: float
        default: 0.1
      - name: epochs
        type: integer
        default: 3
      - name: verbose
        type: flag
        default: false
      - name: tag
        multiple: repeat
        optional: true

- step:
    name: lazy
    image: python:3.12
    command:
      - python lazy.py
      - exit ${EXIT_CODE:-0}
    inputs:
      - name: data
        default: dataset://small/v1
        download: on-demand

- step:
    name: single
    image: python:3.12
    command: python show.py
    inputs:
      - name: table
        filename: table.csv

- step:
    name: tree
    image: python:3.12
    command: python show.py
    inputs:
      - name: tree
        keep-directories: suffix

- step:
    name: env
    image: python:3.12
    command: python env.py
    environment-variables:
      - name: GREETING
        default: hello

- step:
    name: broken
    image: python:3.12
    command:
      - python make.py --version=v9 --files=2
      - echo '{oops' >> "$VH_OUTPUTS_DIR/valohai.metadata.jsonl"
      - exit ${EXIT_CODE:-0}
"""

# The seed's train.py loop, unchanged, plus what kind of directory it read.
LAZY_PY = """
import os
from pathlib import Path

inputs = Path(os.environ.get("VH_INPUTS_DIR", "/valohai/inputs"))
images = inputs / "data"
for folder in sorted(p for p in images.iterdir() if p.is_dir()):
    count = sum(1 for f in folder.iterdir() if f.is_file())
    print(f"class {folder.name}: {count} files")
    print("first:", (folder / sorted(os.listdir(folder))[0]).read_text())
mounts = [line.split()[4] for line in open("/proc/self/mountinfo") if " fuse.dspkg " in line]
print("mounted:", str(images) in mounts)
"""

ENV_PY = """
import os

print("cwd", os.getcwd())
for key in sorted(os.environ):
    if key.startswith("VH_") or key == "GREETING":
        print(key, os.environ[key])
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A small project in the platform's style: make a version, show inputs, fail, params."""
    root = tmp_path / "project"
    root.mkdir()
    (root / "valohai.yaml").write_text(SMALL_YAML)
    (root / "make.py").write_text(MAKE_PY)
    (root / "show.py").write_text(SHOW_PY)
    (root / "env.py").write_text(ENV_PY)
    (root / "lazy.py").write_text(LAZY_PY)
    return root


@pytest.fixture
def run_env(tmp_path: Path) -> dict[str, str]:
    """A private store and cache; ``python`` on PATH is this interpreter, as in an image."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {
        "DSPKG_STORE": f"file://{tmp_path / 'store'}",
        "DSPKG_CACHE": str(tmp_path / "cache"),
        "PATH": path,
    }


def dspkg_run(
    args: list[str], env: dict[str, str], *, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return run_cli(["run", *args], env, cwd=cwd)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result.stdout


def execution_id(root: Path) -> str:
    doc = json.loads((root / "config" / "execution.json").read_text())
    value: str = doc["valohai.execution-id"]
    return value


def stored_outputs(tmp_path: Path, root: Path) -> dict[str, bytes]:
    return read_tree(tmp_path / "store" / "executions" / execution_id(root) / "outputs")


def make_small(project: Path, env: dict[str, str], root: Path, *extra: str) -> str:
    return ok(
        dspkg_run(["make", "-f", str(project / "valohai.yaml"), "--root", str(root), *extra], env)
    )


# --- the acceptance cases: the two example projects, unchanged ---------------------------


def test_image_classification_example(tmp_path: Path, run_env: dict[str, str]) -> None:
    example = EXAMPLES / "image-classification"
    root = tmp_path / "vh"

    prepared = ok(dspkg_run(["prepare", "--root", str(root)], run_env, cwd=example))
    assert "wrote 3000 images in 3 classes" in prepared
    assert "created dataset://imagenet-subset/train-v1: 3,000 files" in prepared
    stored = stored_outputs(tmp_path, root)
    assert len(stored) == 3000  # the metadata file is read, not stored
    assert stored["cat/cat_0000.jpg"] == (root / "outputs" / "cat" / "cat_0000.jpg").read_bytes()
    package = tmp_path / "store" / "packages" / "imagenet-subset" / "train-v1"
    # One package, in the directory of the publish attempt that uploaded it.
    (key,) = [p.relative_to(tmp_path / "store").as_posix() for p in package.glob("*/*")]
    assert key.endswith("/imagenet-subset.train-v1.vhpkgzip")
    # The reference product's three lines, one after the other.
    lines = prepared.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(PACKAGE_LINE))
    assert re.fullmatch(re.escape(PACKAGE_LINE) + r"[0-9.]+ [KMG]?B\)", lines[at])
    assert lines[at + 1 : at + 3] == [
        f"(dataset version package 1/1) uploading to local bucket {tmp_path / 'store'}",
        f"(dataset version package 1/1) upload complete ({key})",
    ]

    yaml_file = str(example / "valohai.yaml")
    trained = ok(dspkg_run(["train", "-f", yaml_file, "--root", str(root)], run_env))
    assert (
        "input training-images: dataset://imagenet-subset/train-v1 -> 3,000 files "
        "(0 from cache, 3,000 fetched" in trained
    )
    for cls in ("bird", "cat", "dog"):
        assert f"class {cls}: 1000 images" in trained
    assert "training on 3000 images" in trained
    # Runner lines, then the command's output, then the outputs.
    assert trained.index("input training-images") < trained.index("class bird")
    assert trained.index("training on") < trained.index("outputs: none")

    inputs = json.loads((root / "config" / "inputs.json").read_text())
    files = inputs["training-images"]["files"]
    assert len(files) == 3000
    first = next(f for f in files if f["name"] == "cat/cat_0000.jpg")
    data = Path(first["path"]).read_bytes()
    assert first["path"] == str(root / "inputs" / "training-images" / "cat" / "cat_0000.jpg")
    assert first["size"] == len(data)
    assert first["checksums"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert first["uri"] == "dataset://imagenet-subset/train-v1"
    assert first["metadata"] == []

    # The second training run is served from the cache.
    again = ok(dspkg_run(["train", "-f", yaml_file, "--root", str(root)], run_env))
    assert (
        "input training-images: dataset://imagenet-subset/train-v1 -> 3,000 files "
        "(3,000 from cache)" in again
    )
    assert "class dog: 1000 images" in again


def test_time_series_example(tmp_path: Path, run_env: dict[str, str]) -> None:
    example = EXAMPLES / "time-series"
    root = tmp_path / "vh"
    prepared = ok(dspkg_run(["prepare", "--root", str(root)], run_env, cwd=example))
    assert "(dataset version package 1/1) uploading weather.2025.vhpkgzip (" in prepared
    assert "created dataset://weather/2025: 365 files" in prepared

    analyzed = ok(dspkg_run(["analyze", "--root", str(root)], run_env, cwd=example))
    assert "input daily: dataset://weather/2025 -> 365 files (0 from cache, 365 fetched" in analyzed
    assert "days: 365" in analyzed
    mean = float(analyzed.split("mean temperature: ")[1].split()[0])
    assert 5 < mean < 11

    again = ok(dspkg_run(["analyze", "--root", str(root)], run_env, cwd=example))
    assert "input daily: dataset://weather/2025 -> 365 files (365 from cache)" in again
    assert f"mean temperature: {mean:.2f} C" in again


# --- inputs -----------------------------------------------------------------------------


def test_missing_optional_input_is_skipped(
    tmp_path: Path, project: Path, run_env: dict[str, str]
) -> None:
    root = tmp_path / "vh"
    make_small(project, run_env, root)
    shown = ok(dspkg_run(["show", "--root", str(root)], run_env, cwd=project))
    assert "input extra: skipped (optional, no URI given)" in shown
    assert "input data: 20 files" in shown
    assert "  part/000.txt = v1-0" in shown
    assert "input extra:" in shown and not (root / "inputs" / "extra").exists()
    inputs = json.loads((root / "config" / "inputs.json").read_text())
    assert sorted(inputs) == ["data"]


def test_missing_required_input_fails_before_running(
    tmp_path: Path, project: Path, run_env: dict[str, str]
) -> None:
    (project / "valohai.yaml").write_text(
        SMALL_YAML.replace("default: dataset://small/v1", "optional: false")
    )
    root = tmp_path / "vh"
    failed = dspkg_run(["show", "--root", str(root)], run_env, cwd=project)
    assert_one_line_error(failed, "input 'data' of step 'show'", "--input data=URI")
    assert "greeting" not in failed.stdout
    assert not root.exists()  # nothing was touched


def test_input_override_and_several_uris(
    tmp_path: Path, project: Path, run_env: dict[str, str]
) -> None:
    root = tmp_path / "vh"
    make_small(project, run_env, root)
    make_small(
        project, run_env, root, "--param", "version=v2", "--param", "files=3", "--param", "dir=more"
    )
    show = ["show", "--root", str(root)]

    overridden = ok(dspkg_run([*show, "--input", "data=dataset://small/v2"], run_env, cwd=project))
    assert "input data: 3 files" in overridden
    assert "  more/000.txt = v2-0" in overridden

    # Several URIs in one input: their trees merge when their paths differ ...
    v1_v2 = ["--input", "data=dataset://small/v1", "--input", "data=dataset://small/v2"]
    merged = ok(dspkg_run([*show, *v1_v2], run_env, cwd=project))
    assert "input data: 23 files" in merged
    assert "  more/002.txt = v2-2" in merged and "  part/019.txt = v1-19" in merged
    files = json.loads((root / "config" / "inputs.json").read_text())["data"]["files"]
    assert {f["uri"] for f in files} == {"dataset://small/v1", "dataset://small/v2"}
    assert len(files) == 23

    # ... and are refused, naming both URIs, when two bring the same path.
    make_small(project, run_env, root, "--param", "version=v3", "--param", "files=1")
    v1_latest = ["--input", "data=dataset://small/v1", "--input", "data=dataset://small/latest"]
    clash = dspkg_run([*show, *v1_latest], run_env, cwd=project)
    assert_one_line_error(
        clash,
        "input 'data': 'part/000.txt' comes from both dataset://small/v1 and dataset://small/latest",
    )
    assert "greeting" not in clash.stdout

    unknown = dspkg_run([*show, "--input", "nope=dataset://small/v1"], run_env, cwd=project)
    assert_one_line_error(unknown, "step 'show' has no input 'nope'; its inputs: data, extra")


def test_inputs_and_outputs_are_fresh_for_each_run(
    tmp_path: Path, project: Path, run_env: dict[str, str]
) -> None:
    root = tmp_path / "vh"
    make_small(project, run_env, root)
    ok(
        dspkg_run(
            ["show", "--root", str(root), "--input", "extra=dataset://small/v1"],
            run_env,
            cwd=project,
        )
    )
    assert (root / "inputs" / "extra" / "part" / "000.txt").is_file()
    (root / "inputs" / "data" / "stray.txt").write_text("from an earlier run")

    shown = ok(dspkg_run(["show", "--root", str(root)], run_env, cwd=project))
    assert "input data: 20 files" in shown and "stray" not in shown
    assert sorted(p.name for p in (root / "inputs").iterdir()) == ["data"]

    # Published outputs of the last run are cleared; the next run starts empty.
    make_small(
        project,
        run_env,
        root,
        "--param",
        "version=v2",
        "--param",
        "files=2",
        "--param",
        "dir=other",
    )
    assert sorted(p.name for p in (root / "outputs").iterdir()) == [
        "other",
        "valohai.metadata.jsonl",
    ]


def test_on_demand_input_is_mounted_while_the_command_runs(
    tmp_path: Path, project: Path, run_env: dict[str, str]
) -> None:
    from dspkg.mounting import fuse_problem, mounted_fstype

    if fuse_problem() is not None:
        pytest.skip(f"the kernel refuses FUSE here: {fuse_problem()}")
    root = tmp_path / "vh"
    make_small(project, run_env, root)
    lazy = ["lazy", "--root", str(root)]
    out = ok(dspkg_run(lazy, run_env, cwd=project))
    assert "input data: dataset://small/v1 -> 20 files (" in out
    assert "mounted: files are fetched as they are read" in out
    assert "class part: 20 files" in out and "first: v1-0" in out
    assert "mounted: True" in out
    assert mounted_fstype(root / "inputs" / "data") is None  # unmounted when it exited
    inputs = json.loads((root / "config" / "inputs.json").read_text())
    assert len(inputs["data"]["files"]) == 20

    # A failing command unmounts too; without FUSE the input is pulled, with a warning.
    failing = dspkg_run([*lazy, "--env", "EXIT_CODE=3"], run_env, cwd=project)
    assert failing.returncode == 3 and "mounted: True" in failing.stdout
    assert mounted_fstype(root / "inputs" / "data") is None
    no_fuse = {**run_env, "FUSE_LIBRARY_NAME": "no-such-fuse"}
    pulled = dspkg_run(lazy, no_fuse, cwd=project)
    assert pulled.returncode == 0, pulled.stderr
    assert "input data: cannot mount on demand (libfuse cannot be loaded" in (
        pulled.stdout + pulled.stderr
    )
    assert "pulling it instead" in pulled.stdout + pulled.stderr
    assert "class part: 20 files" in pulled.stdout and "mounted: False" in pulled.stdout


def test_no_data_cache_downloads_again(
    tmp_path: Path, project: Path, run_env: dict[str, str]
) -> None:
    root = tmp_path / "vh"
    make_small(project, run_env, root)
    show = ["show", "--root", str(root)]
    first = ok(dspkg_run(show, run_env, cwd=project))
    assert "input data: dataset://small/v1 -> 20 files (0 from cache, 20 fetched" in first
    cached = ok(dspkg_run(show, run_env, cwd=project))
    assert "-> 20 files (20 from cache)" in cached
    again = ok(dspkg_run([*show, "--env", "VH_NO_DATA_CACHE=1"], run_env, cwd=project))
    assert "-> 20 files (0 from cache, 20 fetched" in again


def test_file_inputs(tmp_path: Path, project: Path, run_env: dict[str, str]) -> None:
    root = tmp_path / "vh"
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "a.csv").write_text("1,2")
    (raw / "b.csv").write_text("3,4")
    (raw / "notes.txt").write_text("n")
    show = ["show", "--root", str(root), "--input", "data=file://" + str(raw / "a.csv")]
    shown = ok(dspkg_run(show, run_env, cwd=project))
    assert f"input data: file://{raw}/a.csv -> 1 file (3 B)" in shown
    assert "  a.csv = 1,2" in shown
    entry = json.loads((root / "config" / "inputs.json").read_text())["data"]["files"][0]
    assert entry["name"] == "a.csv"
    assert entry["uri"] == f"file://{raw}/a.csv"
    assert entry["checksums"]["sha256"] == hashlib.sha256(b"1,2").hexdigest()

    wildcard = ["show", "--root", str(root), "--input", f"data=file://{raw}/*.csv"]
    matched = ok(dspkg_run(wildcard, run_env, cwd=project))
    assert "input data: 2 files" in matched and "  b.csv = 3,4" in matched

    # `filename:` renames an input's only file.
    single = ["single", "--root", str(root), "--input", f"table=file://{raw}/b.csv"]
    renamed = ok(dspkg_run(single, run_env, cwd=project))
    assert "  table.csv = 3,4" in renamed

    # `**` crosses directories; keep-directories: suffix keeps the path below the wildcard.
    (raw / "sub").mkdir()
    (raw / "sub" / "c.csv").write_text("5,6")
    tree = ["tree", "--root", str(root), "--input", f"tree=file://{raw}/**.csv"]
    kept = ok(dspkg_run(tree, run_env, cwd=project))
    assert "input tree: 3 files" in kept and "  sub/c.csv = 5,6" in kept

    missing = ["show", "--root", str(root), "--input", f"data=file://{raw}/missing.csv"]
    assert_one_line_error(dspkg_run(missing, run_env, cwd=project), "missing.csv not found")


def test_s3_inputs(
    tmp_path: Path, project: Path, run_env: dict[str, str], s3_server: S3Server
) -> None:
    import boto3

    prefix = uuid.uuid4().hex
    client = boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint,
        aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"],
        region_name=S3_ENV["AWS_REGION"],
    )
    for key, body in {"raw/a.csv": b"alpha", "raw/b.csv": b"beta", "raw/sub/c.csv": b"c"}.items():
        client.put_object(Bucket=BUCKET, Key=f"{prefix}/{key}", Body=body)
    env = {**run_env, **s3_server.env()}
    root = tmp_path / "vh"
    base = f"s3://{BUCKET}/{prefix}/raw"

    one = ok(
        dspkg_run(["show", "--root", str(root), "--input", f"data={base}/a.csv"], env, cwd=project)
    )
    assert f"input data: {base}/a.csv -> 1 file (5 B)" in one
    assert "  a.csv = alpha" in one

    matched = ok(
        dspkg_run(["show", "--root", str(root), "--input", f"data={base}/*.csv"], env, cwd=project)
    )
    assert "input data: 2 files" in matched  # `*` stays in its directory
    assert "  b.csv = beta" in matched
    files = json.loads((root / "config" / "inputs.json").read_text())["data"]["files"]
    assert [f["uri"] for f in files] == [f"{base}/a.csv", f"{base}/b.csv"]

    missing = ["show", "--root", str(root), "--input", f"data={base}/nope.csv"]
    assert_one_line_error(dspkg_run(missing, env, cwd=project), "nope.csv not found")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A loopback HTTP server serving a temporary directory."""
    served = tmp_path / "served"
    served.mkdir()

    handler = functools.partial(_QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", served
    finally:
        server.shutdown()
        server.server_close()


def test_http_input_keeps_the_query(
    tmp_path: Path, project: Path, run_env: dict[str, str], http_dir: tuple[str, Path]
) -> None:
    url, served = http_dir
    (served / "data.csv").write_text("x,y")
    root = tmp_path / "vh"
    signed = f"{url}/data.csv?X-Amz-Signature=abc"
    shown = ok(
        dspkg_run(
            ["single", "--root", str(root), "--input", f"table={signed}"], run_env, cwd=project
        )
    )
    assert "  table.csv = x,y" in shown
    entry = json.loads((root / "config" / "inputs.json").read_text())["table"]["files"][0]
    assert entry["uri"] == signed and entry["size"] == 3
    missing = ["single", "--root", str(root), "--input", f"table={url}/nope.csv"]
    assert_one_line_error(dspkg_run(missing, run_env, cwd=project), "HTTP 404")


# --- the command, its environment and its outputs ---------------------------------------


def test_failed_command_still_publishes_and_keeps_its_status(
    tmp_path: Path, project: Path, run_env: dict[str, str]
) -> None:
    root = tmp_path / "vh"
    failed = dspkg_run(["fail", "--root", str(root)], run_env, cwd=project)
    assert failed.returncode == 3, (failed.stdout, failed.stderr)
    assert "made 5 files for dataset://small/failed" in failed.stdout
    assert "command exited with status 3" in failed.stdout
    assert "created dataset://small/failed: 5 files" in failed.stdout
    assert "Traceback" not in failed.stderr and "error" not in failed.stderr
    assert sorted(stored_outputs(tmp_path, root)) == [f"part/{i:03d}.txt" for i in range(5)]


def test_publish_failure_is_one_line_and_keeps_the_outputs(
    tmp_path: Path, project: Path, run_env: dict[str, str]
) -> None:
    root = tmp_path / "vh"
    broken = dspkg_run(["broken", "--root", str(root)], run_env, cwd=project)
    assert_one_line_error(broken, "valohai.metadata.jsonl, line 3", "not valid JSON")
    assert "command exited with status 0" in broken.stdout

    # A failing command keeps its own status; the publish error is still printed.
    failing = dspkg_run(
        ["broken", "--root", str(tmp_path / "vh2"), "--env", "EXIT_CODE=4"], run_env, cwd=project
    )
    assert failing.returncode == 4
    assert "dspkg: error: " in failing.stderr and "line 3" in failing.stderr

    # The unpublished outputs are never cleared by the next run.
    refused = dspkg_run(["make", "--root", str(root)], run_env, cwd=project)
    assert_one_line_error(refused, f"{root / 'outputs'} holds outputs that no dspkg run published")
    assert (root / "outputs" / "part" / "000.txt").read_text() == "v9-0"


def test_root_environment_and_config_files(
    tmp_path: Path, project: Path, run_env: dict[str, str]
) -> None:
    root = tmp_path / "somewhere" / "else"
    out = ok(dspkg_run(["env", "-f", str(project / "valohai.yaml"), "--root", str(root)], run_env))
    env = dict(
        line.split(" ", 1)
        for line in out.splitlines()
        if line.startswith(("VH_", "GREETING", "cwd"))
    )
    assert env["cwd"] == str(project)
    assert env["VH_INPUTS_DIR"] == str(root / "inputs")
    assert env["VH_OUTPUTS_DIR"] == str(root / "outputs")
    assert env["VH_CONFIG_DIR"] == str(root / "config")
    assert env["VH_REPOSITORY_DIR"] == str(project)
    assert env["GREETING"] == "hello"
    first_id = execution_id(root)
    assert env["VH_EXECUTION_ID"] == first_id and env["VH_JOB_ID"] == f"exec-{first_id}"
    doc = json.loads((root / "config" / "execution.json").read_text())
    assert doc["valohai.execution-step"] == "env"
    assert doc["valohai.execution-image"] == "python:3.12"
    assert json.loads((root / "config" / "parameters.json").read_text()) == {}
    assert json.loads((root / "config" / "inputs.json").read_text()) == {}

    overridden = ok(
        dspkg_run(["env", "--root", str(root), "--env", "GREETING=bye"], run_env, cwd=project)
    )
    assert "GREETING bye" in overridden
    assert execution_id(root) != first_id


def test_env_sets_the_packaging_gate(
    tmp_path: Path, project: Path, run_env: dict[str, str]
) -> None:
    gate_off = ["--env", "VH_ENABLE_DATASET_VERSION_PACKAGING=0"]
    made = dspkg_run(["make", "--root", str(tmp_path / "vh"), *gate_off], run_env, cwd=project)
    assert "created dataset://small/v1: 20 files, 90 B, 0 packages" in ok(made)
    assert "uploading" not in made.stdout
    assert "VH_ENABLE_DATASET_VERSION_PACKAGING" in made.stderr


def test_parameters_reach_the_command_the_platform_way(
    tmp_path: Path, project: Path, run_env: dict[str, str]
) -> None:
    root = tmp_path / "vh"
    params = ["params", "--root", str(root)]
    out = ok(dspkg_run(params, run_env, cwd=project))
    assert "argv: ['--lr=0.1', '--epochs=3']" in out
    assert "lr: ['--lr=0.1']" in out
    assert json.loads((root / "config" / "parameters.json").read_text()) == {
        "epochs": 3,
        "lr": 0.1,
        "verbose": False,
    }

    given = [
        "--param",
        "lr=0.5",
        "--param",
        "verbose=true",
        "--param",
        "tag=a",
        "--param",
        "tag=b c",
    ]
    out = ok(dspkg_run([*params, *given], run_env, cwd=project))
    assert "argv: ['--lr=0.5', '--epochs=3', '--verbose', '--tag=a', '--tag=b c']" in out
    assert json.loads((root / "config" / "parameters.json").read_text())["tag"] == ["a", "b c"]

    bad = dspkg_run([*params, "--param", "epochs=many"], run_env, cwd=project)
    assert_one_line_error(bad, "parameter 'epochs' of step 'params'", "many is not an integer")
    unknown = dspkg_run([*params, "--param", "nope=1"], run_env, cwd=project)
    assert_one_line_error(unknown, "no parameter 'nope'; its parameters: lr, epochs, verbose, tag")


# --- the file and the command line -------------------------------------------------------


def test_bad_valohai_yaml_is_one_line(
    tmp_path: Path, project: Path, run_env: dict[str, str]
) -> None:
    root = ["--root", str(tmp_path / "vh")]
    config = project / "valohai.yaml"
    unknown = dspkg_run(["trian", "-f", str(config), *root], run_env)
    assert_one_line_error(
        unknown,
        f"{config} has no step 'trian'",
        "steps in the file: make, show, fail, params, lazy, single, tree, env, broken",
    )

    bad = tmp_path / "bad" / "valohai.yaml"
    bad.parent.mkdir()
    bad.write_text("- step:\n    name: train\n    command: [python\n")
    syntax = dspkg_run(["train", "-f", str(bad), *root], run_env)
    assert_one_line_error(syntax, f"{bad}, line", "not valid YAML", "to run step 'train'")

    bad.write_text(
        textwrap.dedent(
            """
            - step: {name: prepare, image: python:3.12}
            - step: {name: train, image: python:3.12, command: python train.py}
            """
        )
    )
    schema = dspkg_run(["train", "-f", str(bad), *root], run_env)
    assert_one_line_error(
        schema,
        str(bad),
        "step 'prepare': 'command' is a required property",
        "steps in the file: prepare, train",
    )

    missing = dspkg_run(["train", "-f", str(tmp_path / "none.yaml"), *root], run_env)
    assert_one_line_error(missing, "none.yaml not found", "-f")
    assert not (tmp_path / "vh").exists()

    assert dspkg_run([], run_env, cwd=project).returncode == 2
    assert_one_line_error(
        dspkg_run(["show", "--env", "NOEQUALS"], run_env, cwd=project), "KEY=VALUE"
    )


def test_list_steps(project: Path, run_env: dict[str, str]) -> None:
    listed = ok(dspkg_run(["--list"], run_env, cwd=project))
    assert f"steps in {project / 'valohai.yaml'}:" in listed
    assert "make    python make.py {parameters}" in listed
    assert "inputs: data (dataset://small/v1), extra (no default)" in listed
    assert "parameters: lr, epochs, verbose, tag" in listed


# --- pure parts, in process ---------------------------------------------------------------


def test_plain_uris_split_into_store_and_key() -> None:
    one = PlainSource.parse("s3://bucket/data/2025/a.csv")
    assert (one.store_url, one.key, one.wildcard) == ("s3://bucket/data/2025", "a.csv", False)
    wild = PlainSource.parse("gs://bucket/data/*/x-?.csv")
    assert (wild.store_url, wild.key, wild.full_prefix) == ("gs://bucket/data", "*/x-?.csv", "data")
    assert wild.pattern().fullmatch("2025/x-1.csv")
    assert not wild.pattern().fullmatch("2025/deep/x-1.csv")
    assert PlainSource.parse("s3://bucket/**.csv").pattern().fullmatch("a/b/c.csv")
    local = PlainSource.parse("file:///tmp/my%20dir/a.csv")
    assert (local.store_url, local.key) == ("file:///tmp/my dir", "a.csv")


def test_execution_ids_are_unique_and_time_ordered() -> None:
    ids = [new_execution_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(uuid.UUID(i).version == 7 for i in ids)
    first, later = ids[0], new_execution_id()
    assert first[:8] <= later[:8]


def test_include_takes_part_of_a_dataset_input(
    tmp_path: Path, project: Path, run_env: dict[str, str]
) -> None:
    root = tmp_path / "vh"
    make_small(project, run_env, root)  # part/000.txt ... part/019.txt
    show = ["show", "--root", str(root)]
    subset = ["--include", "data=part/00*", "--include", "data=part/010.txt"]
    shown = ok(dspkg_run([*show, *subset, "--exclude", "data=*5.txt"], run_env, cwd=project))
    assert "input data: 10 files" in shown
    assert "  part/010.txt = v1-10" in shown and "part/005.txt" not in shown
    files = json.loads((root / "config" / "inputs.json").read_text())["data"]["files"]
    names = [f["name"] for f in files]
    assert names == [f"part/00{i}.txt" for i in range(10) if i != 5] + ["part/010.txt"]
    assert "-> 10 files" in shown  # the runner's line counts what the input got

    # With filename: a subset of one file is renamed, as a one-file input is.
    single = ["single", "--root", str(root), "--input", "table=dataset://small/v1"]
    renamed = ok(dspkg_run([*single, "--include", "table=part/003.txt"], run_env, cwd=project))
    assert "  table.csv = v1-3" in renamed

    nothing = dspkg_run([*show, "--include", "data=nope/**"], run_env, cwd=project)
    assert_one_line_error(nothing, "--include 'nope/**' matches no file of dataset://small/v1")
    unknown = dspkg_run([*show, "--include", "nope=*"], run_env, cwd=project)
    assert_one_line_error(unknown, "--include nope=...: step 'show' has no input 'nope'")
    bad = dspkg_run([*show, "--include", "data=[oops"], run_env, cwd=project)
    assert bad.returncode == 2, bad.stderr
    assert bad.stderr.strip() == (
        "dspkg: error: --include '[oops': '[' at position 1 is never closed; "
        "write '\\[' for a literal ["
    )
