"""Readout oversampling removal.

Scanners sample the readout (x) with 2x oversampling so that signal from
outside the nominal field of view does not fold in along x.  The extra field
of view is discarded in image space: inverse FFT along x, keep the central
``nx // factor`` pixels, forward FFT back.  This equals an ideal low-pass
filter plus decimation in k-space, which is what Gadgetron's
RemoveROOversamplingGadget and the ISMRMRD reference recon do.
"""

from __future__ import annotations

import torch

from recon.fft import fftnc, ifftnc

__all__ = ["remove_readout_oversampling", "crop_center"]


def crop_center(x: torch.Tensor, size: int, dim: int = -1) -> torch.Tensor:
    """Central ``size`` entries of ``x`` along ``dim``, keeping index ``n//2`` at ``size//2``.

    Args:
        x: tensor of any shape.
        size: number of entries to keep (``<= x.shape[dim]``).
        dim: axis to crop.
    """
    n = x.shape[dim]
    if not 0 < size <= n:
        raise ValueError(f"crop size must be in 1..{n}, got {size}")
    start = n // 2 - size // 2
    return x.narrow(dim, start, size)


def remove_readout_oversampling(k: torch.Tensor, factor: int = 2, image_space: bool = False) -> torch.Tensor:
    """Remove readout oversampling from k-space lines.

    Args:
        k: complex (..., nx) k-space with the readout along the last axis and
            its centre at ``nx // 2``.
        factor: oversampling factor; ``nx`` must be divisible by it.
        image_space: return the cropped x-profile (image space along x) instead
            of k-space, saving the forward FFT when the caller transforms next.

    Returns:
        (..., nx // factor) k-space (or x-space when ``image_space``), centred.
    """
    nx = k.shape[-1]
    if factor < 1 or nx % factor:
        raise ValueError(f"readout length {nx} is not divisible by the oversampling factor {factor}")
    if factor == 1:
        return ifftnc(k, -1) if image_space else k
    m = nx // factor
    if not image_space and nx % 2 == 0 and m % 2 == 0:
        # Fast path, used per readout while streaming: for even n and m the input ifftshift and the
        # output fftshift are the sign patterns (-1)^x of the two grids, and on the kept pixels
        # their product is +1 — so the centred crop is just the first and last m/2 samples of the
        # *unshifted* inverse FFT, and no shift (a copy each) is needed.
        h = m // 2
        y = torch.fft.ifft(k, dim=-1, norm="ortho")
        return torch.fft.fft(torch.cat((y[..., :h], y[..., -h:]), dim=-1), dim=-1, norm="ortho")
    x = crop_center(ifftnc(k, -1), m, -1)
    return x if image_space else fftnc(x, -1)
