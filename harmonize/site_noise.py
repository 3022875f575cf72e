"""Site noise levels: one thermal-noise level per scanner, brought down to the target site's.

Scanners differ in SNR as much as in contrast: field strength, coils and bandwidth set how
much thermal noise an image carries relative to its tissue signal. A gain field and a
contrast curve map intensities; they cannot change how much noise rides on them, and at a
realistic SNR a site classifier reads the noise texture (docs/harmonization.md, *Realistic
thermal noise*: siteB at 1.5 T carries 2.3x siteA's relative noise).

Each site's relative noise level ν (image noise sd / parenchyma level, dimensionless) is
calibrated from its own scans and the noise sd of the recon's units, which the recon knows
rather than estimates: prewhitened channels have unit complex variance, so a
root-sum-of-squares magnitude carries noise sd 1/√2 (``PREWHITENED_RSS_NOISE_SD``) wherever
the signal is well above the noise. An image from a site noisier than the target is blended
with a non-local-means estimate of itself, ``(1 − w) x + w NLM(x)`` with
w = 1 − ν_target / ν_site: the blend keeps a fraction (1 − w) of the noise, which brings ν
down to the target's for a perfect estimate. The NLM filter parameter is
``strength × ν_site × parenchyma level`` of the image it acts on. Sites at or below the
target's level pass unchanged, as does a site the table does not know.

Where the step sits (``placement``): "before_curves", the default since the twelfth session,
filters the output as the anchor leaves it, where its noise is exactly the scanner's
relative noise, and the site curves are then calibrated on the filtered output, so they map
the distribution the filtered images have. "after_curves" filters the curves' output, as
tables written before the field existed do (``from_dict`` reads them so): their curves were
calibrated without the step, and each filtered site's upper quantiles then come out below
the target's, which moves a read-out of the parenchyma level (docs/harmonization.md,
*The noise step before the curves*).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy import ndimage

from harmonize._arrays import as_magnitude, check_mask
from harmonize.volumes import parenchyma_level

#: where a profile applies the noise step: on the anchored output the curves are calibrated
#: on, or on the curves' output (tables without the field)
PLACEMENTS = ("before_curves", "after_curves")

#: magnitude noise sd of a root-sum-of-squares image of prewhitened channels (unit complex
#: variance, 1/2 per real component), the recon's units (gadgets.prewhiten, gadgets.combine)
PREWHITENED_RSS_NOISE_SD = float(np.sqrt(0.5))


@dataclass(frozen=True)
class SiteNoise:
    """Per-site relative noise levels and the filter that brings them down to ``target_site``'s.

    levels: site name -> ν (noise sd / parenchyma level, the median over its calibration
    scans); n_images: site name -> how many scans calibrated it; strength: NLM filter
    parameter in units of the image's noise sd; patch_radius, search_radius: NLM patch
    (2r+1)² and search window (2r+1)², pixels, in-plane; placement: one of PLACEMENTS (see the
    module docstring).
    """

    target_site: str
    levels: dict[str, float] = field(default_factory=dict)
    n_images: dict[str, int] = field(default_factory=dict)
    strength: float = 1.0
    patch_radius: int = 1
    search_radius: int = 3
    placement: str = "before_curves"

    def __post_init__(self) -> None:
        if self.placement not in PLACEMENTS:
            raise ValueError(f"site_noise placement must be one of {PLACEMENTS}, got {self.placement!r}")
        if self.target_site not in self.levels:
            raise ValueError(
                f"site_noise needs its target site {self.target_site!r} among its sites {sorted(self.levels)}"
            )
        for name, level in self.levels.items():
            if not (np.isfinite(level) and level > 0):
                raise ValueError(f"site_noise site {name!r}: level must be a finite number > 0, got {level}")
        if not (np.isfinite(self.strength) and self.strength > 0):
            raise ValueError(f"site_noise strength must be a finite number > 0, got {self.strength}")
        if self.patch_radius < 0 or self.search_radius < 1:
            raise ValueError(
                f"site_noise patch_radius must be >= 0 and search_radius >= 1, "
                f"got {self.patch_radius} and {self.search_radius}"
            )

    def weight(self, site: str | None) -> float:
        """Share of the NLM estimate in ``site``'s output: 1 − ν_target/ν_site, 0 if not noisier."""
        level = self.levels.get(site) if site is not None else None
        if level is None:
            return 0.0
        return max(0.0, 1.0 - self.levels[self.target_site] / level)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target_site": self.target_site,
            "levels": dict(self.levels),
            "n_images": dict(self.n_images),
            "strength": self.strength,
            "patch_radius": self.patch_radius,
            "search_radius": self.search_radius,
            "placement": self.placement,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SiteNoise:
        try:
            fields = (
                str(d["target_site"]),
                {str(k): float(v) for k, v in d["levels"].items()},
                {str(k): int(v) for k, v in d.get("n_images", {}).items()},
                float(d.get("strength", 1.0)),
                int(d.get("patch_radius", 1)),
                int(d.get("search_radius", 3)),
                str(d.get("placement", "after_curves")),  # tables older than the field
            )
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ValueError(
                "site_noise must be {target_site, levels: {site: level > 0}, n_images (optional), "
                "strength, patch_radius, search_radius, placement (optional)}"
            ) from exc
        return cls(*fields)  # its own checks name the field that is wrong


