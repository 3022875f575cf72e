"""CartesianFFT gadget: k-space buffer → coil images in the header's recon space."""

from __future__ import annotations

from typing import Any

import torch

from gadgets.buffers import ImageBuffer, KSpaceBuffer
from gadgets.encoding import EncodingInfo, encoding_info
from recon.cartesian import reconstruct, resample_to_fov

__all__ = ["cartesian_fft", "to_recon_space"]


def to_recon_space(img: torch.Tensor, info: EncodingInfo) -> torch.Tensor:
    """Crop/interpolate (channel, z, y, x) images from the encoded to the recon space.

    The field of view along x is the encoded FOV scaled by how many readout
    samples are left (so it works with or without an upstream
    oversampling-removal gadget); along y and z it is the encoded FOV.  The
    image is cropped to the recon FOV and Fourier-interpolated to the recon matrix.
    """
    nz, ny, nx = img.shape[1:]
    ex, _, _ = info.encoded_matrix
    fx, fy, fz = info.encoded_fov_mm
    rx, ry, rz = info.recon_matrix
    gx, gy, gz = info.recon_fov_mm
    fov_x = fx * nx / ex if ex else fx
    if nz > 1:
        return resample_to_fov(img, (fz, fy, fov_x), (gz, gy, gx), (rz, ry, rx))
    return resample_to_fov(img, (fy, fov_x), (gy, gx), (ry, rx))


def cartesian_fft(connection: Any) -> None:
    """Inverse-FFT each :class:`KSpaceBuffer` and bring it to the recon space.

    Emits an :class:`ImageBuffer` with complex (coil, z, y, x) data.
    """
    for item in connection:
        if not isinstance(item, KSpaceBuffer):
            connection.send(item)
            continue
        info = encoding_info(connection.header, item.encoding_index)
        img = to_recon_space(reconstruct(item.data), info)
        connection.send(ImageBuffer(data=img, reference=item.reference, encoding_index=item.encoding_index))
