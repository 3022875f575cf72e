"""Radial and spiral k-space trajectories in cycles per field of view (``-N/2 ≤ k < N/2``).

Coordinates are (…, 2) with ``[..., 0] = kx``, ``[..., 1] = ky`` — the MRD
trajectory order used by :mod:`recon.nufft`.
"""

from __future__ import annotations

import math

import torch

__all__ = ["GOLDEN_ANGLE", "radial", "spiral"]

#: golden-angle increment for radial spokes over 180° (Winkelmann et al. 2007), radians
GOLDEN_ANGLE = math.pi * (math.sqrt(5) - 1) / 2


def radial(n_spokes: int, n_samples: int, matrix: int, golden: bool = False) -> torch.Tensor:
    """Radial spokes through the centre.

    Args:
        n_spokes: number of spokes (π·matrix/2 satisfy Nyquist at the edge).
        n_samples: samples per spoke (2·matrix for 2x readout oversampling); sample
            ``n_samples // 2`` is k = 0.
        matrix: image matrix N; spokes run from −N/2 to N/2 − step.
        golden: golden-angle ordering instead of uniform angles over 180°.

    Returns:
        float32 (n_spokes, n_samples, 2).
    """
    if n_spokes < 1 or n_samples < 2 or matrix < 2:
        raise ValueError(
            f"need n_spokes >= 1, n_samples >= 2, matrix >= 2; got {n_spokes}, {n_samples}, {matrix}"
        )
    r = (torch.arange(n_samples, dtype=torch.float64) - n_samples // 2) * (matrix / n_samples)
    i = torch.arange(n_spokes, dtype=torch.float64)
    angles = i * GOLDEN_ANGLE if golden else i * math.pi / n_spokes
    k = torch.stack([r[None, :] * torch.cos(angles)[:, None], r[None, :] * torch.sin(angles)[:, None]], -1)
    return k.to(torch.float32)


def spiral(n_interleaves: int, n_samples: int, matrix: int) -> torch.Tensor:
    """Archimedean spiral interleaves from the centre to k = N/2.

    The radius grows by ``n_interleaves`` cycles/FOV per turn (radial Nyquist
    spacing of 1/FOV between neighbouring interleaves), and samples are
    spaced evenly in the spiral parameter (constant angular velocity).

    Returns:
        float32 (n_interleaves, n_samples, 2).
    """
    if n_interleaves < 1 or n_samples < 2 or matrix < 2:
        raise ValueError(
            f"need n_interleaves >= 1, n_samples >= 2, matrix >= 2; "
            f"got {n_interleaves}, {n_samples}, {matrix}"
        )
    kmax = matrix / 2
    turns = kmax / n_interleaves
    t = torch.linspace(0, 1, n_samples, dtype=torch.float64)
    radius = kmax * t
    out = []
    for j in range(n_interleaves):
        phi = 2 * math.pi * turns * t + 2 * math.pi * j / n_interleaves
        out.append(torch.stack([radius * torch.cos(phi), radius * torch.sin(phi)], -1))
    k = torch.stack(out)
    return k.clamp(-kmax, kmax - 1e-3).to(torch.float32)
