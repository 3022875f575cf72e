"""Z-score normalization within a foreground mask.

out = (I - mean_mask(I)) / sd_mask(I) inside the mask, 0 outside (population sd,
ddof = 0, so the masked output has exactly mean 0 and sd 1).
"""

from __future__ import annotations

import numpy as np

from harmonize._arrays import as_magnitude, check_mask, fill_masked
from harmonize.mask import auto_mask


def zscore(image: object, mask: object | None = None) -> np.ndarray:
    """Z-score ``image`` (z, y, x) inside ``mask`` (bool, same shape; auto_mask if None).

    Returns float32 of the image's shape, dimensionless; background exactly 0.
    """
    img = as_magnitude(image)
    m = check_mask(auto_mask(img) if mask is None else mask, img.shape)
    vals = img[m]
    sd = float(vals.std())
    if sd <= 0:
        raise ValueError("image is constant inside the mask: its standard deviation is 0, cannot z-score")
    return fill_masked((vals - vals.mean()) / sd, m)