def check_noise_sd(noise_sd: float) -> None:
    """One clear error for a noise sd that is not a finite number > 0."""
    if not (np.isfinite(noise_sd) and noise_sd > 0):
        raise ValueError(f"noise_sd must be a finite number > 0, got {noise_sd}")


def relative_noise(image: object, mask: object, noise_sd: float) -> float:
    """ν of one scan: ``noise_sd`` (its thermal noise sd, image units) over its parenchyma level."""
    check_noise_sd(noise_sd)
    level = parenchyma_level(image, mask)
    if level <= 0:
        raise ValueError("a calibration image has no positive parenchyma level")
    return float(noise_sd / level)


def calibrate_site_noise(
    scans_by_site: dict[str, tuple[Sequence[object], Sequence[object]]],
    target_site: str,
    noise_sd: float,
    held: SiteNoise | None = None,
    **filter_options: Any,
) -> SiteNoise:
    """Site noise levels from calibration scans: site name -> (images, masks), unharmonized, in
    units whose thermal noise sd is ``noise_sd`` (PREWHITENED_RSS_NOISE_SD for the recon's images);
    any subjects, no pairing. With ``held`` (a table already calibrated) the named sites are
    added or recalibrated and its target and filter kept; otherwise the target must be among
    them. filter_options: SiteNoise's strength / patch_radius / search_radius / placement."""
    levels, counts = {}, {}
    for name, (images, masks) in scans_by_site.items():
        if not images or len(images) != len(masks):
            raise ValueError(f"site {name!r}: need >= 1 image and one mask per image")
        levels[name] = float(
            np.median([relative_noise(i, m, noise_sd) for i, m in zip(images, masks, strict=True)])
        )
        counts[name] = len(images)
    if held is not None:
        return replace(held, levels={**held.levels, **levels}, n_images={**held.n_images, **counts})
    if target_site not in levels:
        raise ValueError(f"noise calibration needs scans of the target site {target_site!r}")
    return SiteNoise(target_site, levels, counts, **filter_options)


def non_local_means(
    image: object, mask: object, h: float, noise_sd: float, patch_radius: int = 1, search_radius: int = 3
) -> np.ndarray:
    """Non-local means (Buades et al. 2005) of ``image`` (z, y, x) slice by slice, inside ``mask``.

    Each voxel becomes the weighted mean of the in-mask voxels within ``search_radius`` whose
    (2 patch_radius + 1)² patches look alike: weight exp(−max(d² − 2 noise_sd², 0) / h²), d² the
    patches' mean squared difference (2 noise_sd² is what two noise-only patches differ by).
    Returns float64, 0 outside the mask.
    """
    img = as_magnitude(image).astype(np.float64)
    m = check_mask(mask, img.shape)
    if not (h > 0 and noise_sd >= 0):
        raise ValueError(f"non_local_means needs h > 0 and noise_sd >= 0, got {h} and {noise_sd}")
    vol, mv = (img[None], m[None]) if img.ndim == 2 else (img, m)
    r, size = search_radius, 2 * patch_radius + 1
    out = np.zeros_like(vol)
    for z in range(vol.shape[0]):
        x, inside = vol[z], mv[z]
        if not inside.any():
            continue
        ny, nx = x.shape
        padded = np.pad(x, r, mode="reflect")
        padded_mask = np.pad(inside, r)
        num, den = np.zeros_like(x), np.zeros_like(x)
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                shifted = padded[r + dy : r + dy + ny, r + dx : r + dx + nx]
                d2 = ndimage.uniform_filter((x - shifted) ** 2, size, mode="reflect")
                w = np.exp(-np.maximum(d2 - 2 * noise_sd**2, 0) / h**2)
                w *= padded_mask[r + dy : r + dy + ny, r + dx : r + dx + nx]
                num += w * shifted
                den += w
        # the centre voxel always weighs 1, so den > 0 inside the mask
        out[z] = np.where(inside, num / np.maximum(den, 1e-300), 0)
    return out[0] if img.ndim == 2 else out


def apply_site_noise(
    image: object, mask: object, table: SiteNoise, site: str | None, level: float | None = None
) -> np.ndarray:
    """``image`` (a profile's output, z, y, x) with ``site``'s noise brought down to the target's
    (see the module docstring); 0 outside ``mask``, float32. level: the image's parenchyma level
    when the caller already knows it (an output anchor pinned it); measured otherwise."""
    x = as_magnitude(image)
    m = check_mask(mask, x.shape)
    w = table.weight(site)
    if w == 0:
        return np.where(m, x, 0).astype(np.float32)
    sd = table.levels[site] * (parenchyma_level(x, m) if level is None else level)
    if not sd > 0:  # no positive tissue level (a blank image): no noise scale to filter with
        return np.where(m, x, 0).astype(np.float32)
    smooth = non_local_means(x, m, table.strength * sd, sd, table.patch_radius, table.search_radius)
    return np.where(m, (1 - w) * x + w * smooth, 0).astype(np.float32)
