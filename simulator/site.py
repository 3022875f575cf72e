"""Virtual scanner sites: field strength, B0/B1+ imperfections, receive array, noise, delays.

A site is a TOML file (``simulator/sites/<name>.toml``, format in docs/simulator.md) loaded into
the :class:`Site` dataclass. Spatial maps are polynomials in u = r / 0.1 m so that a coefficient
is the map's value 10 cm from isocentre along that term (Hz for B0, relative for B1+).
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from simulator.coils import LoopCoil, ring_array, sensitivities

SITES_DIR = Path(__file__).with_name("sites")
#: polynomial terms allowed in ``b0.poly_hz`` and ``b1.poly``
POLY_TERMS = ("x", "y", "z", "x2", "y2", "z2", "xy", "xz", "yz")
#: length that normalises the polynomial coordinates (m)
POLY_REF_M = 0.1
#: dwell time at which ``noise.sigma`` is specified (s); thermal noise variance ~ bandwidth
NOISE_REF_DWELL_S = 10e-6


@dataclass
class Site:
    """A virtual scanner. Lengths in m, times in s, frequencies in Hz.

    ``noise_sigma`` is the RMS of complex thermal noise per sample and channel at a 10 us dwell,
    in the raw-data units in which a voxel of PD 1 and 1 mm^3 at 1 T gives a signal of 1 before
    coil weighting and receiver gain.
    """

    name: str
    field_T: float
    vendor: str = "generic"
    b0_offset_hz: float = 0.0
    b0_poly_hz: dict[str, float] = field(default_factory=dict)
    b1_scale: float = 1.0
    b1_poly: dict[str, float] = field(default_factory=dict)
    n_coils: int = 8
    coil_model: str = "loops"
    coil_ring_radius_m: float = 0.13
    coil_loop_radius_m: float = 0.045
    coil_rings: int = 1
    coil_ring_spacing_m: float = 0.08
    coil_seed: int = 0
    noise_sigma: float = 10.0
    noise_correlation: float = 0.2
    noise_scales: tuple[float, ...] = ()
    receiver_gain: float = 1.0
    gradient_delay_s: tuple[float, float, float] = (0.0, 0.0, 0.0)
    source: str = ""

    def __post_init__(self) -> None:
        where = f"site {self.name}"
        if not 0.05 <= self.field_T <= 14.0:
            raise ValueError(f"{where}: field_T={self.field_T} must be in 0.05..14 T")
        for key in (*self.b0_poly_hz, *self.b1_poly):
            if key not in POLY_TERMS:
                raise ValueError(
                    f"{where}: polynomial term '{key}' is unknown; allowed: {', '.join(POLY_TERMS)}"
                )
        if not 0.1 <= self.b1_scale <= 3.0:
            raise ValueError(f"{where}: b1.scale={self.b1_scale} must be in 0.1..3")
        if not isinstance(self.n_coils, int) or not 1 <= self.n_coils <= 128:
            raise ValueError(f"{where}: coils.n={self.n_coils!r} must be an integer in 1..128")
        if self.coil_model not in ("loops", "uniform"):
            raise ValueError(f"{where}: coils.model='{self.coil_model}' is not allowed; use loops or uniform")
        if not isinstance(self.coil_rings, int) or not 1 <= self.coil_rings <= self.n_coils:
            raise ValueError(f"{where}: coils.rings={self.coil_rings!r} must be an integer in 1..coils.n")
        if not 0.05 <= self.coil_ring_radius_m <= 0.5:
            raise ValueError(f"{where}: coils.ring_radius_m={self.coil_ring_radius_m} must be in 0.05..0.5 m")
        if not 0.005 <= self.coil_loop_radius_m <= 0.2:
            raise ValueError(
                f"{where}: coils.loop_radius_m={self.coil_loop_radius_m} must be in 0.005..0.2 m"
            )
        if not self.noise_sigma >= 0:
            raise ValueError(f"{where}: noise.sigma={self.noise_sigma} must be >= 0")
        if not 0.0 <= self.noise_correlation < 1.0:
            raise ValueError(f"{where}: noise.correlation={self.noise_correlation} must be in [0, 1)")
        self.noise_scales = tuple(float(s) for s in self.noise_scales)
        if self.noise_scales and (len(self.noise_scales) != self.n_coils or min(self.noise_scales) <= 0):
            raise ValueError(f"{where}: noise.scales must list {self.n_coils} positive values (one per coil)")
        if not self.receiver_gain > 0:
            raise ValueError(f"{where}: receiver.gain={self.receiver_gain} must be > 0")
        delay = self.gradient_delay_s
        if isinstance(delay, int | float):
            delay = (float(delay),) * 3
        if len(delay) != 3 or max(abs(float(d)) for d in delay) > 1e-4:
            raise ValueError(
                f"{where}: gradients.delay_s must be one or 3 values within +-100 us; got {delay}"
            )
        self.gradient_delay_s = tuple(float(d) for d in delay)  # type: ignore[assignment]

    # -- spatial maps -------------------------------------------------------------------------
    @staticmethod
    def _poly(coeffs: dict[str, float], points: torch.Tensor) -> torch.Tensor:
        u = points.to(torch.float64) / POLY_REF_M
        x, y, z = u[..., 0], u[..., 1], u[..., 2]
        terms = {"x": x, "y": y, "z": z, "x2": x * x, "y2": y * y, "z2": z * z,
                 "xy": x * y, "xz": x * z, "yz": y * z}  # fmt: skip
        out = torch.zeros_like(x)
        for key, c in coeffs.items():
            out = out + float(c) * terms[key]
        return out

    def b0_map(self, points: torch.Tensor) -> torch.Tensor:
        """Off-resonance (Hz) at ``points`` (..., 3) m: offset + polynomial."""
        return (self.b0_offset_hz + self._poly(self.b0_poly_hz, points)).to(torch.float32)

    def b1_map(self, points: torch.Tensor) -> torch.Tensor:
        """Relative B1+ at ``points`` (..., 3) m: scale * (1 + polynomial), floored at 0.05."""
        return (self.b1_scale * (1.0 + self._poly(self.b1_poly, points))).clamp_min(0.05).to(torch.float32)

    def coils(self) -> list[LoopCoil]:
        """The receive loops of this site."""
        return ring_array(
            self.n_coils,
            self.coil_ring_radius_m,
            self.coil_loop_radius_m,
            self.coil_rings,
            self.coil_ring_spacing_m,
            self.coil_seed,
        )

    def coil_sensitivities(self, points: torch.Tensor) -> torch.Tensor:
        """Complex receive sensitivities (C, N) at ``points`` (N, 3) m.

        ``loops``: Biot-Savart loops (RSS 1 at isocentre); ``uniform``: an idealised homogeneous
        receiver, every channel 1/sqrt(C) everywhere (for closed-form checks).
        """
        if self.coil_model == "uniform":
            n = points.shape[0]
            return torch.full((self.n_coils, n), 1.0 / math.sqrt(self.n_coils), dtype=torch.complex64)
        return sensitivities(self.coils(), points)

    def noise_covariance(self) -> np.ndarray:
        """Coil noise covariance (C, C) complex128 at the reference dwell.

        Correlation decays with coil distance as ``rho ** (d / d_nn)`` (d_nn: nearest-neighbour
        spacing); an exponential kernel of distance is positive definite, so any rho < 1 is valid.
        """
        centres = np.array([c.centre for c in self.coils()])
        d = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
        if self.n_coils > 1:
            d_nn = np.min(d + np.eye(self.n_coils) * 1e9)
            corr = (
                self.noise_correlation ** (d / d_nn) if self.noise_correlation > 0 else np.eye(self.n_coils)
            )
        else:
            corr = np.ones((1, 1))
        scales = np.asarray(self.noise_scales or (1.0,) * self.n_coils)
        return (self.noise_sigma**2 * corr * np.outer(scales, scales)).astype(np.complex128)

    @property
    def larmor_hz(self) -> float:
        """Proton Larmor frequency (Hz) at this field."""
        return GAMMA_BAR_HZ_PER_T * self.field_T


#: proton gyromagnetic ratio / 2 pi (Hz/T), CODATA 2018
GAMMA_BAR_HZ_PER_T = 42.577478518e6

_SCHEMA: dict[str, dict[str, str]] = {
    "": {"name": "name", "vendor": "vendor", "field_T": "field_T"},
    "b0": {"offset_hz": "b0_offset_hz", "poly_hz": "b0_poly_hz"},
    "b1": {"scale": "b1_scale", "poly": "b1_poly"},
    "coils": {
        "n": "n_coils",
        "model": "coil_model",
        "ring_radius_m": "coil_ring_radius_m",
        "loop_radius_m": "coil_loop_radius_m",
        "rings": "coil_rings",
        "ring_spacing_m": "coil_ring_spacing_m",
        "seed": "coil_seed",
    },
    "noise": {"sigma": "noise_sigma", "correlation": "noise_correlation", "scales": "noise_scales"},
    "receiver": {"gain": "receiver_gain"},
    "gradients": {"delay_s": "gradient_delay_s"},
}


def list_sites() -> list[str]:
    """Names of the sites shipped in ``simulator/sites``."""
    return sorted(p.stem for p in SITES_DIR.glob("*.toml"))


def load_site(name_or_path: str | Path) -> Site:
    """Load a shipped site by name (``siteA``) or a site TOML file by path."""
    if isinstance(name_or_path, Site):
        return name_or_path
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = SITES_DIR / f"{name_or_path}.toml"
        if not path.is_file():
            raise ValueError(f"site '{name_or_path}' is unknown; shipped sites: {', '.join(list_sites())}")
    if not path.is_file():
        raise FileNotFoundError(f"site file {path} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"site file {path} is not valid TOML: {exc}") from exc
    kwargs: dict[str, object] = {}
    for table, keys in _SCHEMA.items():
        section = data if table == "" else data.get(table, {})
        if not isinstance(section, dict):
            raise ValueError(f"site file {path}: [{table}] must be a table")
        for key, value in section.items():
            if table == "" and isinstance(value, dict):
                if key not in _SCHEMA:
                    raise ValueError(f"site file {path}: table [{key}] is unknown; allowed: "
                                     f"{', '.join(k for k in _SCHEMA if k)}")  # fmt: skip
                continue
            if key not in keys:
                label = f"{table}.{key}" if table else key
                raise ValueError(f"site file {path}: key '{label}' is unknown; allowed in "
                                 f"[{table or 'top level'}]: {', '.join(keys)}")  # fmt: skip
            kwargs[keys[key]] = value
    kwargs.setdefault("name", path.stem)
    if "field_T" not in kwargs:
        raise ValueError(f"site file {path}: 'field_T' (tesla) is required")
    for key in ("n_coils", "coil_rings", "coil_seed"):
        if key in kwargs and not isinstance(kwargs[key], int):
            raise ValueError(f"site file {path}: {key} must be an integer; got {kwargs[key]!r}")
    try:
        site = Site(**kwargs, source=str(path))  # type: ignore[arg-type]
    except TypeError as exc:
        raise ValueError(f"site file {path}: {exc}") from exc
    if not math.isfinite(site.field_T):
        raise ValueError(f"site file {path}: field_T must be finite")
    return site
