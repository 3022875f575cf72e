"""A phantom named the way the command line names it: ``brain``, ``shepp-logan`` or ``FILE.h5``."""

from __future__ import annotations

from pathlib import Path

from simulator.brain import brain_phantom
from simulator.phantom import Phantom, load_phantom, shepp_logan_phantom

PHANTOM_CHOICES = "brain, shepp-logan or an .h5 phantom file"


def phantom_from_spec(
    spec: str,
    *,
    field_T: float,
    fov_m: float,
    matrix: int,
    slice_thickness_m: float,
    n_slices: int = 1,
    subject: int = 0,
) -> Phantom:
    """The named phantom on the given grid (m) with tissue values at ``field_T`` (T).

    A user's ``.h5`` phantom keeps its own grid; ``subject`` applies to the brain only.
    """
    if spec == "brain":
        return brain_phantom(
            field_T=field_T, fov_m=fov_m, matrix=matrix, slice_thickness_m=slice_thickness_m,
            n_slices=n_slices, subject=subject,
        )  # fmt: skip
    if spec in ("shepp-logan", "shepp_logan"):
        return shepp_logan_phantom(
            matrix=matrix,
            fov_m=fov_m,
            field_T=field_T,
            n_slices=n_slices,
            slice_thickness_m=slice_thickness_m,
        )
    if Path(spec).suffix in (".h5", ".hdf5"):
        return load_phantom(spec)
    raise ValueError(f"--phantom must be {PHANTOM_CHOICES}, got {spec!r}")
