"""Coil combination: root-sum-of-squares and sensitivity-weighted (Roemer) combination."""

from __future__ import annotations

import torch

__all__ = ["rss", "sensitivity_weighted"]


def rss(img: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Root-sum-of-squares over the coil axis.

    Args:
        img: complex or real (coil, ...) coil images.
        dim: the coil axis.

    Returns:
        Real tensor ``sqrt(Σ_c |img_c|²)`` with the coil axis removed.
    """
    return torch.sqrt(torch.sum(img.real**2 + img.imag**2 if img.is_complex() else img**2, dim=dim))


def sensitivity_weighted(img: torch.Tensor, sens: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Sensitivity-weighted combination ``Σ conj(S_c) I_c / Σ |S_c|²`` (Roemer, with whitened noise).

    With noise-whitened data this is the SNR-optimal linear combination and it
    keeps the image phase, unlike :func:`rss`.

    Args:
        img: complex (coil, ...) coil images.
        sens: complex (coil, ...) coil sensitivities, same shape as ``img``.
        eps: floor for the denominator outside the sensitivity support.

    Returns:
        Complex tensor with the coil axis removed.
    """
    if img.shape != sens.shape:
        raise ValueError(f"img shape {tuple(img.shape)} and sens shape {tuple(sens.shape)} differ")
    num = torch.sum(sens.conj() * img, dim=0)
    den = torch.sum(sens.real**2 + sens.imag**2, dim=0)
    return num / torch.clamp(den, min=eps)
