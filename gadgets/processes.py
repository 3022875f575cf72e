"""Child processes of the server and its tools: how they are ended."""

from __future__ import annotations

import subprocess

__all__ = ["reap"]


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
