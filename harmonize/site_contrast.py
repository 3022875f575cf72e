"""Site contrast calibration: one fixed monotone intensity curve per scanner, from unpaired scans.

A smooth gain field (``unet-gain``) removes shading and scale but cannot change contrast:
a 1.5 T and a 3 T scanner still order GM, WM and CSF alike but space them differently,
and a site classifier reads that from the histogram's shape. Matching each image's own
histogram to a reference (Nyúl, CDF) removes the shape, and with it the image's
composition -- how much CSF it holds, the biological effect a study looks for.

Here the curve belongs to the *scanner*, not to the image. For each site, the in-mask
intensity quantiles (at ``percentiles``) of a set of calibration scans -- any subjects,
unpaired, after the profile's network -- are averaged; averaging over subjects cancels
their composition and keeps what the site does to intensities. The curve maps that site's
mean quantiles onto the target site's by piecewise-linear interpolation (extended with the
end slopes), and the *same* curve is applied to every image from that site, so two
subjects scanned there keep their difference. A site that joins later is calibrated from
its own scans alone (``add_site``), without traveling subjects.

Two domains (``SiteContrast.domain``). "image": the curves act on the profile's output as
it is, shading included. "flattened": on the output with its smooth field
(``harmonize.volumes.log_field``) divided out, the field multiplied back afterwards, so a
quantile is a tissue level rather than a mix of tissue and where the head sat under the
coils. The first matches each site's *shaded* histogram on average, and with it residual
shading that differs between sites leaks into the curve as a contrast change; the second
maps tissue contrast only (docs/harmonization.md compares them).

Which curve applies comes from the scanner's identity (the MRD header's
``acquisitionSystemInformation.stationName`` in the gadget, the study's site name
offline). An image from a site the profile does not know passes unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harmonize._arrays import as_magnitude, check_mask
from harmonize._piecewise import piecewise_linear, strictly_increasing
from harmonize.volumes import field_corrected_values, log_field

#: quantile levels (percent) of the curves: 100 evenly spaced levels between 0.5 and 99.5 %.
#: Fewer levels (the 11 of Nyúl's landmarks, 7) left more of the histogram's shape to a site
#: classifier on the 48-subject study (site accuracy 0.43 / 0.46 against 0.39)
DEFAULT_PERCENTILES: tuple[float, ...] = tuple(float(p) for p in np.linspace(0.5, 99.5, 100))
#: the intensities a curve acts on: the output as it is, or with its smooth field divided out
DOMAINS = ("image", "flattened")


@dataclass(frozen=True)
class SiteCurve:
    """One site's calibration: mean in-mask quantiles (at the table's percentiles) of n_images scans."""

    quantiles: tuple[float, ...]
    n_images: int


@dataclass(frozen=True)
class SiteContrast:
    """Per-site intensity curves onto ``target_site`` (units: the profile's output before this step).

    percentiles: quantile levels in percent (increasing, in (0, 100)); sites: site name ->
    its SiteCurve; the target site's own curve is the identity and must be present; domain:
    one of DOMAINS (see the module docstring; files written before it existed are "image").
    """

    target_site: str
    percentiles: tuple[float, ...] = DEFAULT_PERCENTILES
    sites: dict[str, SiteCurve] = field(default_factory=dict)
    domain: str = "image"

    def __post_init__(self) -> None:
        if self.domain not in DOMAINS:
            raise ValueError(f"site_contrast domain must be one of {DOMAINS}, got {self.domain!r}")
        p = np.asarray(self.percentiles, dtype=float)
        if p.size < 2 or np.any(np.diff(p) <= 0) or p[0] <= 0 or p[-1] >= 100:
            raise ValueError(
                f"site_contrast percentiles must increase within (0, 100), got {self.percentiles}"
            )
        if self.target_site not in self.sites:
            raise ValueError(
                f"site_contrast needs its target site {self.target_site!r} among its sites "
                f"{sorted(self.sites)}"
            )
        for name, curve in self.sites.items():
            if len(curve.quantiles) != p.size:
                raise ValueError(
                    f"site_contrast site {name!r} has {len(curve.quantiles)} quantiles, expected {p.size}"
                )
            if not np.all(np.isfinite(curve.quantiles)) or np.any(np.diff(curve.quantiles) < 0):
                raise ValueError(f"site_contrast site {name!r}: quantiles must be finite and non-decreasing")

    def to_dict(self) -> dict[str, Any]:
        return {
            "target_site": self.target_site,
            "domain": self.domain,
            "percentiles": list(self.percentiles),
            "sites": {
                k: {"quantiles": list(v.quantiles), "n_images": v.n_images} for k, v in self.sites.items()
            },
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SiteContrast:
        try:
            return cls(
                str(d["target_site"]),
                tuple(float(p) for p in d["percentiles"]),
                {
                    str(k): SiteCurve(tuple(float(q) for q in v["quantiles"]), int(v["n_images"]))
                    for k, v in d["sites"].items()
                },
                str(d.get("domain", "image")),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(
                "site_contrast must be {target_site, percentiles, sites: {name: {quantiles, n_images}}, "
                "domain (optional)}"
            ) from exc


def mean_quantiles(
    images: Sequence[object], masks: Sequence[object], percentiles: Sequence[float], domain: str = "image"
) -> np.ndarray:
    """Mean over images of each image's in-mask quantiles at ``percentiles`` (percent), shape (P,),
    in ``domain`` (one of DOMAINS)."""
    if not images or len(images) != len(masks):
        raise ValueError(f"need >= 1 image and one mask per image, got {len(images)} and {len(masks)}")
    if domain not in DOMAINS:
        raise ValueError(f"site contrast domain must be one of {DOMAINS}, got {domain!r}")
    rows = []
    for im, mk in zip(images, masks, strict=True):
        x = as_magnitude(im)
        m = check_mask(mk, x.shape)
        if not m.any():
            raise ValueError("a calibration image has an empty mask")
        values = field_corrected_values(x, m) if domain == "flattened" else x[m]
        rows.append(np.percentile(values, percentiles))
    return np.mean(rows, axis=0)


def calibrate_sites(
    scans_by_site: dict[str, tuple[Sequence[object], Sequence[object]]],
    target_site: str,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    domain: str = "image",
) -> SiteContrast:
    """Site curves from calibration scans: site name -> (images, masks), the target among them.

    The images must already be in the units the curves will be applied in (the profile's
    output before this step). Any subjects will do; pairing is not needed. domain: one of
    DOMAINS.
    """
    if target_site not in scans_by_site:
        raise ValueError(
            f"calibration needs scans of the target site {target_site!r}, got {sorted(scans_by_site)}"
        )
    p = tuple(float(v) for v in percentiles)
    sites = {
        name: SiteCurve(tuple(float(q) for q in mean_quantiles(ims, mks, p, domain)), len(ims))
        for name, (ims, mks) in scans_by_site.items()
    }
    return SiteContrast(target_site, p, sites, domain)


def add_site(
    contrast: SiteContrast, site: str, images: Sequence[object], masks: Sequence[object]
) -> SiteContrast:
    """``contrast`` with ``site`` (re)calibrated from its own scans (profile-output units)."""
    q = mean_quantiles(images, masks, contrast.percentiles, contrast.domain)
    return SiteContrast(
        contrast.target_site,
        contrast.percentiles,
        {**contrast.sites, site: SiteCurve(tuple(float(v) for v in q), len(images))},
        contrast.domain,
    )


def apply_site_contrast(image: object, mask: object, contrast: SiteContrast, site: str | None) -> np.ndarray:
    """``image`` (z, y, x) through ``site``'s curve inside ``mask`` (0 outside), float32.

    In the "flattened" domain the curve maps the image divided by its smooth field, and the
    field is multiplied back: a monotone map of each voxel's intensity (the field fixed), so
    the image's shading and anatomy stay. A site the table does not hold (or None) returns
    the masked image unchanged.
    """
    x = as_magnitude(image)
    m = check_mask(mask, x.shape)
    curve = contrast.sites.get(site) if site is not None else None
    if curve is None:
        return np.where(m, x, 0).astype(np.float32)
    src = strictly_increasing(np.asarray(curve.quantiles))
    tgt = np.asarray(contrast.sites[contrast.target_site].quantiles, dtype=np.float64)
    gain = log_field(x, m)[m] if contrast.domain == "flattened" else 1.0
    out = np.zeros_like(x, dtype=np.float32)
    # magnitude stays >= 0 where the lower end slope would extrapolate below zero
    out[m] = gain * np.maximum(piecewise_linear(x[m].astype(np.float64) / gain, src, tgt), 0.0)
    return out
