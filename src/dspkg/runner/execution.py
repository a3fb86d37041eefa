"""One execution: directories, environment, config files, inputs, the command, publishing.

The order keeps every mistake cheap: the file, the step, its parameters and its
inputs are checked before anything is touched; inputs are fetched before the
command runs; outputs are published after it, also when it failed, as on the
platform.

The directories under ``root`` belong to the runner. ``inputs/`` is emptied
before each run (an execution sees exactly its own inputs, never an earlier
run's); ``outputs/`` is emptied too, but only when the previous run published
it: unpublished outputs are never deleted. That record lives in
``<root>/.dspkg-run.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from dspkg.api import pull_options, resolve_store
from dspkg.cache import Cache
from dspkg.concurrency import run_sync
from dspkg.config import Settings
from dspkg.errors import DspkgError, RunError
from dspkg.names import VersionUri
from dspkg.progress import Progress
from dspkg.runner.inputs import (
    DatasetSource,
    InputResult,
    fetch_inputs,
    plan_inputs,
    uses_datasets,
    write_inputs_json,
)
from dspkg.runner.outputs import OutputsResult, store_and_publish
from dspkg.runner.step import Project, StepSpec, load_project

DEFAULT_ROOT = Path("/valohai")
STATE_FILE = ".dspkg-run.json"
SHELL = "/bin/sh"


@dataclass(frozen=True)
class RunRequest:
    """What ``dspkg run`` was asked to do."""

    step: str
    config: Path = Path("valohai.yaml")
    inputs: Mapping[str, Sequence[str]] = field(default_factory=dict)
    parameters: Mapping[str, Sequence[str]] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    root: Path = DEFAULT_ROOT
    store: str | None = None
    store_options: Mapping[str, str] = field(default_factory=dict)
    # Input name -> globs: which files of its dataset:// versions the input takes.
    include: Mapping[str, Sequence[str]] = field(default_factory=dict)
    exclude: Mapping[str, Sequence[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class RunResult:
    """How an execution went; ``exit_status`` is what the CLI exits with."""

    execution_id: str
    step: str
    status: int  # the command's exit status (128 + N when killed by signal N)
    inputs: tuple[InputResult, ...]
    outputs: OutputsResult | None
    publish_error: str | None = None

    @property
    def exit_status(self) -> int:
        if self.status:
            return self.status
        return 1 if self.publish_error else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "execution_id": self.execution_id,
            "step": self.step,
            "status": self.status,
            "inputs": [i.to_json() for i in self.inputs],
            "outputs": self.outputs.to_json() if self.outputs else None,
            "publish_error": self.publish_error,
        }


@dataclass(frozen=True)
class Layout:
    """The directories of an execution under ``root``."""

    root: Path

    @property
    def inputs(self) -> Path:
        return self.root / "inputs"

    @property
    def outputs(self) -> Path:
        return self.root / "outputs"

    @property
    def config(self) -> Path:
        return self.root / "config"

    @property
    def state(self) -> Path:
        return self.root / STATE_FILE


def new_execution_id() -> str:
    """A UUIDv7: time-ordered (ids sort by start time), 74 random bits."""
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(secrets.token_bytes(10), "big")
    value = (millis & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76 | ((rand >> 62) & 0xFFF) << 64
    value |= 0b10 << 62 | (rand & ((1 << 62) - 1))
    return str(uuid.UUID(int=value))


def run_step(
    request: RunRequest,
    *,
    environ: Mapping[str, str] | None = None,
    progress: Progress | None = None,
) -> RunResult:
    """Run one step: fetch its inputs, run its command, publish its outputs.

    ``environ`` (default ``os.environ``) is the environment the command inherits,
    before the step's variables, ``request.env`` and the ``VH_*`` variables.
    Errors before the command runs raise; a failed publish is reported in the result.
    """
    progress = progress or Progress()
    project = load_project(request.config, request.step)
    step = project.step(request.step)
    values = step.resolve_parameters(request.parameters)
    script = step.build_command(values)
    planned = plan_inputs(step, request.inputs, request.include, request.exclude)

    execution_id = new_execution_id()
    layout = Layout(request.root.expanduser().absolute())
    env = command_environment(
        os.environ if environ is None else environ, project, step, request.env, layout, execution_id
    )
    settings = Settings.from_env(env)
    store = resolve_store(request.store, settings, request.store_options)

    progress.log(
        f"execution {execution_id}: step {step.name} of {project.path} (image {step.image})"
    )
    _prepare(layout)
    _write_json(layout.config / "parameters.json", values)
    _write_json(layout.config / "execution.json", _execution_doc(execution_id, project, step))
    _write_state(layout, execution_id, published=False)

    with contextlib.ExitStack() as stack:
        datasets = None
        if uses_datasets(planned):
            cache = stack.enter_context(Cache(settings.cache_dir))
            datasets = DatasetSource(store, cache, pull_options(settings), request.store_options)
            # On-demand inputs stay mounted until the command ends, however it ends.
            stack.callback(_stop_mounts, datasets)
        inputs = run_sync(
            fetch_inputs(planned, layout.inputs, datasets=datasets, env=env, progress=progress)
        )
        write_inputs_json(layout.config / "inputs.json", inputs)
        if datasets is not None:
            # The job uses these versions until it ends: keep eviction away from them.
            for source in (s for i in inputs for s in i.sources):
                if source.resolved.startswith("dataset://"):
                    uri = VersionUri.parse(source.resolved)
                    stack.enter_context(datasets.cache.pin(store.url, uri))

        progress.log(f"$ {script}")
        started = time.monotonic()
        status = run_command(script, project.directory, env)
        elapsed = time.monotonic() - started
        progress.log(f"command exited with status {status} after {elapsed:.1f} s")

    outputs = None
    error = None
    try:
        outputs = store_and_publish(layout.outputs, execution_id, store, env=env, progress=progress)
        _write_state(layout, execution_id, published=True)
    except (DspkgError, OSError) as exc:
        error = str(exc) if isinstance(exc, DspkgError) else _os_error(exc)
    return RunResult(execution_id, step.name, status, tuple(inputs), outputs, error)


def _stop_mounts(datasets: DatasetSource) -> None:
    for mount in reversed(datasets.mounts):
        mount.stop()


def command_environment(
    base: Mapping[str, str],
    project: Project,
    step: StepSpec,
    overrides: Mapping[str, str],
    layout: Layout,
    execution_id: str,
) -> dict[str, str]:
    """The command's environment: ``base``, the step's variables, ``overrides``, then
    the platform's ``VH_*`` variables (which nothing overrides: they name the dirs)."""
    env = dict(base)
    env.update(step.environment)
    env.update(overrides)
    env.update(
        {
            "VH_INPUTS_DIR": str(layout.inputs),
            "VH_OUTPUTS_DIR": str(layout.outputs),
            "VH_CONFIG_DIR": str(layout.config),
            "VH_REPOSITORY_DIR": str(project.directory),
            "VH_EXECUTION_ID": execution_id,
            "VH_JOB_ID": f"exec-{execution_id}",
        }
    )
    # The command's output is streamed live; Python would hold it back in a pipe.
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _prepare(layout: Layout) -> None:
    for directory in (layout.inputs, layout.outputs, layout.config):
        # These are emptied before the run: through a link that would delete elsewhere.
        if directory.is_symlink():
            raise RunError(
                f"{directory} is a symbolic link (to {os.readlink(directory)}); dspkg run "
                "empties it before the command runs, so it must be a real directory: "
                "remove the link or give another --root",
                path=str(directory),
            )
    try:
        for directory in (layout.inputs, layout.outputs, layout.config):
            directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(
            f"cannot create {exc.filename or layout.root} ({exc.strerror}); "
            "give --root DIR where you can write",
            path=str(layout.root),
        ) from None
    if _has_entries(layout.outputs) and not _published(layout):
        raise RunError(
            f"{layout.outputs} holds outputs that no dspkg run published; move them away "
            f"(or publish them with dspkg publish {layout.outputs}, then delete them) "
            "and run again",
            path=str(layout.outputs),
        )
    _empty(layout.inputs)
    _empty(layout.outputs)


