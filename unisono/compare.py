"""How alike two or more sites' images of one subject are, inside the brain mask.

Used by the demo's summary. The measures are the traveling-subject ones of
``harmonize.metrics`` (SSIM, tissue-mean spread) plus an RMS difference
relative to the pooled intensity spread; the full evaluation (histogram
distances, site classifier, biological effect) is ``unisono harmonize evaluate``.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

from harmonize.metrics import ssim, tissue_mean_spread

#: tissue label values used for the tissue-mean spread
GM, WM, CSF = 1, 2, 3


def tissue_labels(tissue_maps: dict[str, np.ndarray], mask: np.ndarray) -> np.ndarray:
    """Hard labels (0 outside, GM=1, WM=2, CSF=3) from fractional tissue maps (z, y, x)."""
    stack = np.stack([tissue_maps["gm"], tissue_maps["wm"], tissue_maps["csf"]])
    labels = np.argmax(stack, axis=0) + 1
    return np.where(mask & (stack.max(axis=0) > 0.5), labels, 0)


def relative_rms_difference(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """RMS(a − b) / SD of the pooled in-mask intensities of a and b.

    Invariant to a common gain and offset, so it is meaningful both for images in
    scanner units and for harmonized (signed, z-scored) intensities; 0 = identical,
    about 1.4 = unrelated images of equal spread.
    """
    x, y = a[mask].astype(np.float64), b[mask].astype(np.float64)
    spread = np.std(np.concatenate([x, y]))
    return float(np.sqrt(np.mean((x - y) ** 2)) / max(spread, 1e-30))


def _pairwise(stacks: list[np.ndarray], mask: np.ndarray, labels: np.ndarray) -> dict[str, object]:
    pairs = list(combinations(range(len(stacks)), 2))
    return {
        "relative_rms_difference": float(
            np.mean([relative_rms_difference(stacks[i], stacks[j], mask) for i, j in pairs])
        ),
        "ssim": float(np.mean([ssim(stacks[i], stacks[j], mask) for i, j in pairs])),
        "tissue_mean_spread": float(
            tissue_mean_spread(stacks, [labels] * len(stacks), tissues=(GM, WM, CSF), wm=WM, csf=CSF)
        ),
        "mean_in_mask": [float(s[mask].mean()) for s in stacks],
    }


def compare_sites(
    originals: list[np.ndarray],
    harmonized: list[np.ndarray],
    mask: np.ndarray,
    tissue_maps: dict[str, np.ndarray],
) -> dict[str, dict]:
    """Inter-site differences before and after harmonization, averaged over site pairs.

    ``raw`` compares the images as the scanners deliver them; ``raw_mean_scaled`` first
    divides each by its mean in the mask (the trivial global fix), so what harmonization
    brings beyond a global scale is visible too. Arrays are (z, y, x) on the phantom's grid;
    ``mask`` is the brain mask and ``tissue_maps`` the phantom's GM/WM/CSF fractions.
    """
    mask = mask.astype(bool)
    labels = tissue_labels(tissue_maps, mask)
    scaled = [s / max(float(s[mask].mean()), 1e-30) for s in originals]
    return {
        "raw": _pairwise(originals, mask, labels),
        "raw_mean_scaled": _pairwise(scaled, mask, labels),
        "harmonized": _pairwise(harmonized, mask, labels),
    }
