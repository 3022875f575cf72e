"""Non-Cartesian reconstruction: density compensation, gridding and CG-SENSE over :mod:`recon.nufft`."""

from __future__ import annotations

import torch

from recon import nufft
from recon.cg import CGResult, conjugate_gradient

__all__ = ["density_compensation", "gridding", "cg_sense"]


def _spread_interp(p: nufft.NufftPlan, w: torch.Tensor) -> torch.Tensor:
    """C Cᵀ w: spread weights onto the oversampled grid with the kernel and interpolate them back."""
    grid = torch.zeros(int(torch.tensor(p.grid_shape).prod()), dtype=torch.float32, device=w.device)
    grid.index_add_(0, p.index.reshape(-1), (w[:, None] * p.weight).reshape(-1))
    return (grid[p.index] * p.weight).sum(-1)


def density_compensation(p: nufft.NufftPlan, iterations: int = 10) -> torch.Tensor:
    """Sampling density compensation weights by Pipe & Menon's fixed-point iteration (MRM 1999).

    ``w ← w / (C Cᵀ w)`` with ``C`` the plan's gridding interpolation; the result
    is scaled so that gridding a smooth test object (a Gaussian blob of 2
    pixels σ, whose spectrum lies well inside any reasonable trajectory's
    coverage) returns it with unit gain; for a Cartesian grid the weights are
    then ≈ 1.  (A point source would not do: its flat spectrum extends to the
    corners of k-space that radial and spiral trajectories do not cover.)

    Returns:
        float32 (M,) weights.
    """
    w = torch.ones(p.n_samples, dtype=torch.float32, device=p.index.device)
    for _ in range(iterations):
        w = w / _spread_interp(p, w).clamp(min=1e-12)
    blob = torch.ones((), dtype=torch.float32, device=w.device)
    for axis, n in enumerate(p.image_shape):
        r = torch.arange(n, dtype=torch.float32, device=w.device) - n // 2
        shape = [1] * len(p.image_shape)
        shape[axis] = n
        blob = blob * torch.exp(-0.5 * (r / 2.0) ** 2).reshape(shape)
    blob = blob.to(torch.complex64)
    gain = (
        torch.vdot(blob.flatten(), nufft.adjoint(p, w * nufft.forward(p, blob)).flatten()).real
        / torch.vdot(blob.flatten(), blob.flatten()).real
    )
    return w / gain


def gridding(y: torch.Tensor, p: nufft.NufftPlan, dcf: torch.Tensor) -> torch.Tensor:
    """Density-compensated adjoint NUFFT: (…, M) samples → (…, *image_shape) images."""
    return nufft.adjoint(p, y * dcf)


def cg_sense(
    y: torch.Tensor,
    p: nufft.NufftPlan,
    maps: torch.Tensor,
    dcf: torch.Tensor | None = None,
    lamda: float = 0.0,
    max_iter: int = 20,
    tol: float = 1e-6,
) -> CGResult:
    """Non-Cartesian CG-SENSE (Pruessmann et al., MRM 2001), density-weighted.

    Solves ``(Sᴴ Aᴴ D A S + λ) x = Sᴴ Aᴴ D y`` with ``A`` the NUFFT, ``S`` the
    coil maps and ``D`` the density compensation (which conditions the
    system, so few iterations suffice).

    Args:
        y: complex (coil, M) samples.
        p: NUFFT plan of the trajectory.
        maps: complex (coil, *image_shape) sensitivities (ones((1, …)) for a single coil).
        dcf: (M,) density weights (:func:`density_compensation` when None).
        lamda: Tikhonov weight (relative to the scale of the right-hand side's maximum).

    Returns:
        :class:`~recon.cg.CGResult`, ``x`` complex (*image_shape).
    """
    if dcf is None:
        dcf = density_compensation(p)
    rhs = torch.sum(maps.conj() * nufft.adjoint(p, y * dcf), dim=0)
    scale = float(rhs.abs().max()) or 1.0

    def normal(x: torch.Tensor) -> torch.Tensor:
        return torch.sum(maps.conj() * nufft.adjoint(p, nufft.forward(p, maps * x) * dcf), dim=0) + lamda * x

    res = conjugate_gradient(normal, rhs / scale, max_iter=max_iter, tol=tol)
    return CGResult(res.x * scale, res.iterations, res.residual_norms)
