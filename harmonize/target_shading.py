"""The target scanner's own smooth shading, put on a bias-corrected output.

A scanner's receive (coil) and transmit (B1+) shading is a property of the scanner: for a
head at the same place in the same coils it is the same smooth field in every image.
A learned profile's network maps each scan's shading onto the target site's as well as it
can guess it from the image; scans of one subject from two sites then carry two slightly
different guesses (``docs/harmonization.md``, *What W1 measures*). With
``output_shading: "target"`` the profile instead divides its output's own smooth field out
(as ``"removed"`` does, the site curves then act on that flat output) and multiplies in
one field calibrated from the target site's own scans: every output carries the same
shading, the target scanner's, whichever scanner it came from.

The field is the mean, over the target site's calibration scans (unharmonized, any
subjects), of ``harmonize.volumes.log_field``'s polynomial: a quadratic in the in-plane
coordinates (and linear in z for stacks of three or more slices), on coordinates that run
from -1 to 1 across the image matrix. It is stored as those coefficients, so it holds for
any matrix size with the field of view and head position of the calibration scans; an
image with fewer slices than three ignores the z term. Applied, the field is scaled to a
mean of 1 over the image's mask, so a flat region keeps its mean intensity.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from harmonize._arrays import as_magnitude, check_mask
from harmonize.volumes import LOG_FIELD_TERMS, log_field_coefficients, poly_basis

#: the terms of the stored field: log_field's, without its constant (the scale is set per image)
FIELD_TERMS = LOG_FIELD_TERMS[1:]
#: the terms every stored field has; "z" only comes from stacks of three slices or more
IN_PLANE_TERMS = FIELD_TERMS[:5]


@dataclass(frozen=True)
class TargetShading:
    """The target site's smooth shading (parameters["target_shading"] of a learned profile).

    Attributes:
        site: the scanner whose shading this is (the profile's target site).
        coefficients: term name (FIELD_TERMS) -> coefficient of log intensity; a stack's z
            term is absent when the calibration scans had fewer than three slices.
        n_images: how many calibration scans the mean is over.
    """

    site: str
    coefficients: dict[str, float]
    n_images: int

    def __post_init__(self) -> None:
        if not isinstance(self.site, str) or not self.site:
            raise ValueError(f"target_shading.site must be a site name, got {self.site!r}")
        unknown = set(self.coefficients) - set(FIELD_TERMS)
        if unknown:
            raise ValueError(
                f"target_shading.coefficients: unknown terms {sorted(unknown)} (allowed: {FIELD_TERMS})"
            )
        missing = [t for t in IN_PLANE_TERMS if t not in self.coefficients]
        if missing:
            raise ValueError(f"target_shading.coefficients: missing in-plane terms {missing}")
        for term, value in self.coefficients.items():
            if not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(
                    f"target_shading.coefficients[{term!r}] must be a finite number, got {value!r}"
                )
        if not isinstance(self.n_images, int) or self.n_images < 1:
            raise ValueError(f"target_shading.n_images must be a positive integer, got {self.n_images!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"site": self.site, "coefficients": dict(self.coefficients), "n_images": self.n_images}

    @classmethod
    def from_dict(cls, d: Any) -> TargetShading:
        """The table from its profile form; one clear error naming the field otherwise."""
        if not isinstance(d, dict):
            raise ValueError(f"target_shading must be a table, got {type(d).__name__}")
        for key in ("site", "coefficients", "n_images"):
            if key not in d:
                raise ValueError(f"target_shading needs {key!r}")
        if not isinstance(d["coefficients"], dict):
            raise ValueError("target_shading.coefficients must be a table of term -> number")
        return cls(d["site"], {str(k): v for k, v in d["coefficients"].items()}, d["n_images"])

    def log_field(self, shape: tuple[int, ...]) -> np.ndarray:
        """log of the field on a (z, y, x) grid, up to a constant."""
        basis = poly_basis(shape)  # terms as LOG_FIELD_TERMS, z only for three slices or more
        terms = LOG_FIELD_TERMS[1 : basis.shape[0]]
        return np.tensordot([self.coefficients.get(t, 0.0) for t in terms], basis[1:], axes=1)


def calibrate_target_shading(images: Sequence[object], masks: Sequence[object], site: str) -> TargetShading:
    """The target shading from the target site's unharmonized scans (z, y, x or y, x), all of one shape."""
    if not images or len(images) != len(masks):
        raise ValueError(f"need >= 1 image and one mask per image, got {len(images)} and {len(masks)}")
    rows = [log_field_coefficients(image, mask) for image, mask in zip(images, masks, strict=True)]
    if len({r.size for r in rows}) != 1:
        raise ValueError("target shading calibration scans must all have the same number of slices")
    mean = np.mean(rows, axis=0)
    terms = LOG_FIELD_TERMS[: mean.size]
    return TargetShading(site, {t: float(c) for t, c in zip(terms[1:], mean[1:], strict=True)}, len(rows))


def apply_target_shading(image: object, mask: object, table: TargetShading) -> np.ndarray:
    """``image`` (a flat, bias-corrected output, z, y, x) times the target's field, scaled to a
    mean of 1 over ``mask``; 0 outside ``mask``, float32."""
    x = as_magnitude(image)
    m = check_mask(mask, x.shape)
    vol, mv = (x[None], m[None]) if x.ndim == 2 else (x, m)
    log_f = table.log_field(vol.shape)
    field = np.exp(log_f - log_f[mv].max())  # the shift keeps exp finite; the mean fixes the scale
    field /= field[mv].mean()
    out = np.where(mv, vol * field, 0).astype(np.float32)
    return out[0] if x.ndim == 2 else out
