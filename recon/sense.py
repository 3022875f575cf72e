"""CG-SENSE (Pruessmann et al., MRM 2001) for Cartesian undersampling.

Solves ``min_x ‖M F S x − y‖² + λ‖x‖²`` by conjugate gradients on the normal
equations ``(Sᴴ Fᴴ M F S + λ) x = Sᴴ Fᴴ M y`` with ``F`` the centred
orthonormal FFT, ``M`` the sampling mask and ``S`` the coil maps.
"""

from __future__ import annotations

import torch

from recon.cg import CGResult, conjugate_gradient
from recon.fft import fftnc, ifftnc

__all__ = ["sense_normal", "cg_sense"]


def sense_normal(x: torch.Tensor, maps: torch.Tensor, mask: torch.Tensor, lamda: float) -> torch.Tensor:
    """``(Sᴴ Fᴴ M F S + λ) x`` for x (ny, nx), maps (coil, ny, nx), mask broadcastable to (ny, nx)."""
    k = fftnc(maps * x, (-2, -1)) * mask
    return torch.sum(maps.conj() * ifftnc(k, (-2, -1)), dim=0) + lamda * x


def cg_sense(
    k: torch.Tensor,
    maps: torch.Tensor,
    mask: torch.Tensor | None = None,
    lamda: float = 0.01,
    max_iter: int = 30,
    tol: float = 1e-6,
) -> CGResult:
    """CG-SENSE image from undersampled Cartesian k-space.

    Args:
        k: complex (coil, ny, nx) zero-filled k-space.
        maps: complex (coil, ny, nx) coil sensitivities (e.g. ESPIRiT).
        mask: bool/float (ny, nx) or (ny, 1) sampling mask; inferred from
            the non-zero entries of ``k`` when None.
        lamda: Tikhonov weight λ, relative to ‖y‖²/N scaled data — see below.
        max_iter, tol: CG controls.

    The data are scaled to unit maximum magnitude of the zero-filled SENSE
    image before solving, so ``lamda`` means the same for every data set
    (BART's ``pics`` scales its input similarly); the result is scaled back.

    Returns:
        :class:`~recon.cg.CGResult` whose ``x`` is the complex (ny, nx) image.
    """
    if k.shape != maps.shape:
        raise ValueError(f"k {tuple(k.shape)} and maps {tuple(maps.shape)} must have the same shape")
    if mask is None:
        mask = (k.abs().sum(0) > 0).to(k.real.dtype)
    mask = mask.to(k.real.dtype)
    rhs = torch.sum(maps.conj() * ifftnc(k * mask, (-2, -1)), dim=0)
    scale = float(rhs.abs().max()) or 1.0
    res = conjugate_gradient(
        lambda x: sense_normal(x, maps, mask, lamda), rhs / scale, max_iter=max_iter, tol=tol
    )
    return CGResult(res.x * scale, res.iterations, res.residual_norms)
