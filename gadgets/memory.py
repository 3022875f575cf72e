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

__all__ = ["release_free_memory", "keep_large_blocks"]

log = logging.getLogger(__name__)


def _libc_function(name: str, argtypes: list):  # -> ctypes function | None
    """glibc's ``name`` with its argument types, None where the C library has none."""
    try:
        fn = getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None
    fn.argtypes = argtypes
    fn.restype = ctypes.c_int
    return fn


_TRIM = _libc_function("malloc_trim", [ctypes.c_size_t])
_MALLOPT = _libc_function("mallopt", [ctypes.c_int, ctypes.c_int])

#: glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
#: blocks up to this size come from the malloc arenas (and are reused) instead of fresh mmaps
LARGE_BLOCK_BYTES = 64 << 20
#: free memory an arena keeps before it gives some back on its own (the server trims as well)
KEEP_FREE_BYTES = 256 << 20


def keep_large_blocks() -> bool:
    """Serve large blocks (up to :data:`LARGE_BLOCK_BYTES`) from one glibc arena and keep them.

    Call it once at server start, before the chain threads exist. glibc maps every block
    above its mmap threshold fresh from the kernel and unmaps it on free; its dynamic
    threshold only rises *above* the size of a freed block, so the recon's same-sized
    temporaries (an 8 MB slice of 16-coil k-space, its FFT, its shifts) stayed mmapped,
    and each one's pages were faulted in and zeroed again: ``perf`` put 17 % of the
    server's CPU in the kernel's ``clear_page`` during the streaming benchmark (~60,000
    page faults per 335 MB run). A fixed threshold alone halved that; the rest came from
    the per-thread arenas, whose 64 MB heaps are unmapped whenever they empty (every
    connection's stages are new threads). One arena for the whole process (the stages
    allocate large buffers rarely, so its lock is not contended) leaves ~300 faults per
    run. What the arena keeps is given back by :func:`release_free_memory` (when the
    server is idle, and every 30 s while it streams).
    Returns True when glibc took the settings (False elsewhere: musl, macOS).
    """
    if _MALLOPT is None:
        return False
    return all(
        _MALLOPT(param, value) == 1
        for param, value in (
            (_M_ARENA_MAX, 1),
            (_M_MMAP_THRESHOLD, LARGE_BLOCK_BYTES),
            (_M_TRIM_THRESHOLD, KEEP_FREE_BYTES),
        )
    )


def release_free_memory() -> bool:
    """Return free heap pages of every malloc arena to the OS; True when glibc did so."""
    if _TRIM is None:
        return False
    try:
        return bool(_TRIM(0))
    except OSError as exc:  # pragma: no cover - defensive: never let housekeeping fail a connection
        log.debug("malloc_trim failed: %s", exc)
        return False
