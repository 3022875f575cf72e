"""The spin ensemble: isochromats placed inside each phantom voxel with their properties.

Each voxel with PD > 0 gets ``isochromats_per_voxel`` isochromats on a regular in-plane grid of
sub-positions; each isochromat is carried by ``spins_per_isochromat`` spins stratified through
the voxel along z (slice profiles, through-plane spoiling). T2' is modelled by giving the
isochromats of a voxel the quantiles of a Lorentzian frequency distribution of half width
1/(2 pi T2'), assigned in a seeded random order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from simulator.phantom import Phantom
from simulator.site import Site


@dataclass
class Spins:
    """Isochromats of a phantom, G = voxels x isochromats_per_voxel, each carried by m spins.

    An isochromat has one in-plane sub-voxel position and one frequency (tissue off-resonance
    plus its Lorentzian T2' offset). Its magnetisation is carried by ``m`` spins stratified
    through the voxel along z, which is what slice profiles and gradient spoiling need. The
    spins of an isochromat differ only in z, so when a readout has no k_z they can be summed
    before the (expensive) signal computation. Spins are ordered isochromat-major: spin
    ``g * m + s`` belongs to isochromat ``g``.

    Attributes:
        m: spins per isochromat.
        voxel_pos: (N, 3) float64 spin rest positions in the phantom (m, xyz).
        group_pos: (G, 3) float64 isochromat rest positions (in-plane sub-position, voxel-centre z).
        m0: (G,) float32 equilibrium magnetisation of an isochromat in signal units
            (PD x B0 x voxel volume in mm^3 / isochromats_per_voxel).
        r1, r2: (G,) float32 relaxation rates (1/s).
        df_tissue: (G,) float32 object off-resonance + the Lorentzian T2' offset (Hz).
        b1_object: (G,) float32 relative B1+ from the object.
        voxel_index: (G,) int64 flat phantom voxel index of each isochromat.
        spread_m: half extent (m) of the spins of an isochromat along z.
    """

    m: int
    voxel_pos: torch.Tensor
    group_pos: torch.Tensor
    m0: torch.Tensor
    r1: torch.Tensor
    r2: torch.Tensor
    df_tissue: torch.Tensor
    b1_object: torch.Tensor
    voxel_index: torch.Tensor
    spread_m: float

    @property
    def n(self) -> int:
        """Number of spins N = G * m."""
        return int(self.voxel_pos.shape[0])

    @property
    def n_groups(self) -> int:
        """Number of isochromats G."""
        return int(self.group_pos.shape[0])

    def per_spin(self, values: torch.Tensor) -> torch.Tensor:
        """Repeat per-isochromat values (G, ...) for each of its m spins (N, ...)."""
        return values.repeat_interleave(self.m, dim=0)


def build_spins(
    phantom: Phantom,
    site: Site,
    isochromats_per_voxel: int = 4,
    seed: int = 0,
    spins_per_isochromat: int = 8,
) -> Spins:
    """Place isochromats (and their spins) in every voxel of ``phantom`` with PD > 0 (CPU).

    The site's B0/B1/coil maps are evaluated later at the current positions (the head moves);
    here it only sets the field strength that scales the equilibrium magnetisation.
    """
    n = isochromats_per_voxel
    m = spins_per_isochromat
    if not isinstance(n, int) or not 1 <= n <= 100000:
        raise ValueError(f"isochromats_per_voxel={n!r} must be an integer in 1..100000")
    if not isinstance(m, int) or not 1 <= m <= 4096:
        raise ValueError(f"spins_per_isochromat={m!r} must be an integer in 1..4096")
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
    # the voxel's k-space response is a fixed smooth apodisation instead of random per-voxel error
    g = max(1, math.isqrt(n))
    cell = (torch.arange(g, dtype=torch.float64) + 0.5) / g - 0.5
    gx = cell[(j.long() % (g * g)) % g] * dx
    gy = cell[(j.long() % (g * g)) // g] * dy
    group_pos = centres[:, None, :].expand(v, n, 3).clone()
    group_pos[..., 0] += gx
    group_pos[..., 1] += gy
    # Along z: the n*m spins of a voxel stratify its thickness (isochromat j takes strata
    # j, j+n, j+2n, ...), each with a fresh random jitter, so that what incomplete spoiling
    # leaves behind is incoherent between voxels instead of a coherent ghost
    s = torch.arange(m, dtype=torch.float64)
    stratum = s[None, :] * n + j[:, None]  # (n, m)
    u = torch.rand(v, n, m, generator=gen, dtype=torch.float64)
    z = ((stratum[None] + u) / (n * m) - 0.5) * dz if n * m > 1 else torch.zeros(v, n, m, dtype=torch.float64)
    spin_pos = group_pos[:, :, None, :].expand(v, n, m, 3).clone()
    spin_pos[..., 2] += z
    # Lorentzian (Cauchy) quantiles for T2', in a seeded random order per voxel so that the
    # frequency is not tied to the in-plane sub-position
    q = torch.tan(math.pi * ((j + 0.5) / n - 0.5)) if n > 1 else torch.zeros(1, dtype=torch.float64)
    order = torch.argsort(torch.rand(v, n, generator=gen), dim=1)
    lorentz = q[order]  # (V, n)
    t2p = phantom.t2prime.reshape(-1)[keep].to(torch.float64)
    df = phantom.b0_hz.reshape(-1)[keep].to(torch.float64)[:, None] + lorentz / (2 * math.pi * t2p[:, None])
    vol_mm3 = dz * dy * dx * 1e9
    # signal scales with B0 (magnetisation ~ B0, EMF ~ omega, noise ~ omega): SNR ~ B0
    m0 = pd[keep].to(torch.float64) * site.field_T * vol_mm3 / n

    def rep(t: torch.Tensor) -> torch.Tensor:
        return t[:, None].expand(v, n).reshape(-1)

    return Spins(
        m=m,
        voxel_pos=spin_pos.reshape(-1, 3),
        group_pos=group_pos.reshape(-1, 3),
        m0=rep(m0).to(torch.float32),
        r1=rep(1.0 / phantom.t1.reshape(-1)[keep]).to(torch.float32),
        r2=rep(1.0 / phantom.t2.reshape(-1)[keep]).to(torch.float32),
        df_tissue=df.reshape(-1).to(torch.float32),
        b1_object=rep(phantom.b1.reshape(-1)[keep]).to(torch.float32),
        voxel_index=rep(keep),
        spread_m=dz / 2,
    )
