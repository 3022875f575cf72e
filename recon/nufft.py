"""Non-uniform FFT by Kaiser–Bessel gridding (Jackson 1991, Beatty 2005), in torch.

Model (orthonormal like :func:`recon.fft.fftnc`): for an image ``x`` on an
``N``-point grid with centred integer positions ``r`` (index − N//2) and a
k-space position ``k`` in cycles per field of view (``-N/2 ≤ k < N/2``)::

    y(k) = N_tot^{-1/2} Σ_r x(r) exp(−2πi k·r / N)

:func:`forward` evaluates it approximately: divide by the kernel's Fourier
transform (deapodization), zero-pad to an ``os``-times larger grid, FFT, and
interpolate each sample from its ``width``ᵈ grid neighbours with a
Kaiser–Bessel kernel.  :func:`adjoint` is its exact transpose (spread, inverse
FFT, crop, deapodize), so the pair passes the dot-product test to rounding
error.  β follows Beatty et al. (IEEE TMI 2005) for the chosen ``os`` and
``width``.

Coordinate order: ``coords[..., 0]`` is kx (the last image axis),
``coords[..., 1]`` ky, ``coords[..., 2]`` kz — the order of MRD trajectories.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from recon.fft import fftnc, ifftnc

__all__ = ["NufftPlan", "plan", "forward", "adjoint", "kaiser_bessel_beta"]


def kaiser_bessel_beta(width: float, os: float) -> float:
    """Beatty's β for kernel width (grid samples) and oversampling ratio."""
    return math.pi * math.sqrt((width / os) ** 2 * (os - 0.5) ** 2 - 0.8)


def _kb(u: torch.Tensor, width: float, beta: float) -> torch.Tensor:
    """Kaiser–Bessel kernel at offsets u (grid samples): I0(β sqrt(1 − (2u/W)²)), zero outside |u| ≤ W/2."""
    arg = 1 - (2 * u / width) ** 2
    return torch.where(arg >= 0, torch.special.i0(beta * torch.sqrt(arg.clamp(min=0))), torch.zeros_like(u))


def _kb_ft(nu: torch.Tensor, width: float, beta: float) -> torch.Tensor:
    """Fourier transform of :func:`_kb` at frequency nu (cycles per grid sample)."""
    z = (beta**2 - (math.pi * width * nu) ** 2).to(torch.complex128)
    s = torch.sqrt(z)
    val = torch.where(s.abs() > 1e-9, torch.sinh(s) / s, torch.ones_like(s))
    return (width * val).real


@dataclass(frozen=True)
class NufftPlan:
    """Precomputed interpolation for one trajectory.

    Attributes:
        image_shape: (…, ny, nx) image grid, d = len(image_shape) dims (1–3).
        grid_shape: oversampled grid.
        index: long (M, width^d) flat grid indices of each sample's neighbours.
        weight: real (M, width^d) kernel weights.
        apod: real image_shape deapodization (divide by it).
        scale: sqrt(prod grid / prod image): keeps the transform orthonormal-like.
        n_samples: M.
    """

    image_shape: tuple[int, ...]
    grid_shape: tuple[int, ...]
    index: torch.Tensor
    weight: torch.Tensor
    apod: torch.Tensor
    scale: float
    n_samples: int


