"""Units that protocol and system TOML files may use, and their conversion to SI.

Physicists write protocols in the units they read on a console (mm, ms, deg,
mT/m); the builders work in SI only (m, s, rad, T/m). This table is the single
place where the two meet, so a unit typo fails loudly instead of silently
scaling a parameter by 1000.
"""

from __future__ import annotations

import math

#: unit as written in TOML -> (SI unit, factor that multiplies the value into SI)
UNITS: dict[str, tuple[str, float]] = {
    "1": ("1", 1.0),  # dimensionless counts and factors
    "m": ("m", 1.0),
    "cm": ("m", 1e-2),
    "mm": ("m", 1e-3),
    "s": ("s", 1.0),
    "ms": ("s", 1e-3),
    "us": ("s", 1e-6),
    "rad": ("rad", 1.0),
    "deg": ("rad", math.pi / 180.0),
    "T": ("T", 1.0),
    "mT/m": ("T/m", 1e-3),
    "T/m": ("T/m", 1.0),
    "T/m/s": ("T/m/s", 1.0),
    "1/m": ("1/m", 1.0),  # k-space radii
    "Hz": ("Hz", 1.0),
    "kHz": ("Hz", 1e3),
    "Hz/px": ("Hz/px", 1.0),
    "Hz/T": ("Hz/T", 1.0),
    "MHz/T": ("Hz/T", 1e6),
    "s/mm^2": ("s/m^2", 1e6),
}


def to_si(value: float, unit: str, *, field: str = "value") -> float:
    """Convert ``value`` given in ``unit`` to SI.

    Raises ``ValueError`` naming ``field`` when the unit is unknown.
    """
    if unit not in UNITS:
        raise ValueError(f"{field}: unknown unit {unit!r}; allowed units are {', '.join(sorted(UNITS))}.")
    return float(value) * UNITS[unit][1]


def from_si(value: float, unit: str) -> float:
    """Convert an SI ``value`` back into ``unit`` (inverse of :func:`to_si`)."""
    return float(value) / UNITS[unit][1]
