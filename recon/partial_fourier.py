"""Partial Fourier reconstruction by projection onto convex sets (POCS; Haacke et al., JMR 1991).

With only ``n_acq > n/2`` of the ``n`` phase-encoding lines acquired on one
side of the k-space centre, the missing side is estimated from the
conjugate symmetry of a real object with smooth phase: a low-resolution
phase map comes from the symmetrically sampled centre, and the iteration
alternates between imposing that phase in image space and the measured
lines in k-space.
"""

from __future__ import annotations

import torch

from recon.fft import fftnc, ifftnc

__all__ = ["symmetric_extent", "pocs"]


def symmetric_extent(sampled: torch.Tensor) -> tuple[int, int, int]:
    """(first, last+1, half-width of the symmetric centre) of a sampled ky range around ``n//2``.

    Args:
        sampled: bool (n,) mask of acquired lines.
    """
    n = sampled.numel()
    idx = torch.nonzero(sampled).flatten()
    if idx.numel() == 0:
        raise ValueError("no sampled lines")
    lo, hi = int(idx.min()), int(idx.max()) + 1
    c = n // 2
    half = min(c - lo, hi - c)
    if half < 2:
        raise ValueError(f"partial Fourier needs sampled lines on both sides of the centre line {c}")
    return lo, hi, half


def pocs(k: torch.Tensor, sampled: torch.Tensor, dim: int = -2, iterations: int = 10) -> torch.Tensor:
    """Fill the unacquired side of partial-Fourier k-space.

    Args:
        k: complex (..., ny, nx) k-space (zeros where not acquired), centre at n//2.
        sampled: bool (n,) mask along ``dim`` of the acquired lines (a contiguous range
            containing the centre).
        dim: the partial-Fourier axis (default ky).
        iterations: POCS iterations.

    Returns:
        complex k-space of the same shape, measured lines unchanged.
    """
    dim = dim % k.ndim
    n = k.shape[dim]
    if sampled.shape != (n,):
        raise ValueError(f"sampled must be ({n},) for axis {dim}, got {tuple(sampled.shape)}")
    lo, hi, half = symmetric_extent(sampled)
    if lo == 0 and hi == n:
        return k
    shape = [1] * k.ndim
    shape[dim] = n
    pos = torch.arange(n, device=k.device) - n // 2
    # Hann-windowed symmetric centre → smooth low-resolution phase.
    win = torch.where(
        pos.abs() < half, 0.5 * (1 + torch.cos(torch.pi * pos / half)), torch.zeros((), device=k.device)
    )
    phase = torch.exp(1j * torch.angle(ifftnc(k * win.reshape(shape).to(k.real.dtype), (-2, -1))))
    mask = sampled.reshape(shape)
    est = k
    for _ in range(iterations):
        img = ifftnc(est, (-2, -1))
        img = img.abs() * phase
        est = torch.where(mask, k, fftnc(img, (-2, -1)))
    return est
