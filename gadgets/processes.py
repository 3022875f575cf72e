"""Child processes of the server and its tools: starting ``unisono serve`` and ending children."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["reap", "start_serve"]

_LISTEN = re.compile(r"listening on [^\s:]+:(\d+)")


def start_serve(
    *args: str,
    raw_dir: Path | None = None,
    stderr: int | None = subprocess.DEVNULL,
    start_new_session: bool = False,
    timeout_s: float = 120.0,
) -> tuple[subprocess.Popen, int]:
    """Start ``unisono serve --port 0`` in a child process; return it and the port it bound.

    Args:
        args: further ``unisono serve`` options (``--device cpu``, ``--shutdown-grace 30``...).
        raw_dir: ``--raw-dir``; None records nothing (``--no-raw``).
        stderr: where the server's log goes (``subprocess.PIPE`` to read it; the caller must
            then keep reading it, or the server blocks once the pipe is full).
        start_new_session: detach the child from the caller's signals (Ctrl-C of a benchmark).
        timeout_s: how long to wait for the "listening on" line.
    Raises:
        RuntimeError: the server did not start (with the end of its log when piped).
    """
    cmd = [sys.executable, "-m", "unisono", "serve", "--port", "0", *args]
    cmd += ["--raw-dir", str(raw_dir)] if raw_dir is not None else ["--no-raw"]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env, start_new_session=start_new_session
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        m = _LISTEN.search(line)
        if m:
            return proc, int(m.group(1))
    proc.kill()
    err = proc.stderr.read() if proc.stderr else ""
    proc.wait()
    raise RuntimeError(f"unisono serve did not start: {err[-2000:]}")


def reap(proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    """Wait for ``proc`` (already asked to stop) up to ``timeout_s``, then kill it; close its stdout.

    A child that ignores the request must not keep the caller waiting forever, nor leave a
    zombie or an open pipe behind.
    """
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()
