"""Closed-form signal equations: what an ideal scanner would show, to check the Bloch engine against.

These are the textbook steady-state expressions (no Bloch simulation involved),
evaluated on a phantom at a site, so that a simulated and reconstructed image
can be compared with an independent expectation.
"""

from __future__ import annotations

import math

import torch

from simulator.phantom import Phantom
from simulator.site import Site


def ernst_signal(
    pd: torch.Tensor,
    t1_s: torch.Tensor,
    t2star_s: torch.Tensor,
    tr_s: float,
    te_s: float,
    flip_rad: torch.Tensor | float,
) -> torch.Tensor:
    """Ideally spoiled gradient-echo steady state (Ernst):

    S = PD · sin α · (1 − E1) / (1 − cos α · E1) · exp(−TE/T2*),  E1 = exp(−TR/T1).

    All tensors broadcast; times in s, flip angle in rad. Where PD = 0 the signal is 0.
    """
    flip = torch.as_tensor(flip_rad, dtype=torch.float64)
    t1 = t1_s.to(torch.float64).clamp_min(1e-6)
    e1 = torch.exp(-tr_s / t1)
    steady = torch.sin(flip) * (1 - e1) / (1 - torch.cos(flip) * e1)
    return (pd.to(torch.float64) * steady * torch.exp(-te_s / t2star_s.to(torch.float64).clamp_min(1e-6))).to(
        torch.float32
    )


def t2star(phantom: Phantom) -> torch.Tensor:
    """T2* (s) from T2 and T2': 1/T2* = 1/T2 + 1/T2' (z, y, x)."""
    return 1.0 / (1.0 / phantom.t2.clamp_min(1e-6) + 1.0 / phantom.t2prime.clamp_min(1e-6))


def expected_spoiled_gre_image(
    phantom: Phantom, site: Site, tr_s: float, te_s: float, flip_deg: float
) -> torch.Tensor:
    """The magnitude image (z, y, x) an RSS-combined, ideally spoiled 2D GRE should give.

    The site's B1+ map scales the flip angle voxel by voxel and its receive array
    weights the signal by the root-sum-of-squares of the coil sensitivities, as an
    RSS coil combination does; global scale factors (B0, gain) are left out, so
    compare by correlation or after scaling. B0 off-resonance is ignored (it does
    not change a spoiled steady state).
    """
    centres = phantom.positions_m().reshape(-1, 3)
    b1 = (site.b1_map(centres).reshape(phantom.shape) * phantom.b1).to(torch.float64)
    flip = math.radians(flip_deg) * b1
    signal = ernst_signal(phantom.pd, phantom.t1, t2star(phantom), tr_s, te_s, flip)
    receive = site.coil_sensitivities(centres).abs().pow(2).sum(dim=0).sqrt().reshape(phantom.shape)
    return (signal * receive).to(torch.float32)