def plan(coords: torch.Tensor, image_shape: tuple[int, ...], os: float = 2.0, width: int = 6) -> NufftPlan:
    """Precompute a NUFFT for sample positions ``coords`` (…, d) in cycles per FOV.

    Args:
        coords: real (..., d) k-space positions; any leading shape (flattened, M samples).
        image_shape: d image sizes, (nz, ny, nx) order.
        os: grid oversampling ratio.
        width: kernel width in grid samples.
    """
    d = len(image_shape)
    if coords.shape[-1] != d:
        raise ValueError(f"coords have {coords.shape[-1]} dims but the image has {d}")
    if not 1 <= d <= 3:
        raise ValueError(f"1-3 image dimensions are supported, got {d}")
    if os < 1.25 or width < 2:
        raise ValueError(f"need os >= 1.25 and width >= 2, got os={os}, width={width}")
    device = coords.device
    c = coords.reshape(-1, d).to(torch.float64)
    M = c.shape[0]
    beta = kaiser_bessel_beta(width, os)
    grid = tuple(int(2 * math.ceil(os * n / 2)) for n in image_shape)
    # coords[..., j] belongs to image axis d-1-j (kx is the last axis)
    per_axis_idx, per_axis_w = [], []
    for axis in range(d):
        n, g = image_shape[axis], grid[axis]
        u = c[:, d - 1 - axis] * (g / n) + g // 2  # grid position of each sample
        start = torch.ceil(u - width / 2)
        offs = start[:, None] + torch.arange(width, device=device, dtype=torch.float64)[None, :]  # (M, W)
        per_axis_w.append(_kb(u[:, None] - offs, width, beta))
        per_axis_idx.append(torch.remainder(offs.long(), g))  # periodic grid
    # outer product over axes -> (M, W^d)
    index = torch.zeros(M, 1, dtype=torch.long, device=device)
    weight = torch.ones(M, 1, dtype=torch.float64, device=device)
    stride = 1
    for axis in reversed(range(d)):
        index = (index[:, :, None] + per_axis_idx[axis][:, None, :] * stride).reshape(M, -1)
        weight = (weight[:, :, None] * per_axis_w[axis][:, None, :]).reshape(M, -1)
        stride *= grid[axis]
    # deapodization: kernel FT at image position r / grid
    apod = torch.ones((), dtype=torch.float64, device=device)
    for axis in range(d):
        n, g = image_shape[axis], grid[axis]
        r = torch.arange(n, device=device, dtype=torch.float64) - n // 2
        shape = [1] * d
        shape[axis] = n
        apod = apod * _kb_ft(r / g, width, beta).reshape(shape)
    scale = math.sqrt(math.prod(grid) / math.prod(image_shape))
    return NufftPlan(
        tuple(image_shape), grid, index, weight.to(torch.float32), apod.to(torch.float32), scale, M
    )


def _pad_slices(image_shape: tuple[int, ...], grid: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(g // 2 - n // 2, g // 2 - n // 2 + n) for n, g in zip(image_shape, grid, strict=True))


def forward(p: NufftPlan, x: torch.Tensor) -> torch.Tensor:
    """Image (…, *image_shape) → samples (…, M)."""
    d = len(p.image_shape)
    lead = x.shape[:-d]
    if tuple(x.shape[-d:]) != p.image_shape:
        raise ValueError(f"image shape {tuple(x.shape[-d:])} does not match the plan's {p.image_shape}")
    g = torch.zeros(*lead, *p.grid_shape, dtype=torch.complex64, device=x.device)
    g[(..., *_pad_slices(p.image_shape, p.grid_shape))] = x / p.apod.to(x.device)
    k = fftnc(g, tuple(range(-d, 0))).reshape(*lead, -1)
    vals = k[..., p.index] * p.weight.to(x.device)  # (…, M, W^d)
    return vals.sum(-1) * p.scale


def adjoint(p: NufftPlan, y: torch.Tensor) -> torch.Tensor:
    """Samples (…, M) → image (…, *image_shape); the exact adjoint of :func:`forward`."""
    d = len(p.image_shape)
    lead = y.shape[:-1]
    if y.shape[-1] != p.n_samples:
        raise ValueError(f"got {y.shape[-1]} samples, the plan has {p.n_samples}")
    contrib = (y[..., None] * p.weight.to(y.device)).reshape(*lead, -1).to(torch.complex64)
    flat = torch.zeros(*lead, math.prod(p.grid_shape), dtype=torch.complex64, device=y.device)
    flat.index_add_(flat.ndim - 1, p.index.reshape(-1), contrib)
    img = ifftnc(flat.reshape(*lead, *p.grid_shape), tuple(range(-d, 0)))
    img = img[(..., *_pad_slices(p.image_shape, p.grid_shape))]
    return img / p.apod.to(y.device) * p.scale
