"""Noise covariance estimation and prewhitening (decorrelation) of receiver channels.

Receive coils share noise through mutual inductance and shared sample
resistance, so the channel noise covariance ``Ψ`` is not diagonal.  A
whitening matrix ``W`` with ``W Ψ Wᴴ = I`` makes every channel carry unit,
independent noise; SNR-optimal coil combination and parallel imaging then
reduce to their textbook forms.  As in Gadgetron's NoiseAdjust gadget, ``W``
comes from the Cholesky factor ``Ψ = L Lᴴ`` (``W = L⁻¹``), and when the noise
scan was sampled with a different dwell time than the imaging data the
covariance is rescaled by the ratio of the two sampling bandwidths, because
white noise power per sample is proportional to the bandwidth (1/dwell).
"""

from __future__ import annotations

import torch

__all__ = ["noise_covariance", "prewhitening_matrix", "prewhiten", "bandwidth_scale"]


def noise_covariance(noise: torch.Tensor) -> torch.Tensor:
    """Sample covariance of receiver noise.

    Args:
        noise: complex tensor (coil, n) or (coil, ...) of pure-noise samples
            (no RF, no gradients); all trailing axes are treated as samples.

    Returns:
        Complex (coil, coil) Hermitian matrix ``Ψ[i, j] = E[n_i conj(n_j)]``
        (the zero-mean estimator with ``1/(n-1)`` normalisation).
    """
    if noise.ndim < 2:
        raise ValueError(f"noise must be (coil, samples...), got shape {tuple(noise.shape)}")
    x = noise.reshape(noise.shape[0], -1)
    n = x.shape[1]
    if n < 2:
        raise ValueError(f"noise needs at least 2 samples per coil, got {n}")
    return (x @ x.conj().T) / (n - 1)


def bandwidth_scale(noise_dwell_s: float, data_dwell_s: float, relative_bandwidth: float = 1.0) -> float:
    """Factor that converts a noise covariance measured at one dwell time to another.

    White noise variance per sample is proportional to the sampled bandwidth
    ``1/dwell``, so a covariance measured with dwell ``τn`` predicts
    ``Ψ · τn/τd`` at the data's dwell ``τd``.  ``relative_bandwidth`` multiplies
    this for receivers whose anti-alias filter passes a different fraction of
    the sampled band for the two scans (Gadgetron applies its
    ``receiver_noise_bandwidth``, 0.793 by default, when the dwells differ);
    1.0 means both scans see the same relative filter.

    Returns:
        The factor to multiply the noise-scan covariance with.
    """
    if noise_dwell_s <= 0 or data_dwell_s <= 0:
        raise ValueError(
            f"dwell times must be > 0 s, got noise_dwell_s={noise_dwell_s}, data_dwell_s={data_dwell_s}"
        )
    if relative_bandwidth <= 0:
        raise ValueError(f"relative_bandwidth must be > 0, got {relative_bandwidth}")
    return noise_dwell_s / data_dwell_s * relative_bandwidth


#: smallest/largest eigenvalue of a usable noise covariance: far below any real coil array's
#: spread (10^-2..10^-4), far above a duplicated channel's rounding residue (~10^-7 in complex64)
MIN_EIGENVALUE_RATIO = 1e-6


def prewhitening_matrix(cov: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Whitening matrix from a noise covariance (Cholesky-based).

    Args:
        cov: complex (coil, coil) Hermitian positive-definite covariance.
        scale: multiplies ``cov`` first (see :func:`bandwidth_scale`).

    Returns:
        Lower-triangular complex (coil, coil) ``W = L⁻¹`` with
        ``W (scale·cov) Wᴴ = I``.
    """
    if cov.ndim != 2 or cov.shape[0] != cov.shape[1]:
        raise ValueError(f"cov must be square (coil, coil), got shape {tuple(cov.shape)}")
    c = cov.to(torch.complex128) * scale
    # Symmetrise: the sample estimate is Hermitian only up to rounding.
    c = 0.5 * (c + c.conj().T)
    L, info = torch.linalg.cholesky_ex(c)
    # a duplicated channel estimated in single precision is singular only up to rounding, and
    # Cholesky may pass it with a tiny pivot: judge by the eigenvalue spread instead
    ev = torch.linalg.eigvalsh(c)
    if int(info) != 0 or float(ev[0]) <= MIN_EIGENVALUE_RATIO * float(ev[-1]):
        raise ValueError("noise covariance is not positive definite (a dead or duplicated channel?)")
    eye = torch.eye(c.shape[0], dtype=c.dtype, device=c.device)
    W = torch.linalg.solve_triangular(L, eye, upper=False)
    return W.to(cov.dtype if cov.is_complex() else torch.complex64)


def prewhiten(data: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """Apply a whitening matrix along the coil axis.

    Args:
        data: complex (coil, ...) samples.
        W: (coil, coil) whitening matrix from :func:`prewhitening_matrix`.

    Returns:
        ``W @ data`` with the same shape as ``data``.
    """
    if data.shape[0] != W.shape[1]:
        raise ValueError(f"data has {data.shape[0]} coils but the whitening matrix expects {W.shape[1]}")
    flat = data.reshape(data.shape[0], -1)
    return (W.to(device=data.device, dtype=data.dtype) @ flat).reshape(data.shape)
