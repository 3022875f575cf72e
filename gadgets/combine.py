"""CoilCombine gadget: coil images → one image per slice (RSS or sensitivity-weighted)."""

from __future__ import annotations

from typing import Any

import torch

from gadgets.buffers import ImageBuffer
from recon.coils import rss, sensitivity_weighted
from recon.espirit import espirit_maps
from recon.fft import fftnc

__all__ = ["coil_combine"]

_METHODS = ("rss", "sensitivity")


def _sensitivity_combine(img: torch.Tensor, calib_size: int) -> torch.Tensor:
    """Roemer combination with ESPIRiT maps estimated from the images' own k-space centre.

    Args:
        img: complex (coil, z, y, x); maps are computed per partition z.

    Returns:
        complex (1, z, y, x); zero where ESPIRiT finds no signal (outside the object).
    """
    out = []
    for z in range(img.shape[1]):
        coil_imgs = img[:, z]
        k = fftnc(coil_imgs, (-2, -1))
        size = min(calib_size, k.shape[-2], k.shape[-1])
        maps, _ = espirit_maps(k, calib_size=size)
        out.append(sensitivity_weighted(coil_imgs, maps))
    return torch.stack(out)[None]


def coil_combine(connection: Any, *, method: str = "rss", calib_size: int = 24) -> None:
    """Combine the channel axis of every :class:`ImageBuffer`.

    Params:
        method: ``rss`` (root-sum-of-squares, magnitude, no maps needed) or
            ``sensitivity`` (Σ conj(S)·I / Σ|S|² with ESPIRiT maps from the
            central ``calib_size``² of each slice's k-space: keeps the image phase
            and, for prewhitened data, is the SNR-optimal combination).
        calib_size: calibration square for ``sensitivity``.

    Emits ImageBuffers with data (1, z, y, x).
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {', '.join(_METHODS)}, got '{method}'")
    if calib_size < 8:
        raise ValueError(f"calib_size must be >= 8, got {calib_size}")
    for item in connection:
        if not isinstance(item, ImageBuffer) or item.data.shape[0] == 1:
            connection.send(item)
            continue
        if method == "rss":
            combined = rss(item.data, dim=0)[None]
        else:
            if not item.data.is_complex():
                raise ValueError("sensitivity-weighted combination needs complex coil images")
            combined = _sensitivity_combine(item.data, calib_size)
        connection.send(ImageBuffer(combined, item.reference, item.encoding_index, dict(item.meta)))
