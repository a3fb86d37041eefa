"""A ``valohai.yaml`` and its steps, read with the platform's own parser (``valohai-yaml``).

The parser validates the file against the platform's schema and builds commands
with the platform's parameter interpolation (``{parameters}``,
``{parameter:name}``, ``{parameter-value:name}``), so a step means here what it
means there. Every problem is one :class:`~dspkg.errors.RunError` line naming the
file and the step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import valohai_yaml
import yaml
from valohai_yaml.commands import join_command
from valohai_yaml.excs import ValidationErrors
from valohai_yaml.objs import Step
from valohai_yaml.objs.input import DownloadIntent
from valohai_yaml.objs.parameter import Parameter, ValueType

from dspkg.config import truthy
from dspkg.errors import RunError
from dspkg.paths import path_problem

FALSY = {"0", "no", "false", "off"}


@dataclass(frozen=True)
class InputSpec:
    """One input of a step: ``default`` URIs, ``optional``, ``filename``, ``keep-directories``."""

    name: str
    defaults: tuple[str, ...]
    optional: bool = False
    filename: str | None = None
    keep_directories: str = "none"  # "none", "suffix" or "full", as on the platform
    on_demand: bool = False  # download: on-demand: mounted, read as the command opens files


@dataclass(frozen=True)
class StepSpec:
    """One step of a ``valohai.yaml``, as the runner needs it."""

    name: str
    image: str
    commands: tuple[str, ...]
    inputs: tuple[InputSpec, ...]
    environment: Mapping[str, str]
    parameters: tuple[str, ...]
    file: Path
    source: Step = field(compare=False, repr=False)

    def input(self, name: str) -> InputSpec | None:
        return next((i for i in self.inputs if i.name == name), None)

    def resolve_parameters(self, overrides: Mapping[str, Sequence[str]]) -> dict[str, ValueType]:
        """Parameter values: the step's defaults, overridden by ``NAME -> [VALUE, ...]``.

        Values are checked and converted as the platform does (types, ``min``/``max``,
        ``choices``); a required parameter without a value is an error.
        """
        params: Mapping[str, Parameter] = self.source.parameters
        unknown = sorted(set(overrides) - set(params))
        if unknown:
            known = ", ".join(params) or "none"
            raise RunError(
                f"step {self.name!r} has no parameter {unknown[0]!r}; its parameters: {known}",
                path=str(self.file),
            )
        values: dict[str, ValueType] = {}
        for name, param in params.items():
            value: Any
            if name in overrides:
                value = _override_value(self, param, list(overrides[name]))
            elif param.default is not None and param.default != []:
                # valohai-yaml turns a multiple-value parameter's missing default into [].
                value = param.default
            elif param.optional or param.type == "flag":
                continue
            else:
                raise RunError(
                    f"parameter {name!r} of step {self.name!r} has no default; "
                    f"give --param {name}=VALUE",
                    path=str(self.file),
                )
            try:
                values[name] = param.validate(value)
            except ValidationErrors as exc:
                problems = "; ".join(str(getattr(e, "message", e)) for e in exc.errors)
                raise RunError(
                    f"parameter {name!r} of step {self.name!r}: {problems}", path=str(self.file)
                ) from None
        return values

    def build_command(self, values: Mapping[str, ValueType]) -> str:
        """The shell script to run: commands with parameters interpolated, joined by ``&&``."""
        commands = self.source.build_command(dict(values))
        return join_command(commands, " && ")


def _override_value(step: StepSpec, param: Parameter, raw: list[str]) -> Any:
    if param.type == "flag":
        flags = []
        for text in raw:
            if truthy(text):
                flags.append(True)
            elif text.strip().lower() in FALSY:
                flags.append(False)
            else:
                raise RunError(
                    f"parameter {param.name!r} of step {step.name!r} is a flag: give "
                    f"--param {param.name}=true or false, not {text!r}",
                    path=str(step.file),
                )
        return flags[-1]
    if param.multiple:
        return raw
    if len(raw) > 1:
        raise RunError(
            f"parameter {param.name!r} of step {step.name!r} takes one value, got {len(raw)}",
            path=str(step.file),
        )
    return raw[0]


@dataclass(frozen=True)
class Project:
    """A ``valohai.yaml`` and the directory it describes (where commands run)."""

    path: Path
    directory: Path
    steps: Mapping[str, StepSpec]

    def step(self, name: str) -> StepSpec:
        """The step called ``name``; an unknown name is an error listing the steps."""
        found = self.steps.get(name)
        if found is None:
            raise RunError(
                f"{self.path} has no step {name!r}; {_steps_phrase(list(self.steps))}",
                path=str(self.path),
            )
        return found


def load_project(path: Path, step: str | None = None) -> Project:
    """Read and validate the ``valohai.yaml`` at ``path``.

    ``step`` is the step the caller wants, named in error messages.
    """
    path = path.expanduser().absolute()
    goal = f"to run step {step!r}" if step else "to list its steps"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RunError(
            f"{path} not found; run in the project directory or give -f PATH/TO/valohai.yaml",
            path=str(path),
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RunError(f"{path} cannot be read ({exc})", path=str(path)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RunError(
            f"{path}{_yaml_where(exc)}: not valid YAML ({_yaml_problem(exc)}); fix it {goal}",
            path=str(path),
        ) from None
    if data is not None and not isinstance(data, list):
        raise RunError(
            f"{path}: not a valid valohai.yaml (expected a list of '- step:' items); fix it {goal}",
            path=str(path),
        )
    try:
        config = valohai_yaml.parse(data or [])
    except ValidationErrors as exc:
        raise RunError(
            f"{path}: {_schema_problem(exc, data)}; fix it {goal} "
            f"({_steps_phrase(_raw_step_names(data))})",
            path=str(path),
        ) from None
    except (TypeError, ValueError) as exc:
        raise RunError(
            f"{path}: not a valid valohai.yaml ({exc}); fix it {goal} "
            f"({_steps_phrase(_raw_step_names(data))})",
            path=str(path),
        ) from None
    steps = {name: _step_spec(path, s) for name, s in config.steps.items()}
    return Project(path=path, directory=path.parent, steps=steps)


def _step_spec(path: Path, step: Step) -> StepSpec:
    commands = step.command if isinstance(step.command, list) else [step.command]
    inputs = []
    for item in step.inputs.values():
        name = str(item.name)
        problem = path_problem(name)
        if problem or "/" in name or name.startswith("."):
            raise RunError(
                f"{path}: step {step.name!r}: input name {name!r} cannot name a directory "
                f"({problem or 'a single name not starting with . is needed'})",
                path=str(path),
            )
        filename = str(item.filename) if item.filename else None
        if filename is not None and (path_problem(filename) or "/" in filename):
            raise RunError(
                f"{path}: step {step.name!r}: input {name!r} has filename {filename!r}, "
                "which is not a plain file name",
                path=str(path),
            )
        raw_defaults = item.default if isinstance(item.default, list) else [item.default]
        inputs.append(
            InputSpec(
                name=name,
                defaults=tuple(str(d) for d in raw_defaults if d),
                optional=bool(item.optional),
                filename=filename,
                keep_directories=item.keep_directories.value,
                on_demand=item.download is DownloadIntent.ON_DEMAND,
            )
        )
    environment = {
        str(name): str(var.default)
        for name, var in step.environment_variables.items()
        if var.default is not None
    }
    return StepSpec(
        name=str(step.name),
        image=str(step.image),
        commands=tuple(str(c) for c in commands),
        inputs=tuple(inputs),
        environment=environment,
        parameters=tuple(step.parameters),
        file=path,
        source=step,
    )


def _steps_phrase(names: Sequence[str]) -> str:
    if not names:
        return "the file defines no steps"
    return f"steps in the file: {', '.join(names)}"


def _raw_step_names(data: Any) -> list[str]:
    """Step names of a file that failed validation, as far as they can be read."""
    if not isinstance(data, list):
        return []
    names = []
    for item in data:
        step = item.get("step") if isinstance(item, dict) else None
        if isinstance(step, dict) and isinstance(step.get("name"), str):
            names.append(step["name"])
    return names


def _yaml_where(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    return f", line {mark.line + 1}" if mark is not None else ""


def _yaml_problem(exc: yaml.YAMLError) -> str:
    problem = getattr(exc, "problem", None)
    return str(problem) if problem else str(exc).splitlines()[0]


def _schema_problem(exc: ValidationErrors, data: Any) -> str:
    # Schema errors are jsonschema errors; the deepest one that is not a vague
    # "oneOf"/"anyOf" summary names the offending key best.
    schema_errors = [e for e in exc.errors if hasattr(e, "absolute_path")]
    if not schema_errors:
        return str(exc)
    best: Any = min(
        schema_errors,
        key=lambda e: (getattr(e, "validator", "") in ("oneOf", "anyOf"), -len(e.absolute_path)),
    )
    parts = list(best.absolute_path)
    where = ""
    if len(parts) >= 2 and isinstance(parts[0], int) and isinstance(data, list):
        item = data[parts[0]]
        kind = parts[1]
        body = item.get(kind) if isinstance(item, dict) else None
        label = body.get("name") if isinstance(body, dict) else None
        where = f"{kind} {label!r}" if isinstance(label, str) else f"item {parts[0] + 1}"
        rest = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts[2:])
        where = f"{where}{': ' + rest.lstrip('.') if rest else ''}: "
    message = str(best.message)
    if len(message) > 200:
        message = message[:197] + "..."
    return f"{where}{message}"
