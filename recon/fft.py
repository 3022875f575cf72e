"""Centred, orthonormal Fourier transforms over chosen tensor dimensions.

MRI k-space has its DC sample in the middle of the matrix (index ``n // 2``),
while ``torch.fft`` expects it at index 0.  The helpers below shift, transform
and shift back so that the centre of k-space maps to the centre of the image.
``norm="ortho"`` keeps the transforms unitary: noise keeps its standard
deviation and Parseval's theorem holds, which the prewhitening and SNR-scaled
steps rely on.  (The Gadgetron and ISMRMRD reference recons use unnormalised
FFTW transforms; their images differ from ours by a single global factor.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["fftnc", "ifftnc"]


def _dims(x: torch.Tensor, dims: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(dims, int):
        dims = (dims,)
    out = tuple(d % x.ndim for d in dims)
    if len(set(out)) != len(out):
        raise ValueError(f"dims must name distinct dimensions of a {x.ndim}-d tensor, got {tuple(dims)}")
    return out


def ifftnc(k: torch.Tensor, dims: int | Sequence[int] = (-2, -1)) -> torch.Tensor:
    """Centred orthonormal inverse FFT (k-space → image).

    Args:
        k: complex tensor of any shape; the DC sample of each transformed axis
            sits at index ``n // 2``.
        dims: the axes to transform (default: the last two, i.e. (y, x)).

    Returns:
        Tensor of the same shape and dtype with the image centre at ``n // 2``.
    """
    d = _dims(k, dims)
    return torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(k, dim=d), dim=d, norm="ortho"), dim=d)


def fftnc(x: torch.Tensor, dims: int | Sequence[int] = (-2, -1)) -> torch.Tensor:
    """Centred orthonormal forward FFT (image → k-space); the inverse of :func:`ifftnc`.

    Args:
        x: complex (or real, promoted to complex) tensor of any shape.
        dims: the axes to transform (default: the last two).

    Returns:
        Tensor of the same shape, complex, with DC at index ``n // 2``.
    """
    d = _dims(x, dims)
    return torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(x, dim=d), dim=d, norm="ortho"), dim=d)
