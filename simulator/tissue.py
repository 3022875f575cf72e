"""Relaxation and proton-density values of brain tissues against field strength.

Values are literature means for healthy adult brain (sources in docs/simulator.md):
T1 and T2 at 1.5 T and 3 T, T2' (reversible dephasing) from T2* measurements, PD as
water content relative to CSF. Between and beyond the two anchor fields T1 and T2 are
interpolated linearly in B0 (clamped outside 1.5-3 T, where the model is not validated)
and T2' scales as 1/B0, because susceptibility gradients scale with the field.
"""

from __future__ import annotations

from dataclasses import dataclass

#: field strengths (T) the tabulated values were measured at
ANCHOR_FIELDS_T = (1.5, 3.0)


@dataclass(frozen=True)
class Tissue:
    """One tissue's MR parameters at one field strength (times in s, PD relative to CSF=1)."""

    name: str
    pd: float
    t1: float
    t2: float
    t2prime: float


# (pd, (t1@1.5T, t1@3T), (t2@1.5T, t2@3T), t2prime@3T)
_TABLE: dict[str, tuple[float, tuple[float, float], tuple[float, float], float]] = {
    "wm": (0.69, (0.60, 0.83), (0.080, 0.070), 0.16),
    "gm": (0.80, (0.95, 1.33), (0.100, 0.090), 0.20),
    "csf": (1.00, (4.00, 4.20), (2.000, 1.800), 0.30),
    # Shepp-Logan extras: a fat-like scalp and a short-T2 lesion
    "fat": (0.90, (0.26, 0.37), (0.080, 0.070), 0.05),
    "lesion": (0.85, (1.20, 1.60), (0.140, 0.120), 0.20),
}

TISSUES = tuple(_TABLE)


def tissue(name: str, field_T: float) -> Tissue:
    """Return the parameters of tissue ``name`` (one of :data:`TISSUES`) at ``field_T`` tesla."""
    if name not in _TABLE:
        raise ValueError(f"tissue '{name}' is unknown; allowed: {', '.join(TISSUES)}")
    if not 0.05 <= field_T <= 14.0:
        raise ValueError(f"field_T={field_T} T is outside the allowed range 0.05-14 T")
    pd, (t1a, t1b), (t2a, t2b), t2p_3t = _TABLE[name]
    lo, hi = ANCHOR_FIELDS_T
    w = min(max((field_T - lo) / (hi - lo), 0.0), 1.0)
    return Tissue(
        name=name,
        pd=pd,
        t1=t1a + w * (t1b - t1a),
        t2=t2a + w * (t2b - t2a),
        t2prime=t2p_3t * 3.0 / field_T,
    )
