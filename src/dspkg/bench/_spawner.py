"""A tiny process that starts the measured commands, so their peak RSS is their own.

Linux counts the memory of the process that calls exec into the new program's
``ru_maxrss`` (exec records the old address space's high-water mark), so a command
spawned straight from the benchmark would report at least the benchmark's own RSS. This
script runs as a separate small interpreter (``python -I -S``: no site, nothing
imported beyond the standard library) and forks each command from there, so the
inherited part is only this process's few MB.

Protocol, one JSON object per line: a request on stdin
``{"argv": [...], "env": {...}, "cwd": str|null, "stdout": path, "stderr": path}``;
replies on stdout ``{"pid": n}`` once started, then
``{"seconds", "status", "maxrss", "utime", "stime"}`` when it exited, or
``{"error": "..."}`` when it could not start.

Run directly as a script, never imported by dspkg.
"""

import json
import os
import signal
import sys
import time
from typing import Any


def _child(request: dict[str, Any]) -> None:
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if request["cwd"]:
            os.chdir(request["cwd"])
        stdin = os.open(os.devnull, os.O_RDONLY)
        out = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        err = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(stdin, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.execvpe(request["argv"][0], request["argv"], request["env"])
    except BaseException as exc:
        os.write(2, f"cannot run {request['argv'][0]}: {exc}\n".encode())
    os._exit(127)


def _reply(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


def main() -> None:
    # Ctrl-C reaches the whole process group: the measured command stops, the benchmark
    # cleans up and closes this process; a traceback from here would only be noise.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for line in sys.stdin:
        request = json.loads(line)
        started = time.perf_counter()
        try:
            pid = os.fork()
        except OSError as exc:
            _reply({"error": str(exc)})
            continue
        if pid == 0:
            _child(request)
        _reply({"pid": pid})
        _, status, usage = os.wait4(pid, 0)
        seconds = time.perf_counter() - started
        _reply(
            {
                "seconds": seconds,
                "status": status,
                "maxrss": usage.ru_maxrss,
                "utime": usage.ru_utime,
                "stime": usage.ru_stime,
            }
        )


if __name__ == "__main__":
    main()
