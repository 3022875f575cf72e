"""Input checks and array conventions shared by every harmonization method.

Images are magnitude arrays shaped (z, y, x) (a single 2-D slice (y, x) is also
accepted); masks are boolean arrays of the same shape. Methods compute in
float64 (histogram landmarks of float32 data lose precision in the tails) and
return float32, as the image export path expects.
"""

from __future__ import annotations

import numpy as np


def as_magnitude(image: object, name: str = "image") -> np.ndarray:
    """Return ``image`` as a float64 magnitude array, checking shape and values.

    Complex input is reduced to its magnitude because every method here works on
    magnitude images (the phase carries no site-independent contrast).
    """
    try:
        arr = np.asarray(image.detach().cpu().numpy() if hasattr(image, "detach") else image)
    except Exception as exc:  # e.g. ragged lists
        raise ValueError(f"{name} must be an array-like of numbers, got {type(image).__name__}") from exc
    if arr.ndim not in (2, 3):
        raise ValueError(f"{name} must be 2-D (y, x) or 3-D (z, y, x), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {arr.shape}")
    if np.iscomplexobj(arr):
        arr = np.abs(arr)
    if not np.issubdtype(arr.dtype, np.number) and arr.dtype != bool:
        raise ValueError(f"{name} must hold numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must contain only finite values (found NaN or inf)")
    return arr


def check_mask(mask: object, shape: tuple[int, ...], name: str = "mask") -> np.ndarray:
    """Return ``mask`` as a boolean array of ``shape``; it must select at least 2 voxels."""
    m = np.asarray(mask.detach().cpu().numpy() if hasattr(mask, "detach") else mask)
    if m.shape != tuple(shape):
        raise ValueError(f"{name} must have the image's shape {tuple(shape)}, got {m.shape}")
    if m.dtype != bool:
        if not np.all(np.isin(m, (0, 1))):
            raise ValueError(f"{name} must be boolean (or 0/1), got values other than 0 and 1")
        m = m.astype(bool)
    if int(m.sum()) < 2:
        raise ValueError(f"{name} must select at least 2 voxels, got {int(m.sum())}")
    return m


def fill_masked(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Scatter the harmonized in-mask ``values`` into a zero float32 image.

    Outside the mask the output is exactly 0: harmonization must never turn the
    background into amplified noise (an affine map of noise is still noise).
    """
    out = np.zeros(mask.shape, dtype=np.float32)
    out[mask] = values
    return out
