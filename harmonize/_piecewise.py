"""Monotone piecewise-linear intensity maps through landmark pairs.

Both Nyúl–Udupa standardization and quantile (CDF) alignment map an image's own
landmarks (intensity quantiles) onto target landmarks and interpolate linearly
in between; beyond the first and last landmark the end segments are extended
(Nyúl & Udupa 1999 map [min, p_low] and [p_high, max] with the end slopes).
"""

from __future__ import annotations

import numpy as np


def strictly_increasing(x: np.ndarray) -> np.ndarray:
    """Nudge non-decreasing knots apart so interpolation is well defined.

    Quantiles of images with large uniform regions (zero-filled, piecewise-constant
    phantoms) repeat; np.interp then picks an arbitrary side. A spacing of 1e-9 of
    the knot range makes the map well defined and changes no value measurably.
    """
    x = np.maximum.accumulate(np.asarray(x, dtype=np.float64))
    span = float(x[-1] - x[0]) or 1.0
    return x + np.arange(x.size) * (1e-9 * span)


def piecewise_linear(values: np.ndarray, source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Map ``values`` through the polyline (source[k] -> target[k]), extrapolating the end slopes.

    source must be non-decreasing (it is made strictly increasing); target any monotone
    sequence of the same length (>= 2).
    """
    xs = strictly_increasing(source)
    ys = np.asarray(target, dtype=np.float64)
    if xs.size != ys.size or xs.size < 2:
        raise ValueError(f"need >= 2 matching landmarks, got {xs.size} source and {ys.size} target")
    out = np.interp(values, xs, ys)
    lo = values < xs[0]
    hi = values > xs[-1]
    out[lo] = ys[0] + (values[lo] - xs[0]) * (ys[1] - ys[0]) / (xs[1] - xs[0])
    out[hi] = ys[-1] + (values[hi] - xs[-1]) * (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
    return out
