"""A phantom named the way the command line names it: ``brain``, ``shepp-logan`` or ``FILE.h5``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    slice_gap_m: float = 0.0,
) -> Phantom:
    """The named phantom on the given grid (m) with tissue values at ``field_T`` (T).

    Its slices are ``slice_thickness_m + slice_gap_m`` apart, centred on slice n_slices // 2
    (``SliceStack.phantom_offset_m`` moves them onto a sequence's slices). A user's ``.h5``
    phantom keeps its own grid; ``subject`` applies to the brain only.
    """
    if spec == "brain":
        return brain_phantom(
            field_T=field_T, fov_m=fov_m, matrix=matrix, slice_thickness_m=slice_thickness_m,
            n_slices=n_slices, subject=subject, slice_gap_m=slice_gap_m,
        )  # fmt: skip
    if spec in ("shepp-logan", "shepp_logan"):
        # the pattern is extruded: the same in the gap as in the slice
        return shepp_logan_phantom(
            matrix=matrix,
            fov_m=fov_m,
            field_T=field_T,
            n_slices=n_slices,
            slice_thickness_m=slice_thickness_m + slice_gap_m,
        )
    if Path(spec).suffix in (".h5", ".hdf5"):
        return load_phantom(spec)
    raise ValueError(f"--phantom must be {PHANTOM_CHOICES}, got {spec!r}")


@dataclass(frozen=True)
class SliceStack:
    """Where a 2-D sequence excites its slices (its ``SlicePositions`` definition).

    Attributes:
        positions_m: slice centres along z (m), ascending.
        thickness_m: slice thickness (m; the ``SliceThickness`` definition, else the spacing).
    """

    positions_m: tuple[float, ...]
    thickness_m: float

    @property
    def n_slices(self) -> int:
        return len(self.positions_m)

    @property
    def spacing_m(self) -> float:
        """Centre-to-centre distance (m); the thickness for a single slice."""
        return self.positions_m[1] - self.positions_m[0] if self.n_slices > 1 else self.thickness_m

    @property
    def gap_m(self) -> float:
        return max(self.spacing_m - self.thickness_m, 0.0)

    @property
    def phantom_gap_m(self) -> float:
        """The gap to leave between a phantom's slices for this stack: its own for several
        slices (each phantom slice then lies on an excited one), none for a single slice,
        whose neighbours (a margin, tissue moving through the plane) are contiguous tissue."""
        return self.gap_m if self.n_slices > 1 else 0.0

    def phantom_offset_m(self) -> float:
        """The z of ``Phantom.offset_m`` that puts slice ``margin + i`` of a phantom of
        ``n_slices + 2 * margin`` slices ``spacing_m`` apart (centred on its slice N // 2, see
        ``Phantom.positions_m``) at this stack's slice i, for any margin. An even stack's centre
        lies between two slices, half a spacing off the phantom's middle slice."""
        return self.positions_m[0] + (self.n_slices // 2) * self.spacing_m


def stack_placement(seq: Any) -> tuple[float, float]:
    """(gap between a phantom's slices, z of its ``Phantom.offset_m``), both in m, that put
    the slices of a phantom centred on its slice N // 2, with any margin, on the slices ``seq``
    excites (``slice_stack``); (0, 0) for a sequence without ``SlicePositions``."""
    stack = slice_stack(seq)
    return (0.0, 0.0) if stack is None else (stack.phantom_gap_m, stack.phantom_offset_m())


def slice_stack(seq: Any) -> SliceStack | None:
    """The slices a Pulseq sequence excites, from its ``SlicePositions`` definition (None
    without one). Raises ValueError when the slices are not equally spaced: one phantom grid
    cannot then hold them all."""
    defs = getattr(seq, "definitions", {}) or {}
    raw = defs.get("SlicePositions")
    if raw is None:
        return None
    values = [raw] if isinstance(raw, int | float) else list(raw)
    pos = tuple(sorted(float(p) for p in values))
    if not pos or not all(math.isfinite(p) for p in pos):
        raise ValueError(f"SlicePositions must be finite slice centres in m, got {raw!r}")
    steps = [b - a for a, b in zip(pos, pos[1:], strict=False)]
    if steps and (min(steps) <= 0 or max(steps) - min(steps) > 1e-6):
        raise ValueError(
            f"SlicePositions must be distinct and equally spaced for one phantom grid, got {raw!r}"
        )
    thickness = defs.get("SliceThickness")
    if isinstance(thickness, list | tuple):
        thickness = thickness[0] if thickness else None
    thickness_m = float(thickness) if thickness else 0.0
    if not (math.isfinite(thickness_m) and thickness_m > 0):
        thickness_m = steps[0] if steps else 0.005
    return SliceStack(pos, thickness_m)
