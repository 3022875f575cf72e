"""CDF alignment to a reference site (quantile matching, in the spirit of MICA).

MICA (Wrobel et al., NeuroImage 2020, "Intensity warping for multisite MRI
harmonization") warps each image's intensity CDF onto a reference CDF with a
smooth monotone function. Here the warp is the monotone piecewise-linear map
through matched quantiles at ``n_quantiles`` probability levels: dense enough to
match the whole histogram shape (unlike Nyúl's 11 landmarks), coarse enough to
be smooth and not to chase noise. The reference quantile function is the mean of
the training images' quantile functions — the 1-D Wasserstein barycentre of
their intensity distributions.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from harmonize._arrays import as_magnitude, check_mask, fill_masked
from harmonize._piecewise import piecewise_linear
from harmonize.mask import auto_mask


@dataclass(frozen=True)
class CdfReference:
    """Reference intensity distribution.

    probabilities: CDF levels in (0, 1), ascending. quantiles: reference intensity at
    each level (reference-site units). n_training: images averaged.
    """

    probabilities: tuple[float, ...]
    quantiles: tuple[float, ...]
    n_training: int = 0

    def __post_init__(self) -> None:
        if len(self.probabilities) != len(self.quantiles) or len(self.probabilities) < 2:
            raise ValueError("CdfReference needs >= 2 probabilities and as many quantiles")
        p = np.asarray(self.probabilities)
        if np.any(np.diff(p) <= 0) or p[0] < 0 or p[-1] > 1:
            raise ValueError("CdfReference probabilities must increase strictly within [0, 1]")

    def to_dict(self) -> dict:
        return {
            "probabilities": list(self.probabilities),
            "quantiles": list(self.quantiles),
            "n_training": self.n_training,
        }

    @classmethod
    def from_dict(cls, d: dict) -> CdfReference:
        try:
            return cls(
                tuple(map(float, d["probabilities"])),
                tuple(map(float, d["quantiles"])),
                int(d.get("n_training", 0)),
            )
        except KeyError as exc:
            raise ValueError(f"cdf parameters need field {exc.args[0]!r}") from exc


def probability_grid(n_quantiles: int = 128, tail: float = 0.002) -> np.ndarray:
    """``n_quantiles`` equally spaced CDF levels from ``tail`` to 1 - ``tail``.

    The extreme tails are left out: a handful of outlier voxels must not set the
    end slopes of the warp.
    """
    if n_quantiles < 2:
        raise ValueError(f"n_quantiles must be >= 2, got {n_quantiles}")
    if not 0 <= tail < 0.25:
        raise ValueError(f"tail must be in [0, 0.25), got {tail}")
    return np.linspace(tail, 1.0 - tail, n_quantiles)


def fit_cdf_reference(
    images: Iterable[object],
    masks: Iterable[object | None] | None = None,
    *,
    n_quantiles: int = 128,
    tail: float = 0.002,
) -> CdfReference:
    """Average quantile function of reference-site ``images`` (each (z, y, x)) inside their masks."""
    probs = probability_grid(n_quantiles, tail)
    imgs = list(images)
    if not imgs:
        raise ValueError("fit_cdf_reference needs at least one training image")
    mask_list = [None] * len(imgs) if masks is None else list(masks)
    if len(mask_list) != len(imgs):
        raise ValueError(f"got {len(imgs)} images but {len(mask_list)} masks")
    qs = []
    for img_in, m_in in zip(imgs, mask_list, strict=True):
        img = as_magnitude(img_in)
        m = check_mask(auto_mask(img) if m_in is None else m_in, img.shape)
        qs.append(np.quantile(img[m], probs))
    return CdfReference(tuple(map(float, probs)), tuple(float(v) for v in np.mean(qs, axis=0)), len(imgs))


def cdf_align(image: object, reference: CdfReference, mask: object | None = None) -> np.ndarray:
    """Warp ``image`` (z, y, x) so its masked CDF matches ``reference``; float32, background 0."""
    img = as_magnitude(image)
    m = check_mask(auto_mask(img) if mask is None else mask, img.shape)
    src = np.quantile(img[m], reference.probabilities)
    return fill_masked(piecewise_linear(img[m], src, np.asarray(reference.quantiles)), m)
