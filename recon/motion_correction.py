"""Retrospective rigid motion correction of Cartesian k-space, line by line (pure torch).

If the head moved by (R, t) (a reference point p is at R p + t) while a readout was
acquired, the sample at nominal k-space position k holds
``F(R^T k) exp(-2 pi i k.t)`` where F is the reference object's spectrum:

* translation is a linear phase ramp: multiplying by ``exp(+2 pi i k.t)`` removes it exactly
  (:func:`undo_translation`);
* rotation moves the sample: after the ramp it is the reference spectrum at ``R^T k``
  (:func:`rotated_coordinates`), so the image is reconstructed from non-uniform samples by
  conjugate gradients on the NUFFT normal equations (:func:`reconstruct_rotated`).

In-plane (2D) data use the x, y components; k is in cycles per metre, t in mm.
"""

from __future__ import annotations

import math

import torch

from recon import nufft
from recon.cg import conjugate_gradient

__all__ = [
    "cartesian_k",
    "undo_translation",
    "undo_translation_line",
    "rotated_coordinates",
    "reconstruct_rotated",
]


def cartesian_k(ny: int, nx: int, fov_mm: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Nominal (ky, kx) in cycles/m of a centred Cartesian (ny, nx) grid over ``fov_mm`` = (fov_y, fov_x).

    Index ``n // 2`` is k = 0 (the centred FFT convention of :mod:`recon.fft`).
    """
    ky = (torch.arange(ny, dtype=torch.float64) - ny // 2) / (fov_mm[0] * 1e-3)
    kx = (torch.arange(nx, dtype=torch.float64) - nx // 2) / (fov_mm[1] * 1e-3)
    return ky, kx


def undo_translation(
    kspace: torch.Tensor, fov_mm: tuple[float, float], translation_mm: torch.Tensor
) -> torch.Tensor:
    """Remove per-line translations from Cartesian k-space.

    Args:
        kspace: complex (coil, ny, nx) k-space, centred (line ny // 2 and sample nx // 2 are k = 0).
        fov_mm: (fov_y, fov_x) the k-space grid samples (mm).
        translation_mm: (ny, 2) head translation (tx, ty) in mm while each line was acquired.

    Returns:
        complex (coil, ny, nx): the k-space of the object at the reference position.
    """
    if kspace.ndim != 3:
        raise ValueError(f"kspace must be (coil, ny, nx), got shape {tuple(kspace.shape)}")
    ny, nx = kspace.shape[-2:]
    if tuple(translation_mm.shape) != (ny, 2):
        raise ValueError(f"translation_mm must be (ny, 2) = ({ny}, 2), got {tuple(translation_mm.shape)}")
    ky, kx = cartesian_k(ny, nx, fov_mm)
    t = translation_mm.to(torch.float64) * 1e-3  # m
    phase = 2 * math.pi * (kx[None, :] * t[:, 0:1] + ky[:, None] * t[:, 1:2])  # (ny, nx)
    return kspace * torch.exp(1j * phase).to(kspace.dtype)[None]


def undo_translation_line(
    data: torch.Tensor, kx_per_m: torch.Tensor, ky_per_m: float, translation_mm: tuple[float, float]
) -> torch.Tensor:
    """Remove a translation from one readout (streaming form of :func:`undo_translation`).

    Args:
        data: complex (coil, n) samples.
        kx_per_m: (n,) readout k of each sample (cycles/m).
        ky_per_m: the line's phase-encoding k (cycles/m).
        translation_mm: (tx, ty) head translation during the readout (mm).
    """
    tx, ty = (float(v) * 1e-3 for v in translation_mm)
    phase = 2 * math.pi * (kx_per_m.to(torch.float64) * tx + ky_per_m * ty)
    return data * torch.exp(1j * phase).to(data.dtype)[None]


def rotated_coordinates(ny: int, nx: int, rotation_deg: torch.Tensor) -> torch.Tensor:
    """Where each nominal sample lies in the reference spectrum, (ny, nx, 2) = (kx, ky) in cycles per FOV.

    Args:
        ny, nx: grid size (the FOV is the same along both axes in cycles-per-FOV units only
            when the pixels are square; the caller resamples otherwise).
        rotation_deg: (ny,) in-plane rotation about z (deg) while each line was acquired.
    """
    ky = (torch.arange(ny, dtype=torch.float64) - ny // 2)[:, None].expand(ny, nx)
    kx = (torch.arange(nx, dtype=torch.float64) - nx // 2)[None, :].expand(ny, nx)
    a = torch.deg2rad(rotation_deg.to(torch.float64))[:, None]
    c, s = torch.cos(a), torch.sin(a)
    # R^T k with R = [[c, -s], [s, c]]
    return torch.stack([c * kx + s * ky, -s * kx + c * ky], -1)


def reconstruct_rotated(
    kspace: torch.Tensor,
    coords: torch.Tensor,
    iterations: int = 15,
    tol: float = 1e-4,
    sampled: torch.Tensor | None = None,
) -> torch.Tensor:
    """Coil images from samples at non-uniform positions of the reference spectrum.

    Solves ``(A^H A) x = A^H y`` per coil by conjugate gradients, A the NUFFT to ``coords``
    (no density compensation needed: CG converges to the least-squares image).

    Args:
        kspace: complex (coil, ny, nx) samples (translation already removed).
        coords: (ny, nx, 2) (kx, ky) in cycles per FOV, from :func:`rotated_coordinates`.
        iterations: CG iterations at most.
        tol: relative residual to stop at.
        sampled: optional bool (ny,) lines that were acquired; the others are left out of the
            fit instead of being taken as measured zeros.

    Returns:
        complex (coil, ny, nx) images, orthonormal scaling like :func:`recon.fft.ifftnc`.
    """
    ncoil, ny, nx = kspace.shape
    if sampled is not None:
        kspace, coords = kspace[:, sampled], coords[sampled]
    p = nufft.plan(coords.reshape(-1, 2), (ny, nx))
    y = kspace.reshape(ncoil, -1).to(torch.complex64)

    def normal(x: torch.Tensor) -> torch.Tensor:
        return nufft.adjoint(p, nufft.forward(p, x))

    return conjugate_gradient(normal, nufft.adjoint(p, y), max_iter=iterations, tol=tol).x
