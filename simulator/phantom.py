"""Digital phantoms: the :class:`Phantom` container, a Shepp-Logan phantom and the HDF5 format.

Arrays are (z, y, x) float32 torch tensors. Voxel ``i`` along an axis of length ``n`` sits at
``(i - n // 2) * voxel_size`` from isocentre, which is the pixel a centred FFT puts at the image
centre, so a Cartesian reconstruction lands on the phantom's own grid.

HDF5 phantom format (``load_phantom`` / ``save_phantom``): datasets ``PD`` (relative), ``T1``,
``T2`` (s), optional ``T2prime`` (s), ``B0`` (Hz) and ``B1`` (relative), each shaped (z, y, x),
and the root attribute ``voxel_size_mm`` = (dz, dy, dx) in mm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from simulator.tissue import tissue

_MAP_FIELDS = ("pd", "t1", "t2", "t2prime", "b0_hz", "b1")


@dataclass
class Phantom:
    """Tissue property maps of an object to be scanned.

    Attributes:
        pd: proton density, relative (z, y, x) float32.
        t1, t2, t2prime: relaxation times in s (z, y, x); ``t2prime`` is reversible dephasing
            (1/T2* = 1/T2 + 1/T2'), modelled as a Lorentzian spread of isochromat frequencies.
        b0_hz: object-induced off-resonance in Hz (z, y, x), added to the site's B0 map.
        b1: object-induced relative B1+ (z, y, x), multiplied with the site's B1+ map.
        voxel_size_m: (dz, dy, dx) in m.
        brain_mask: bool (z, y, x), where the object is "brain" (for evaluation).
        tissue_maps: fractional tissue maps by name, kept for evaluation (z, y, x).
        name: a label for logs and headers.
        offset_m: (x, y, z) shift of the whole grid from the default centring (m); e.g. half a
            slice spacing in z so that an even number of 2-D slices sits symmetric about
            isocentre as multi-slice sequences place them.
    """

    pd: torch.Tensor
    t1: torch.Tensor
    t2: torch.Tensor
    t2prime: torch.Tensor
    b0_hz: torch.Tensor
    b1: torch.Tensor
    voxel_size_m: tuple[float, float, float]
    brain_mask: torch.Tensor
    tissue_maps: dict[str, torch.Tensor] = field(default_factory=dict)
    name: str = "phantom"
    offset_m: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        shape = tuple(self.pd.shape)
        if len(shape) != 3:
            raise ValueError(f"Phantom.pd must be 3-D (z, y, x); got shape {shape}")
        for name in _MAP_FIELDS:
            value = torch.as_tensor(getattr(self, name), dtype=torch.float32)
            if tuple(value.shape) != shape:
                raise ValueError(f"Phantom.{name} has shape {tuple(value.shape)}; expected {shape} like pd")
            if not torch.isfinite(value).all():
                raise ValueError(f"Phantom.{name} contains NaN or infinite values")
            setattr(self, name, value)
        for name in ("t1", "t2", "t2prime"):
            values = getattr(self, name)[self.pd > 0]
            if values.numel() and bool((values <= 0).any()):
                raise ValueError(f"Phantom.{name} must be > 0 s wherever pd > 0")
        if bool((self.pd < 0).any()):
            raise ValueError("Phantom.pd must be >= 0")
        if len(self.voxel_size_m) != 3 or min(self.voxel_size_m) <= 0:
            raise ValueError(f"Phantom.voxel_size_m must be 3 positive lengths in m; got {self.voxel_size_m}")
        self.voxel_size_m = tuple(float(v) for v in self.voxel_size_m)
        self.brain_mask = torch.as_tensor(self.brain_mask, dtype=torch.bool)
        if tuple(self.brain_mask.shape) != shape:
            raise ValueError(f"Phantom.brain_mask has shape {tuple(self.brain_mask.shape)}; expected {shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """(nz, ny, nx)."""
        return tuple(self.pd.shape)  # type: ignore[return-value]

    def positions_m(self) -> torch.Tensor:
        """Voxel centres (z, y, x, 3) in m; the last axis is (x, y, z), isocentre-centred + offset_m."""
        axes = []
        for n, d in zip(self.shape, self.voxel_size_m, strict=True):
            axes.append((torch.arange(n, dtype=torch.float64) - n // 2) * d)
        zz, yy, xx = torch.meshgrid(*axes, indexing="ij")
        pos = torch.stack([xx, yy, zz], dim=-1) + torch.tensor(self.offset_m, dtype=torch.float64)
        return pos.to(torch.float32)


def _ellipse_mask(shape_yx: tuple[int, int], fov_m: float, e: tuple[float, ...]) -> np.ndarray:
    """Pixels inside one ellipse (cx, cy, a, b, angle_deg), lengths relative to FOV/2."""
    ny, nx = shape_yx
    y = (np.arange(ny) - ny // 2) / (ny / 2)
    x = (np.arange(nx) - nx // 2) / (nx / 2)
    yy, xx = np.meshgrid(y, x, indexing="ij")
    cx, cy, a, b, ang = e
    th = math.radians(ang)
    xr = (xx - cx) * math.cos(th) + (yy - cy) * math.sin(th)
    yr = -(xx - cx) * math.sin(th) + (yy - cy) * math.cos(th)
    return (xr / a) ** 2 + (yr / b) ** 2 <= 1.0


# Ellipses of the modified Shepp-Logan head (Toft's parameters: centre, semi-axes, angle), each
# given a tissue instead of an additive intensity so that contrast depends on the sequence.
_SHEPP_LOGAN = (
    ("fat", (0.0, 0.0, 0.69, 0.92, 0.0)),
    ("wm", (0.0, -0.0184, 0.6624, 0.874, 0.0)),
    ("csf", (0.22, 0.0, 0.11, 0.31, -18.0)),
    ("csf", (-0.22, 0.0, 0.16, 0.41, 18.0)),
    ("gm", (0.0, 0.35, 0.21, 0.25, 0.0)),
    ("lesion", (0.0, 0.1, 0.046, 0.046, 0.0)),
    ("lesion", (0.0, -0.1, 0.046, 0.046, 0.0)),
    ("gm", (-0.08, -0.605, 0.046, 0.023, 0.0)),
    ("gm", (0.0, -0.606, 0.023, 0.023, 0.0)),
    ("gm", (0.06, -0.605, 0.023, 0.046, 0.0)),
)


def _maps_from_fractions(
    fractions: dict[str, np.ndarray], field_T: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mix tissue fractions into PD, T1, T2, T2' maps.

    Rates (1/T) are averaged weighted by each tissue's water (fraction x PD): the fast-exchange
    limit, which keeps one isochromat population per voxel.
    """
    shape = next(iter(fractions.values())).shape
    pd = np.zeros(shape)
    r1 = np.zeros(shape)
    r2 = np.zeros(shape)
    r2p = np.zeros(shape)
    for name, frac in fractions.items():
        t = tissue(name, field_T)
        water = frac * t.pd
        pd += water
        r1 += water / t.t1
        r2 += water / t.t2
        r2p += water / t.t2prime
    safe = np.where(pd > 0, pd, 1.0)
    t1 = np.where(pd > 0, safe / np.where(r1 > 0, r1, 1.0), 1.0)
    t2 = np.where(pd > 0, safe / np.where(r2 > 0, r2, 1.0), 1.0)
    t2p = np.where(pd > 0, safe / np.where(r2p > 0, r2p, 1.0), 1.0)
    return pd, t1, t2, t2p


def phantom_from_fractions(
    fractions: dict[str, np.ndarray],
    field_T: float,
    voxel_size_m: tuple[float, float, float],
    brain_mask: np.ndarray,
    name: str,
) -> Phantom:
    """Build a :class:`Phantom` from tissue fraction maps (z, y, x) at ``field_T`` tesla."""
    pd, t1, t2, t2p = _maps_from_fractions(fractions, field_T)

    def tt(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    return Phantom(
        pd=tt(pd),
        t1=tt(t1),
        t2=tt(t2),
        t2prime=tt(t2p),
        b0_hz=torch.zeros(pd.shape),
        b1=torch.ones(pd.shape),
        voxel_size_m=voxel_size_m,
        brain_mask=torch.from_numpy(np.asarray(brain_mask, dtype=bool)),
        tissue_maps={k: tt(v) for k, v in fractions.items()},
        name=name,
    )


def shepp_logan_phantom(
    matrix: int = 64,
    fov_m: float = 0.22,
    field_T: float = 3.0,
    n_slices: int = 1,
    slice_thickness_m: float = 0.005,
) -> Phantom:
    """A modified Shepp-Logan head whose ellipses are tissues (fat, WM, GM, CSF, lesions).

    Args:
        matrix: in-plane size (matrix x matrix).
        fov_m: in-plane field of view in m; the head spans about 92% of it.
        field_T: field strength that picks the relaxation times.
        n_slices: slices along z (the 2-D pattern is extruded).
        slice_thickness_m: voxel size along z in m.
    Returns:
        Phantom (n_slices, matrix, matrix).
    """
    if not isinstance(matrix, int) or not 8 <= matrix <= 1024:
        raise ValueError(f"matrix={matrix!r} must be an integer in 8..1024")
    if not 0.01 <= fov_m <= 1.0:
        raise ValueError(f"fov_m={fov_m} must be in 0.01..1.0 m")
    if not isinstance(n_slices, int) or n_slices < 1:
        raise ValueError(f"n_slices={n_slices!r} must be a positive integer")
    label = np.full((matrix, matrix), "", dtype=object)
    for name, e in _SHEPP_LOGAN:
        label[_ellipse_mask((matrix, matrix), fov_m, e)] = name
    fractions = {}
    for name in ("fat", "wm", "gm", "csf", "lesion"):
        frac2d = (label == name).astype(np.float64)
        # image y axis points up in the classic figure; flip so row 0 is the bottom
        fractions[name] = np.repeat(frac2d[::-1][None], n_slices, axis=0)
    brain = sum(fractions[k] for k in ("wm", "gm", "csf", "lesion")) > 0
    d = fov_m / matrix
    return phantom_from_fractions(
        fractions, field_T, (slice_thickness_m, d, d), brain, name=f"shepp-logan-{matrix}"
    )


def save_phantom(path: str | Path, phantom: Phantom) -> None:
    """Write ``phantom`` in the documented HDF5 format (see module docstring)."""
    import h5py

    with h5py.File(path, "w") as f:
        for key, attr in (
            ("PD", "pd"),
            ("T1", "t1"),
            ("T2", "t2"),
            ("T2prime", "t2prime"),
            ("B0", "b0_hz"),
            ("B1", "b1"),
        ):
            f.create_dataset(key, data=getattr(phantom, attr).cpu().numpy())
        f.attrs["voxel_size_mm"] = np.asarray(phantom.voxel_size_m) * 1e3


def load_phantom(path: str | Path) -> Phantom:
    """Read a phantom in the documented HDF5 format (see module docstring)."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"phantom file {path} does not exist")
    with h5py.File(path, "r") as f:
        for key in ("PD", "T1", "T2"):
            if key not in f:
                raise ValueError(f"phantom file {path}: dataset '{key}' is missing (PD, T1, T2 are required)")
        if "voxel_size_mm" not in f.attrs:
            raise ValueError(f"phantom file {path}: attribute 'voxel_size_mm' (3 values, mm) is missing")
        vs = np.asarray(f.attrs["voxel_size_mm"], dtype=np.float64).ravel()
        if vs.size != 3 or (vs <= 0).any():
            raise ValueError(
                f"phantom file {path}: voxel_size_mm must be 3 positive values; got {vs.tolist()}"
            )
        pd = np.asarray(f["PD"], dtype=np.float32)
        if pd.ndim != 3:
            raise ValueError(f"phantom file {path}: PD must be 3-D (z, y, x); got shape {pd.shape}")

        def opt(key: str, default: float) -> torch.Tensor:
            if key in f:
                return torch.from_numpy(np.asarray(f[key], dtype=np.float32))
            return torch.full(pd.shape, default, dtype=torch.float32)

        t1 = torch.from_numpy(np.asarray(f["T1"], dtype=np.float32))
        t2 = torch.from_numpy(np.asarray(f["T2"], dtype=np.float32))
        # no T2' given: effectively none (1e3 s), so T2* = T2
        return Phantom(
            pd=torch.from_numpy(pd),
            t1=torch.where(torch.from_numpy(pd) > 0, t1, torch.ones_like(t1)),
            t2=torch.where(torch.from_numpy(pd) > 0, t2, torch.ones_like(t2)),
            t2prime=opt("T2prime", 1e3),
            b0_hz=opt("B0", 0.0),
            b1=opt("B1", 1.0),
            voxel_size_m=tuple(float(v) * 1e-3 for v in vs),
            brain_mask=torch.from_numpy(pd > 0),
            name=path.stem,
        )
