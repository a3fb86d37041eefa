"""scripts/sysdeps.sh (`make sysdeps`) asks apt for exactly the packages of the missing tools.

The script runs in dry-run mode against a PATH built here, holding only the tools a
test wants found, so each case is a machine the project may meet: Node.js from its own
packages with npm inside (where asking apt for npm fails with ``nodejs : Conflicts:
npm``), Debian's Node.js without npm, no Node.js at all, a bare machine. The script looks
tools up by name only, so the tools here are small executables with the right names;
``ldconfig`` prints the linker cache the case needs.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts/sysdeps.sh"
ALL_TOOLS = ("unzip", "zip", "mkfs.xfs", "fusermount3", "chromium", "node", "npm")
LIBFUSE = "\tlibfuse3.so.3 (libc6,x86-64) => /lib/x86_64-linux-gnu/libfuse3.so.3\n"
LIBATOMIC = "\tlibatomic.so.1 (libc6,x86-64) => /lib/x86_64-linux-gnu/libatomic.so.1\n"


def _machine(root: Path, tools: tuple[str, ...], *, libfuse: bool, libatomic: bool = True) -> Path:
    """A PATH directory with ``tools`` and an ``ldconfig`` that lists the libraries."""
    bin_dir = root / "bin"
    bin_dir.mkdir()
    for tool in tools:
        _executable(bin_dir / tool, "#!/bin/sh\nexit 0\n")
    cache = (LIBFUSE if libfuse else "") + (LIBATOMIC if libatomic else "")
    _executable(bin_dir / "ldconfig", f"#!/bin/sh\nprintf '2 libs found in cache\\n{cache}'\n")
    return bin_dir


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


def _dry_run(path: Path) -> list[str]:
    """The packages the script would install with ``path`` as PATH ([] when it would not)."""
    result = subprocess.run(
        ["/bin/bash", str(SCRIPT), "--dry-run"],
        env={"PATH": str(path)},
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    if not lines:
        return []
    update, install = lines
    assert update == "apt-get update -q"
    prefix = "apt-get install -y -q "
    assert install.startswith(prefix), install
    return install.removeprefix(prefix).split()


def _without(*names: str) -> tuple[str, ...]:
    return tuple(t for t in ALL_TOOLS if t not in names)


@pytest.mark.parametrize(
    ("tools", "libfuse", "packages"),
    [
        # The machine of the bug: nodesource's Node.js (npm inside), no mkfs.xfs.
        (_without("mkfs.xfs"), True, ["xfsprogs"]),
        # Debian's Node.js without npm: npm alone, never nodejs again.
        (_without("npm"), True, ["npm"]),
        # No Node.js at all: both.
        (_without("node", "npm"), True, ["nodejs", "npm"]),
        # npm alone on PATH counts as Node.js being there.
        (_without("node"), True, []),
        (_without("fusermount3"), False, ["fuse3", "libfuse3-3"]),
        (ALL_TOOLS, False, ["libfuse3-3"]),
        (_without("chromium", "unzip"), True, ["unzip", "chromium"]),
        (ALL_TOOLS, True, []),
    ],
)
def test_asks_apt_only_for_what_is_missing(
    tmp_path: Path, tools: tuple[str, ...], libfuse: bool, packages: list[str]
) -> None:
    assert _dry_run(_machine(tmp_path, tools, libfuse=libfuse)) == packages


def test_a_bare_machine_gets_everything(tmp_path: Path) -> None:
    # A minimal Debian (debootstrap --variant=minbase): no tools, no gcc, so no libatomic.
    assert _dry_run(_machine(tmp_path, (), libfuse=False, libatomic=False)) == [
        "unzip",
        "zip",
        "xfsprogs",
        "fuse3",
        "chromium",
        "libfuse3-3",
        "libatomic1",
        "nodejs",
        "npm",
    ]


def test_never_asks_for_npm_or_nodejs_while_npm_is_there(tmp_path: Path) -> None:
    # Every subset of the other tools: npm present means neither package, whatever else.
    others = [t for t in ALL_TOOLS if t not in ("node", "npm")]
    for mask in range(1 << len(others)):
        case = tmp_path / str(mask)
        case.mkdir()
        tools = (*(t for i, t in enumerate(others) if mask >> i & 1), "npm")
        asked = _dry_run(_machine(case, tools, libfuse=bool(mask & 1)))
        assert "npm" not in asked and "nodejs" not in asked, (tools, asked)
        assert len(asked) == len(others) - (len(tools) - 1) + (not mask & 1), (tools, asked)


def test_without_apt_it_names_what_to_install(tmp_path: Path) -> None:
    result = subprocess.run(
        ["/bin/bash", str(SCRIPT)],
        env={"PATH": str(_machine(tmp_path, _without("zip"), libfuse=True))},
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.returncode == 1
    assert "no apt-get here; install the packages for: zip" in result.stderr


def test_refuses_unknown_arguments() -> None:
    result = subprocess.run(
        ["/bin/bash", str(SCRIPT), "--yes"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert "usage:" in result.stderr
