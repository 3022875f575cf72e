"""BART interop: ``.cfl``/``.hdr`` files and running the ``bart`` command (reference recons).

BART stores complex64 arrays in Fortran (column-major) order with the
dimensions listed on the second line of the ``.hdr`` file; its first
dimension is the readout (x), then y, z, coil.  A C-order numpy array
shaped (…, coil, z, y, x) therefore has exactly the bytes of the BART array
with dims (x, y, z, coil, …): writing reverses the shape, reading reverses it
back, and no transpose is needed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

__all__ = ["write_cfl", "read_cfl", "run_bart", "bart_available"]


def _base(path: str | Path) -> Path:
    p = Path(path)
    return p.with_suffix("") if p.suffix in (".cfl", ".hdr") else p


def write_cfl(path: str | Path, array: np.ndarray) -> None:
    """Write a C-order array shaped (…, z, y, x) as BART dims (x, y, z, …)."""
    base = _base(path)
    arr = np.ascontiguousarray(array, dtype=np.complex64)
    dims = list(reversed(arr.shape)) or [1]
    base.with_suffix(".hdr").write_text("# Dimensions\n" + " ".join(str(d) for d in dims) + "\n")
    arr.tofile(base.with_suffix(".cfl"))


def read_cfl(path: str | Path) -> np.ndarray:
    """Read a BART array as a C-order array with reversed dims (trailing singleton BART dims dropped)."""
    base = _base(path)
    lines = base.with_suffix(".hdr").read_text().splitlines()
    dims = [int(d) for d in lines[1].split()]
    while len(dims) > 1 and dims[-1] == 1:
        dims.pop()
    data = np.fromfile(base.with_suffix(".cfl"), dtype=np.complex64)
    return data.reshape(tuple(reversed(dims)))


def bart_available() -> bool:
    """True when the ``bart`` executable is on PATH."""
    return shutil.which("bart") is not None


def run_bart(*args: str, cwd: str | Path | None = None, threads: int = 1) -> str:
    """Run ``bart ARGS`` single-threaded (OMP_NUM_THREADS) and return its stdout.

    Raises:
        RuntimeError: with BART's stderr when it fails.
    """
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    res = subprocess.run(["bart", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"bart {' '.join(args)} failed: {res.stderr.strip()}")
    return res.stdout
