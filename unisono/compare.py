"""How alike two sites' images of one subject are, inside the brain mask.

Used by the demo's summary; the full traveling-subject evaluation lives in
``harmonize`` (SSIM, histogram distances, site classifier, ...).
"""

from __future__ import annotations

import numpy as np


def symmetric_nrmse(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """‖a − b‖ / ‖(a + b)/2‖ over the mask: symmetric, so neither site is "the truth"."""
    a, b = a[mask].astype(np.float64), b[mask].astype(np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(0.5 * (a + b)), 1e-30))


def _pairwise(stacks: list[np.ndarray], mask: np.ndarray) -> dict[str, float]:
    values = [
        symmetric_nrmse(stacks[i], stacks[j], mask)
        for i in range(len(stacks))
        for j in range(i + 1, len(stacks))
    ]
    means = [float(s[mask].mean()) for s in stacks]
    return {
        "nrmse": float(np.mean(values)),
        "mean_in_mask": means,
        "relative_spread_of_means": float(np.std(means) / max(abs(np.mean(means)), 1e-30)),
    }


def compare_sites(
    originals: list[np.ndarray], harmonized: list[np.ndarray], mask: np.ndarray
) -> dict[str, dict]:
    """Inter-site differences before and after harmonization.

    ``raw`` compares the images as the scanners deliver them; ``raw_mean_scaled``
    first divides each by its mean in the mask (the trivial global fix), so the
    gain that harmonization brings beyond a global scale is visible too.
    Arrays are (z, y, x); ``mask`` is the brain mask on the same grid.
    """
    mask = mask.astype(bool)
    scaled = [s / max(float(s[mask].mean()), 1e-30) for s in originals]
    return {
        "raw": _pairwise(originals, mask),
        "raw_mean_scaled": _pairwise(scaled, mask),
        "harmonized": _pairwise(harmonized, mask),
    }
