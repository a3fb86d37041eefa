"""The ``dspkg run`` subcommand: its parser, registered by :mod:`dspkg.cli`, and its handler."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from dspkg.cli_args import add_store, multi_pairs, pairs_option, progress, store_options

if TYPE_CHECKING:
    from dspkg.runner.step import StepSpec

# The runner (and valohai-yaml under it) loads only when `run` is used, so that it
# adds nothing to the start-up time of the other commands.
_DEFAULT_ROOT = "/valohai"
_SUMMARY_WIDTH = 60


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``run`` to the ``dspkg`` subcommands."""
    p = sub.add_parser(
        "run",
        help="run a valohai.yaml step: inputs pulled, command run, outputs published",
        description="Run a valohai.yaml step as the platform does: inputs appear in "
        "ROOT/inputs/<name>/, the command runs unchanged in the project directory, and what "
        "it writes to ROOT/outputs/ is stored and published as the dataset versions its "
        "metadata names. Exits with the command's status.",
    )
    p.add_argument("step", nargs="?", help="the step to run (see --list)")
    p.add_argument(
        "-f",
        "--file",
        default="valohai.yaml",
        help="the valohai.yaml (default ./valohai.yaml); commands run in its directory",
    )
    p.add_argument("--list", action="store_true", help="list the steps of the file and exit")
    p.add_argument(
        "--input",
        action="append",
        metavar="NAME=URI",
        help="URI for an input instead of its default (repeat for several URIs)",
    )
    p.add_argument(
        "--include",
        action="append",
        metavar="NAME=GLOB",
        help="take only the files of input NAME's dataset versions that match GLOB "
        "(repeatable; the globs of dspkg pull --include)",
    )
    p.add_argument(
        "--exclude",
        action="append",
        metavar="NAME=GLOB",
        help="leave out the files of input NAME's dataset versions that match GLOB",
    )
    p.add_argument(
        "--param",
        action="append",
        metavar="NAME=VALUE",
        help="a parameter value instead of its default (repeat for multiple-value parameters)",
    )
    p.add_argument(
        "--env",
        action="append",
        metavar="KEY=VALUE",
        help="an environment variable for the command (overrides the step's)",
    )
    p.add_argument(
        "--root",
        default=_DEFAULT_ROOT,
        help="where inputs/, outputs/ and config/ live (default /valohai)",
    )
    add_store(p)
    p.set_defaults(handler=_cmd_run, run_parser=p)


def _cmd_run(args: argparse.Namespace) -> int:
    from dspkg.runner.execution import RunRequest, run_step

    parser: argparse.ArgumentParser = args.run_parser
    if args.list:
        if args.step:
            parser.error("give either STEP or --list")
        return _list_steps(Path(args.file))
    if not args.step:
        parser.error("give the STEP to run, or --list to see the steps")
    request = RunRequest(
        step=args.step,
        config=Path(args.file),
        inputs=multi_pairs("--input", args.input, "NAME=URI"),
        parameters=multi_pairs("--param", args.param, "NAME=VALUE"),
        env=pairs_option("--env", args.env),
        root=Path(args.root),
        store=args.store,
        store_options=store_options(args.store_option),
        include=multi_pairs("--include", args.include, "NAME=GLOB"),
        exclude=multi_pairs("--exclude", args.exclude, "NAME=GLOB"),
    )
    result = run_step(request, progress=progress())
    if result.publish_error:
        print(f"dspkg: error: {result.publish_error}", file=sys.stderr, flush=True)
    return result.exit_status


def _list_steps(path: Path) -> int:
    from dspkg.runner.step import load_project

    project = load_project(path)
    print(f"steps in {project.path}:")
    if not project.steps:
        print("  (none)")
    width = max((len(name) for name in project.steps), default=0)
    for step in project.steps.values():
        print(f"  {step.name:<{width}}  {_summary(step)}")
        pad = " " * (width + 4)
        if step.inputs:
            inputs = ", ".join(
                f"{i.name} ({' '.join(i.defaults)})" if i.defaults else f"{i.name} (no default)"
                for i in step.inputs
            )
            print(f"{pad}inputs: {inputs}")
        if step.parameters:
            print(f"{pad}parameters: {', '.join(step.parameters)}")
    return 0


def _summary(step: StepSpec) -> str:
    text = " && ".join(" ".join(c.split()) for c in step.commands)
    if len(text) > _SUMMARY_WIDTH:
        text = text[: _SUMMARY_WIDTH - 3] + "..."
    return text
