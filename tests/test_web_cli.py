"""``dspkg serve`` as a user starts it: the bind rule, a real server, one-line errors."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx

from tests.helpers import assert_one_line_error, free_port, run_cli, write_outputs


def store_env(tmp_path: Path) -> dict[str, str]:
    env = {"DSPKG_STORE": f"file://{tmp_path / 'store'}", "DSPKG_CACHE": str(tmp_path / "c")}
    write_outputs(tmp_path / "o", {"a.txt": b"alpha"}, ["dataset://d/v1"])
    assert run_cli(["publish", str(tmp_path / "o")], env).returncode == 0
    return env


def start_serve(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    full = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/root"), **env}
    return subprocess.Popen(
        [sys.executable, "-m", "dspkg.cli", "serve", *args],
        env=full,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_until_up(proc: subprocess.Popen[str], url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"dspkg serve exited: {proc.communicate()}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("dspkg serve did not start")


def stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    proc.terminate()
    out, err = proc.communicate(timeout=20)
    return out, err


def test_serve_answers_on_loopback(tmp_path: Path) -> None:
    env = store_env(tmp_path)
    port = free_port()
    proc = start_serve(["--port", str(port)], env)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(proc, base + "/api/datasets")
        doc = httpx.get(base + "/api/datasets").json()
        assert [d["dataset"] for d in doc["datasets"]] == ["d"]
        page = httpx.get(base + "/datasets/d/v1/files/a.txt")
        assert page.status_code == 200 and "alpha" in page.text
    finally:
        out, err = stop(proc)
    assert f"on http://127.0.0.1:{port}/" in out
    assert "Traceback" not in err


def test_serve_with_a_token(tmp_path: Path) -> None:
    env = {**store_env(tmp_path), "DSPKG_SERVE_TOKEN": "from-the-environment"}
    port = free_port()
    proc = start_serve(["--port", str(port)], env)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(proc, base + "/api/datasets")
        assert httpx.get(base + "/api/datasets").status_code == 401
        auth = {"Authorization": "Bearer from-the-environment"}
        assert httpx.get(base + "/api/datasets", headers=auth).status_code == 200
    finally:
        out, _ = stop(proc)
    assert "every request needs the token" in out
    assert "from-the-environment" not in out


def test_serve_refuses_other_hosts_without_a_token(tmp_path: Path) -> None:
    env = {"DSPKG_STORE": f"file://{tmp_path / 'store'}"}
    assert_one_line_error(
        run_cli(["serve", "--host", "0.0.0.0", "--port", "0"], env),
        "--host 0.0.0.0 lets other machines reach the server",
        "--token",
    )
    assert_one_line_error(
        run_cli(["serve", "--token", "x y"], env), "token must be 8-200 characters"
    )


def test_serve_on_a_busy_port_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = run_cli(["serve", "--port", str(port)], {"DSPKG_STORE": str(tmp_path / "s")})
    assert_one_line_error(result, f"cannot listen on 127.0.0.1:{port}", "choose another --port")


def test_serve_without_the_web_extra_says_what_to_install(tmp_path: Path) -> None:
    # A stand-in that makes `import starlette` fail as it does when it is not installed.
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "starlette.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'starlette'\", name='starlette')\n"
    )
    env = {"DSPKG_STORE": str(tmp_path / "s"), "PYTHONPATH": str(shadow)}
    assert_one_line_error(
        run_cli(["serve"], env), "dspkg serve needs the web extra", "pip install 'dspkg[web]'"
    )
    # The other commands do not need it.
    assert run_cli(["ls"], env).returncode == 0
