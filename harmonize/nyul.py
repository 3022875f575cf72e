"""Nyúl–Udupa piecewise-linear histogram standardization (Nyúl, Udupa & Zhang, IEEE TMI 19(2), 2000).

Training: for each image of the reference site, take the landmarks
[p_low, deciles 10..90, p_high] (percentiles of the masked intensities), map them
linearly so that [p_low, p_high] -> [s_low, s_high], and average the mapped
landmarks over images: that is the standard scale. Application: map an image's
own landmarks onto the standard landmarks, piecewise linearly, with the end
segments extended beyond p_low and p_high.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from harmonize._arrays import as_magnitude, check_mask, fill_masked
from harmonize._piecewise import piecewise_linear
from harmonize.mask import auto_mask

DECILES = tuple(float(d) for d in range(10, 100, 10))


@dataclass(frozen=True)
class NyulScale:
    """A learned standard scale.

    percentiles: landmark percentiles in % (ascending, first = p_low, last = p_high).
    landmarks: standard-scale intensity of each landmark (dimensionless, s_low..s_high).
    n_training: number of images averaged.
    """

    percentiles: tuple[float, ...]
    landmarks: tuple[float, ...]
    n_training: int = 0

    def __post_init__(self) -> None:
        if len(self.percentiles) != len(self.landmarks) or len(self.percentiles) < 2:
            raise ValueError("NyulScale needs >= 2 percentiles and as many landmarks")
        if np.any(np.diff(self.percentiles) <= 0):
            raise ValueError(f"NyulScale percentiles must increase strictly, got {self.percentiles}")

    def to_dict(self) -> dict:
        return {
            "percentiles": list(self.percentiles),
            "landmarks": list(self.landmarks),
            "n_training": self.n_training,
        }

    @classmethod
    def from_dict(cls, d: dict) -> NyulScale:
        try:
            return cls(
                tuple(map(float, d["percentiles"])),
                tuple(map(float, d["landmarks"])),
                int(d.get("n_training", 0)),
            )
        except KeyError as exc:
            raise ValueError(f"nyul parameters need field {exc.args[0]!r}") from exc


def landmark_percentiles(p_low: float = 1.0, p_high: float = 99.0) -> tuple[float, ...]:
    """[p_low, 10, 20, ..., 90, p_high] (%), the decile landmark set of Nyúl et al."""
    if not 0 <= p_low < 10 or not 90 < p_high <= 100:
        raise ValueError(f"p_low must be in [0, 10) and p_high in (90, 100], got {p_low}, {p_high}")
    return (float(p_low), *DECILES, float(p_high))


def image_landmarks(image: np.ndarray, mask: np.ndarray, percentiles: Sequence[float]) -> np.ndarray:
    """Percentiles (%) of the masked intensities of ``image``; same units as the image."""
    return np.percentile(image[mask], percentiles)


def fit_nyul(
    images: Iterable[object],
    masks: Iterable[object | None] | None = None,
    *,
    p_low: float = 1.0,
    p_high: float = 99.0,
    s_low: float = 0.0,
    s_high: float = 100.0,
) -> NyulScale:
    """Learn the standard scale from reference-site ``images`` (each (z, y, x)).

    masks: one bool mask per image (None entries, or masks=None, use auto_mask).
    s_low/s_high: the standard scale's ends (dimensionless).
    """
    if not s_high > s_low:
        raise ValueError(f"s_high must exceed s_low, got s_low={s_low}, s_high={s_high}")
    pcs = landmark_percentiles(p_low, p_high)
    imgs = list(images)
    if not imgs:
        raise ValueError("fit_nyul needs at least one training image")
    mask_list = [None] * len(imgs) if masks is None else list(masks)
    if len(mask_list) != len(imgs):
        raise ValueError(f"got {len(imgs)} images but {len(mask_list)} masks")
    mapped = []
    for img_in, m_in in zip(imgs, mask_list, strict=True):
        img = as_magnitude(img_in)
        m = check_mask(auto_mask(img) if m_in is None else m_in, img.shape)
        lm = image_landmarks(img, m, pcs)
        if lm[-1] <= lm[0]:
            raise ValueError("a training image has p_low == p_high inside its mask (constant image)")
        mapped.append(s_low + (lm - lm[0]) * (s_high - s_low) / (lm[-1] - lm[0]))
    return NyulScale(pcs, tuple(float(v) for v in np.mean(mapped, axis=0)), len(imgs))


def apply_nyul(image: object, scale: NyulScale, mask: object | None = None) -> np.ndarray:
    """Standardize ``image`` (z, y, x) onto ``scale``; float32, background exactly 0."""
    img = as_magnitude(image)
    m = check_mask(auto_mask(img) if mask is None else mask, img.shape)
    lm = image_landmarks(img, m, scale.percentiles)
    if lm[-1] <= lm[0]:
        # every landmark would land on one point, and the whole image on s_low
        raise ValueError(
            f"image has no intensity spread between its {scale.percentiles[0]}th and "
            f"{scale.percentiles[-1]}th percentiles inside the mask (constant image): "
            "cannot standardize"
        )
    return fill_masked(piecewise_linear(img[m], lm, np.asarray(scale.landmarks)), m)
