"""Image-level harmonization: make one subject look alike across sites, keep anatomy and biology.

Pure functions on magnitude images (z, y, x) — numpy/scipy for the classic
methods, torch for the learned one; no MRD messages here (gadgets/ adapts them).

    from harmonize import auto_mask, load_profile, apply_profile
    out = apply_profile(load_profile("default"), image)      # float32 (z, y, x)

See docs/harmonization.md for the methods, the profile file and the evaluation.
"""

from harmonize.cdf import CdfReference, cdf_align, fit_cdf_reference
from harmonize.mask import auto_mask, otsu_threshold
from harmonize.nyul import NyulScale, apply_nyul, fit_nyul
from harmonize.profile import (
    METHODS,
    HarmonizationProfile,
    apply_profile,
    list_profiles,
    load_profile,
    save_profile,
)
from harmonize.whitestripe import WhiteStripe, find_white_stripe, whitestripe
from harmonize.zscore import zscore

__all__ = [
    "METHODS",
    "CdfReference",
    "HarmonizationProfile",
    "NyulScale",
    "WhiteStripe",
    "apply_nyul",
    "apply_profile",
    "auto_mask",
    "cdf_align",
    "find_white_stripe",
    "fit_cdf_reference",
    "fit_nyul",
    "list_profiles",
    "load_profile",
    "otsu_threshold",
    "save_profile",
    "whitestripe",
    "zscore",
]
