"""The spin ensemble: isochromats placed inside each phantom voxel with their properties.

Each voxel with PD > 0 gets ``isochromats_per_voxel`` isochromats. They are stratified through
the voxel along z (so a slice-selective pulse sees a real profile across the slice) and drawn
on a regular in-plane grid (so gradient spoiling dephases inside the voxel).
T2' is modelled by giving the isochromats of a voxel the quantiles of a Lorentzian frequency
distribution of half width 1/(2 pi T2'), assigned to the sub-positions in a seeded random order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from simulator.phantom import Phantom
from simulator.site import Site



@dataclass
class Spins:
    """Isochromat properties, N spins on one device.

    Attributes:
        voxel_pos: (N, 3) float64, the isochromat's rest position in the phantom (m, xyz).
        pos: (N, 3) float32, current position in scanner coordinates (m); changes with motion.
        m0: (N,) float32, equilibrium magnetisation in signal units (PD x B0 x voxel volume / n).
        r1, r2: (N,) float32 relaxation rates (1/s).
        df_tissue: (N,) float32, object off-resonance + the T2' Lorentzian offset (Hz).
        b1_object: (N,) float32 relative B1+ from the object.
        voxel_index: (N,) int64 flat index of the voxel each isochromat belongs to.
    """

    voxel_pos: torch.Tensor
    pos: torch.Tensor
    m0: torch.Tensor
    r1: torch.Tensor
    r2: torch.Tensor
    df_tissue: torch.Tensor
    b1_object: torch.Tensor
    voxel_index: torch.Tensor

    @property
    def n(self) -> int:
        """Number of isochromats."""
        return int(self.m0.shape[0])


def build_spins(phantom: Phantom, site: Site, isochromats_per_voxel: int = 4, seed: int = 0) -> Spins:
    """Place isochromats in every voxel of ``phantom`` with PD > 0 (on the CPU; move with ``to``)."""
    n = isochromats_per_voxel
    if not isinstance(n, int) or not 1 <= n <= 100000:
        raise ValueError(f"isochromats_per_voxel={n!r} must be an integer in 1..100000")
    pd = phantom.pd.reshape(-1)
    keep = torch.nonzero(pd > 0).squeeze(1)
    if keep.numel() == 0:
        raise ValueError(f"phantom {phantom.name} has no voxel with PD > 0: nothing to simulate")
    centres = phantom.positions_m().reshape(-1, 3).to(torch.float64)[keep]  # (V, 3)
    dz, dy, dx = phantom.voxel_size_m
    v = keep.numel()
    gen = torch.Generator().manual_seed(seed)
    j = torch.arange(n, dtype=torch.float64)
    # In-plane: a centred regular g x g grid (g = floor(sqrt(n))), the same in every voxel, so
    # the voxel's k-space response is a fixed smooth apodisation instead of random per-voxel
    # error. Along z: stratified with a fresh random jitter per voxel, so the residual of
    # incomplete gradient spoiling with few isochromats is incoherent between voxels.
    g = max(1, math.isqrt(n))
    cell = (torch.arange(g, dtype=torch.float64) + 0.5) / g - 0.5
    gx = cell[(j.long() % (g * g)) % g]
    gy = cell[(j.long() % (g * g)) // g]
    u = torch.rand(v, n, generator=gen, dtype=torch.float64)
    strat = (j[None, :] + u) / n - 0.5 if n > 1 else torch.zeros(v, 1, dtype=torch.float64)
    sub = torch.stack([gx[None, :].expand(v, n), gy[None, :].expand(v, n), strat], dim=-1)
    sub = sub * torch.tensor([dx, dy, dz], dtype=torch.float64)  # (V, n, 3)
    voxel_pos = (centres[:, None, :] + sub).reshape(-1, 3)
    # Lorentzian (Cauchy) quantiles; their order is shuffled per voxel so frequency is not tied
    # to the z position of the isochromat
    q = torch.tan(math.pi * ((j + 0.5) / n - 0.5)) if n > 1 else torch.zeros(1, dtype=torch.float64)
    order = torch.argsort(torch.rand(v, n, generator=gen), dim=1)
    lorentz = q[order]  # (V, n)
    t2p = phantom.t2prime.reshape(-1)[keep].to(torch.float64)
    df = phantom.b0_hz.reshape(-1)[keep].to(torch.float64)[:, None] + lorentz / (2 * math.pi * t2p[:, None])
    vol_mm3 = dz * dy * dx * 1e9
    m0 = pd[keep].to(torch.float64) * site.field_T * vol_mm3 / n

    def rep(t: torch.Tensor) -> torch.Tensor:
        return t[:, None].expand(v, n).reshape(-1)

    return Spins(
        voxel_pos=voxel_pos,
        pos=voxel_pos.to(torch.float32),
        m0=rep(m0).to(torch.float32),
        r1=rep(1.0 / phantom.t1.reshape(-1)[keep]).to(torch.float32),
        r2=rep(1.0 / phantom.t2.reshape(-1)[keep]).to(torch.float32),
        df_tissue=df.reshape(-1).to(torch.float32),
        b1_object=rep(phantom.b1.reshape(-1)[keep]).to(torch.float32),
        voxel_index=rep(keep),
    )
