"""WhiteStripe normalization (Shinohara et al., NeuroImage: Clinical 6, 2014).

WhiteStripe references intensities to normal-appearing white matter without a
segmentation: the WM forms a mode of the smoothed intensity histogram (for T1w
the highest-intensity major mode, for T2w/FLAIR-like contrast the largest mode),
and the "white stripe" is the set of voxels whose intensity quantile lies within
±tau of that mode's quantile. The image is then expressed in units of the
stripe: (I - mean_stripe) / sd_stripe.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.signal import find_peaks

from harmonize._arrays import as_magnitude, check_mask, fill_masked
from harmonize.mask import auto_mask

CONTRASTS = ("T1", "T2")


@dataclass(frozen=True)
class WhiteStripe:
    """The stripe found in one image (all intensities in the image's units).

    mode: WM mode of the smoothed histogram; mode_quantile: its empirical CDF value;
    lower/upper: intensity bounds of the stripe; mean/sd: stripe statistics used to
    normalize; n_voxels: stripe size.
    """

    mode: float
    mode_quantile: float
    lower: float
    upper: float
    mean: float
    sd: float
    n_voxels: int


def histogram_modes(
    values: np.ndarray, n_bins: int = 512, smoothing_bins: float = 4.0, min_prominence: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """Major modes of a smoothed histogram.

    values: 1-D sample. The histogram spans the 0.1–99.9 % quantiles (so isolated
    outliers do not squeeze the tissue peaks into a few bins) and is smoothed by a
    Gaussian of ``smoothing_bins`` bins. A peak is "major" if its prominence is at
    least ``min_prominence`` times the tallest bin.
    Returns (mode intensities ascending, smoothed heights at those modes).
    """
    lo, hi = np.quantile(values, [0.001, 0.999])
    if hi <= lo:
        return np.array([float(lo)]), np.array([float(values.size)])
    hist, edges = np.histogram(values, bins=n_bins, range=(lo, hi))
    smooth = gaussian_filter1d(hist.astype(np.float64), smoothing_bins, mode="constant")
    # pad with zeros so a mode at either end of the range still counts as a peak
    padded = np.concatenate(([0.0], smooth, [0.0]))
    peaks, _ = find_peaks(padded, prominence=min_prominence * smooth.max())
    peaks = peaks - 1
    centers = 0.5 * (edges[:-1] + edges[1:])
    return centers[peaks], smooth[peaks]


def find_white_stripe(
    image: object,
    mask: object | None = None,
    *,
    tau: float = 0.05,
    contrast: str = "T1",
    n_bins: int = 512,
    smoothing_bins: float = 4.0,
) -> WhiteStripe:
    """Locate the white stripe of ``image`` (z, y, x) inside ``mask``.

    tau: half-width of the stripe in quantile units (0 < tau < 0.5; 0.05 as published).
    contrast: "T1" picks the highest-intensity major mode, "T2" the largest mode.
    """
    if not 0 < tau < 0.5:
        raise ValueError(f"tau must be in (0, 0.5), got {tau}")
    if contrast not in CONTRASTS:
        raise ValueError(f"contrast must be one of {CONTRASTS}, got {contrast!r}")
    img = as_magnitude(image)
    m = check_mask(auto_mask(img) if mask is None else mask, img.shape)
    vals = np.sort(img[m])
    modes, heights = histogram_modes(vals, n_bins=n_bins, smoothing_bins=smoothing_bins)
    mode = float(modes[-1] if contrast == "T1" else modes[int(np.argmax(heights))])
    q_mode = float(np.searchsorted(vals, mode, side="right")) / vals.size
    lower, upper = np.quantile(vals, [max(q_mode - tau, 0.0), min(q_mode + tau, 1.0)])
    stripe = vals[(vals >= lower) & (vals <= upper)]
    sd = float(stripe.std())
    if stripe.size < 2 or sd <= 0:
        raise ValueError("the white stripe is degenerate (fewer than 2 distinct intensities); check the mask")
    return WhiteStripe(mode, q_mode, float(lower), float(upper), float(stripe.mean()), sd, int(stripe.size))


def whitestripe(
    image: object, mask: object | None = None, *, tau: float = 0.05, contrast: str = "T1"
) -> np.ndarray:
    """WhiteStripe-normalize ``image`` (z, y, x): (I - mean_stripe) / sd_stripe in the mask.

    mask: bool (z, y, x), auto_mask if None. Returns float32, dimensionless (WM ≈ 0),
    background exactly 0.
    """
    img = as_magnitude(image)
    m = check_mask(auto_mask(img) if mask is None else mask, img.shape)
    ws = find_white_stripe(img, m, tau=tau, contrast=contrast)
    return fill_masked((img[m] - ws.mean) / ws.sd, m)
