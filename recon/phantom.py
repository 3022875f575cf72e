"""An analytic ellipse phantom: exact image and exact continuous k-space (for NUFFT tests and benchmarks).

The Fourier transform of a uniform ellipse is a jinc, so non-Cartesian
samples can be simulated without gridding (no "inverse crime").
Units: image positions in pixels of an N×N grid centred at N//2; k in
cycles per FOV (``-N/2 ≤ k < N/2``); the k-space uses the orthonormal
scaling of :func:`recon.fft.fftnc` (divide by N).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.special import j1

__all__ = ["ELLIPSES", "ellipse_image", "ellipse_kspace"]

#: (intensity, semi-axis x, semi-axis y, centre x, centre y) in units of half the FOV
ELLIPSES: tuple[tuple[float, float, float, float, float], ...] = (
    (1.0, 0.70, 0.90, 0.00, 0.00),
    (-0.6, 0.60, 0.80, 0.00, 0.00),
    (0.4, 0.15, 0.25, 0.20, -0.30),
    (0.3, 0.10, 0.20, -0.25, 0.20),
)


def ellipse_image(matrix: int, ellipses=ELLIPSES) -> torch.Tensor:
    """Rasterised phantom (matrix, matrix) float32, pixel centres at (i − N//2)."""
    r = (torch.arange(matrix, dtype=torch.float64) - matrix // 2) / (matrix / 2)
    y, x = torch.meshgrid(r, r, indexing="ij")
    img = torch.zeros(matrix, matrix, dtype=torch.float64)
    for rho, a, b, x0, y0 in ellipses:
        img += rho * ((((x - x0) / a) ** 2 + ((y - y0) / b) ** 2) < 1)
    return img.to(torch.float32)


def ellipse_kspace(
    kx: np.ndarray | torch.Tensor, ky: np.ndarray | torch.Tensor, matrix: int, ellipses=ELLIPSES
) -> torch.Tensor:
    """Exact k-space of the phantom at (kx, ky) in cycles per FOV; complex64, same shape as kx."""
    kx = np.asarray(kx, dtype=np.float64)
    ky = np.asarray(ky, dtype=np.float64)
    out = np.zeros(kx.shape, dtype=np.complex128)
    n = matrix
    for rho, a, b, x0, y0 in ellipses:
        A, B = a * n / 2, b * n / 2  # semi-axes in pixels
        q = np.sqrt((A * kx / n) ** 2 + (B * ky / n) ** 2)
        safe = np.where(q > 1e-12, q, 1.0)
        jinc = np.where(q > 1e-12, j1(2 * math.pi * q) / safe, math.pi)
        out += rho * A * B * jinc * np.exp(-2j * math.pi * (kx * x0 * n / 2 + ky * y0 * n / 2) / n)
    return torch.from_numpy(out / n).to(torch.complex64)
