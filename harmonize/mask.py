"""Automatic foreground (head/brain) mask for harmonization.

The threshold is Otsu's (1979) between-class-variance optimum, computed on the
*logarithm* of the smoothed magnitude: in magnitude MR images the background
(Rayleigh noise) and the darkest tissue (CSF in T1w) differ by a large factor
but both sit at the low end of a linear histogram dominated by bright tissue,
so a linear Otsu split tends to cut through CSF. In log space the noise floor
and the tissue form two well separated classes. Otsu still weighs the tissue
classes' spread, so at low SNR its split can land above dim CSF; the threshold is
therefore capped at ``noise_factor`` times the background mode (the peak of
the log-histogram below Otsu's split): for smoothed Rayleigh noise that cap lies
many noise standard deviations above the background, and well below any tissue
with SNR > ~3.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from harmonize._arrays import as_magnitude


def otsu_threshold(values: np.ndarray, n_bins: int = 256) -> float:
    """Otsu threshold of a 1-D sample: the bin edge maximising between-class variance.

    values: any shape, flattened. Returns a value in the sample's units.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return lo
    hist, edges = np.histogram(v, bins=n_bins, range=(lo, hi))
    p = hist / hist.sum()
    centers = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(p)  # weight of the class below each candidate split
    m0 = np.cumsum(p * centers)
    mt = m0[-1]
    w1 = 1.0 - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mt * w0 - m0) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = -1.0
    # between-class variance is flat across empty bins separating the classes: take the
    # middle of that plateau, not its first bin, so the split is centred in the gap
    best = np.flatnonzero(between >= between.max() * (1 - 1e-12))
    run_end = best[0]
    while run_end + 1 in best:
        run_end += 1
    return float(0.5 * (edges[best[0] + 1] + edges[run_end + 1]))


def auto_mask(image: object, smoothing_sigma_vox: float = 1.0, noise_factor: float = 2.5) -> np.ndarray:
    """Foreground mask of a magnitude image.

    image: (z, y, x) or (y, x) magnitude (complex is reduced to magnitude), any units.
    smoothing_sigma_vox: in-plane Gaussian smoothing (voxels) before thresholding;
        slices are not smoothed across z because 2-D protocols have thick, few slices.
    noise_factor: the threshold is at most this multiple of the background (noise) mode.
    Returns a bool array of the image's shape: the largest 3-D connected component
    above the log-Otsu threshold, with holes filled slice by slice (ventricles and
    dark lesions are inside the head and must be harmonized too).
    """
    mag = as_magnitude(image)
    if smoothing_sigma_vox < 0:
        raise ValueError(f"smoothing_sigma_vox must be >= 0, got {smoothing_sigma_vox}")
    if noise_factor <= 1:
        raise ValueError(f"noise_factor must be > 1, got {noise_factor}")
    vol = mag[None] if mag.ndim == 2 else mag
    sigma = (0.0, smoothing_sigma_vox, smoothing_sigma_vox)
    smoothed = ndimage.gaussian_filter(vol, sigma=sigma) if smoothing_sigma_vox > 0 else vol
    peak = float(smoothed.max())
    if peak <= 0:
        raise ValueError("image is all zero: there is no foreground to mask")
    # floor at 1e-4 of the peak so exact zeros (zero-filled or noise-free data) do not
    # create a -inf class that drags Otsu's split to the bottom
    log_img = np.log(np.maximum(smoothed, 1e-4 * peak))
    # voxels at the floor (exact zeros: zero-filled or cropped regions) are background
    # for certain; leaving them in would make them Otsu's "background" class and push
    # real noise into the foreground
    floor = np.log(1e-4 * peak)
    informative = log_img[log_img > floor + 1e-9]
    if informative.size < 2:
        raise ValueError("image has fewer than 2 non-zero voxels: there is no foreground to mask")
    t_otsu = otsu_threshold(informative)
    below = informative[informative <= t_otsu]
    hist, edges = np.histogram(below, bins=128)
    k = int(np.argmax(hist))
    background_mode = 0.5 * (edges[k] + edges[k + 1])
    # the cap never goes below 5 % of the bright tissue: without noise (simulated, or
    # zero-filled background) the "noise mode" is the floor and the cap would keep
    # the far tails of the smoothing kernel
    cap = max(background_mode + np.log(noise_factor), np.log(0.05 * np.percentile(smoothed, 99)))
    fg = log_img > min(t_otsu, cap)
    labels, n = ndimage.label(fg)
    if n == 0:
        raise ValueError("no foreground found above the Otsu threshold")
    sizes = ndimage.sum_labels(fg, labels, index=np.arange(1, n + 1))
    fg = labels == (int(np.argmax(sizes)) + 1)
    for z in range(fg.shape[0]):
        fg[z] = ndimage.binary_fill_holes(fg[z])
    return fg[0] if mag.ndim == 2 else fg
