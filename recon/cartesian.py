"""Cartesian FFT reconstruction of fully sampled (or zero-filled) k-space."""

from __future__ import annotations

import torch

from recon.fft import ifftnc

__all__ = ["reconstruct"]


def reconstruct(k: torch.Tensor) -> torch.Tensor:
    """Inverse centred FFT of Cartesian k-space.

    Args:
        k: complex (coil, kz, ky, kx) k-space; ``kz == 1`` for 2D.  Missing
            lines are zeros (zero-filled recon).

    Returns:
        Complex (coil, z, y, x) coil images.  A 3D volume (``kz > 1``) is
        transformed along z too; a 2D slice only along (y, x).
    """
    if k.ndim != 4:
        raise ValueError(f"k must be (coil, kz, ky, kx), got shape {tuple(k.shape)}")
    dims = (-3, -2, -1) if k.shape[1] > 1 else (-2, -1)
    return ifftnc(k, dims)


def resample_to_fov(
    img: torch.Tensor,
    fov_in: tuple[float, ...],
    fov_out: tuple[float, ...],
    matrix_out: tuple[int, ...],
) -> torch.Tensor:
    """Crop an image to a smaller field of view, then Fourier-interpolate it to a matrix.

    Used to go from the encoded space (e.g. phase oversampling) to the recon
    space of an MRD header.  Cropping happens in image space (the encoded FOV
    is larger), the matrix change in k-space (zero padding = sinc
    interpolation), exactly separable per axis.

    Args:
        img: complex (..., n_1, ..., n_d) image over the last ``d`` axes.
        fov_in: (d,) field of view of ``img`` along those axes (any unit).
        fov_out: (d,) wanted field of view (same unit), ``<= fov_in``.
        matrix_out: (d,) wanted matrix.

    Returns:
        Complex (..., matrix_out) image.
    """
    from recon.fft import fftnc, ifftnc
    from recon.oversampling import crop_center

    d = len(matrix_out)
    if not (len(fov_in) == len(fov_out) == d):
        raise ValueError("fov_in, fov_out and matrix_out need one entry per resampled axis")
    out = img
    for i in range(d):
        dim = img.ndim - d + i
        n = out.shape[dim]
        if fov_out[i] > 0 and fov_in[i] > 0 and fov_out[i] < fov_in[i] * (1 - 1e-6):
            keep = int(round(n * fov_out[i] / fov_in[i]))
            out = crop_center(out, max(1, keep), dim)
        n = out.shape[dim]
        m = int(matrix_out[i])
        if m != n and m > 0:
            k = fftnc(out, dim)
            if m < n:
                k = crop_center(k, m, dim)
            else:
                pad_shape = list(k.shape)
                pad_shape[dim] = m
                big = torch.zeros(pad_shape, dtype=k.dtype, device=k.device)
                start = m // 2 - n // 2
                big.narrow(dim, start, n).copy_(k)
                k = big
            # keep the pixel values (not the energy) when the matrix changes
            out = ifftnc(k, dim) * (m / n) ** 0.5
    return out
