"""Give memory freed by a finished connection back to the operating system (glibc ``malloc_trim``).

Why: each connection runs its chain in short-lived threads; glibc serves them
from several malloc arenas and keeps what they free for reuse instead of
returning it to the kernel, so a long-running server's resident memory
creeps up with the number of connections served even though nothing leaks
(Python-level allocations, traced with ``tracemalloc``, stay flat).  Calling
``malloc_trim(0)`` when a connection has ended returns those pages; it costs
a few milliseconds, off the streaming path.  On other C libraries (musl,
macOS) this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["release_free_memory"]

log = logging.getLogger(__name__)


def _load_trim():  # -> Callable[[int], int] | None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_TRIM = _load_trim()


def release_free_memory() -> bool:
    """Return free heap pages of every malloc arena to the OS; True when glibc did so."""
    if _TRIM is None:
        return False
    try:
        return bool(_TRIM(0))
    except OSError as exc:  # pragma: no cover - defensive: never let housekeeping fail a connection
        log.debug("malloc_trim failed: %s", exc)
        return False