def _has_entries(directory: Path) -> bool:
    with os.scandir(directory) as it:
        return any(True for _ in it)


def _published(layout: Layout) -> bool:
    try:
        doc = json.loads(layout.state.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("outputs_published") is True


def _empty(directory: Path) -> None:
    """Remove everything inside ``directory`` (never the directory, never outside it)."""
    with os.scandir(directory) as it:
        entries = list(it)
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)


def _write_state(layout: Layout, execution_id: str, *, published: bool) -> None:
    doc = {"execution_id": execution_id, "outputs_published": published, "schema_version": 1}
    _write_json(layout.state, doc)


def _write_json(path: Path, doc: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _execution_doc(execution_id: str, project: Project, step: StepSpec) -> dict[str, Any]:
    """``execution.json`` with the platform's keys that have a meaning on one machine."""
    now = datetime.now(UTC).isoformat()
    return {
        "valohai.execution-id": execution_id,
        "valohai.execution-step": step.name,
        "valohai.execution-image": step.image,
        "valohai.execution-ctime": now,
        "valohai.execution-qtime": now,
        "valohai.execution-status": "started",
        "valohai.execution-title": None,
        "valohai.execution-tags": [],
        "valohai.execution-counter": None,
        "valohai.project-name": project.directory.name,
    }


def run_command(script: str, cwd: Path, env: Mapping[str, str]) -> int:
    """Run ``script`` with ``sh -c`` in ``cwd``, its output going straight to ours.

    Returns its exit status, 128 + N when a signal N ended it. Ctrl-C reaches the
    command (same terminal); a second one kills it. SIGTERM is passed on.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    proc = subprocess.Popen([SHELL, "-c", script], cwd=cwd, env=dict(env))

    def forward(signum: int, _frame: FrameType | None) -> None:
        proc.send_signal(signum)

    previous: Any = None
    installed = False
    with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
        previous = signal.signal(signal.SIGTERM, forward)
        installed = True
    interrupts = 0
    try:
        while True:
            try:
                code = proc.wait()
                break
            except KeyboardInterrupt:
                interrupts += 1
                if interrupts == 1:
                    proc.send_signal(signal.SIGINT)
                else:
                    proc.kill()
    finally:
        if installed:
            signal.signal(signal.SIGTERM, previous)
    return 128 - code if code < 0 else code


def _os_error(exc: OSError) -> str:
    where = f" {exc.filename}" if exc.filename else ""
    return f"{exc.strerror or exc}{where}"
