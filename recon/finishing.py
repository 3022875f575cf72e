"""Image finishing: magnitude/complex output and intensity scaling."""

from __future__ import annotations

import torch

__all__ = ["magnitude", "scale_to_max"]


def magnitude(img: torch.Tensor) -> torch.Tensor:
    """Magnitude image as float32 (z, y, x) from a complex or real image."""
    return (img.abs() if img.is_complex() else img.abs()).to(torch.float32)


def scale_to_max(img: torch.Tensor, maximum: float = 4095.0) -> tuple[torch.Tensor, float]:
    """Scale an image so that its largest magnitude equals ``maximum``.

    DICOM viewers expect 12-bit ranges; this is used by the exporters, not the
    default chain (which keeps physical, unit-noise intensities).

    Returns:
        The scaled image and the factor that was applied.
    """
    peak = float(img.abs().max()) if img.numel() else 0.0
    factor = maximum / peak if peak > 0 else 1.0
    return img * factor, factor
