"""A harmonizer without a network: each scanner's fixed shading and contrast (prints JSON).

Every scan of a simulated traveling-subject study puts the head at the same place in the
same coils, so each site's receive and transmit shading is one fixed field in image
coordinates, and what else differs between the sites is a global contrast and the noise.
``scanner-field`` uses exactly that and nothing learned: each site's shading is calibrated
from its own scans (``harmonize.target_shading``, unpaired, any subjects); a scan's own
site's shading is divided out and the target site's multiplied in; one gain pins the
parenchyma level; one contrast curve per site maps the flattened intensities
(``site_contrast``, calibrated on the same scans); with ``+noise`` the noise step brings
noisier sites down to the target's (``site_noise``, the recon's noise sd 1/sqrt(2)).

What it scores says what a study can and cannot tell about a learned harmonizer: where
nothing varies from scan to scan but anatomy and noise, a per-scanner calibration has all
the information a network could use.

    python benchmarks/harmonize_fixed_shading.py STUDY [--profile NAME=PATH ...] \\
        [--target-site siteA] [--calibration-subjects 1-12] [--test-subjects 13-48]

``--profile`` scores profiles alongside. The scores are ``harmonize.evaluate.score_images``'s,
as ``unisono harmonize evaluate --json`` prints them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

import numpy as np

from harmonize.evaluate import Key, evaluation_scans, harmonize_scans, score_images
from harmonize.learned import scale_output
from harmonize.profile import load_profile
from harmonize.site_contrast import apply_site_contrast, calibrate_sites
from harmonize.site_noise import PREWHITENED_RSS_NOISE_SD, apply_site_noise, calibrate_site_noise
from harmonize.study import Study, StudyScan, load_study
from harmonize.target_shading import calibrate_target_shading
from harmonize.volumes import parenchyma_level
from unisono.commands.harmonize import int_list


def site_log_fields(study: Study, subjects: list[int], shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Each site's calibrated shading (log, up to a constant) on the study's (z, y, x) grid."""
    fields = {}
    for site in study.sites:
        scans = study.select(subjects, [site], repeat=0)
        table = calibrate_target_shading([s.image for s in scans], [s.mask for s in scans], site)
        fields[site] = table.log_field(shape)
    return fields


def scanner_field(
    study: Study, subjects: list[int], target: str, noise: bool
) -> Callable[[StudyScan], np.ndarray]:
    """The ``scanner-field`` harmonizer calibrated on ``subjects``' scans at every site."""
    shape = study.scans[0].image.shape
    fields = site_log_fields(study, subjects, shape if len(shape) == 3 else (1, *shape))
    cal = {site: study.select(subjects, [site], repeat=0) for site in study.sites}
    level = float(np.mean([parenchyma_level(s.image, s.mask) for s in cal[target]]))
    pin = {"statistic": "parenchyma", "value": level}  # a smooth-field profile's output anchor

    def reshade(scan: StudyScan) -> np.ndarray:
        ratio = np.exp(fields[target] - fields[scan.site]).reshape(scan.image.shape)
        out = np.where(scan.mask, scan.image * ratio, 0)
        return scale_output(out.astype(np.float32), scan.mask, pin)

    curves = calibrate_sites(
        {site: ([reshade(s) for s in scans], [s.mask for s in scans]) for site, scans in cal.items()},
        target,
        domain="flattened",
    )
    noise_table = calibrate_site_noise(
        {site: ([s.image for s in scans], [s.mask for s in scans]) for site, scans in cal.items()},
        target,
        PREWHITENED_RSS_NOISE_SD,
    )

    def run(scan: StudyScan) -> np.ndarray:
        curved = apply_site_contrast(reshade(scan), scan.mask, curves, scan.site)
        out = scale_output(curved, scan.mask, pin)
        return apply_site_noise(out, scan.mask, noise_table, scan.site, level) if noise else out

    return run


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("study")
    p.add_argument("--profile", action="append", default=[], help="NAME=PATH of a profile to score alongside")
    p.add_argument("--target-site", default="siteA")
    p.add_argument("--calibration-subjects", default="1-12")
    p.add_argument("--test-subjects", default="13-48")
    p.add_argument("--heldout-sites", default="siteC")
    args = p.parse_args(argv)
    study = load_study(args.study)
    subjects = int_list(args.calibration_subjects)
    scans = evaluation_scans(study, int_list(args.test_subjects))
    images: dict[str, dict[Key, np.ndarray]] = {"raw": harmonize_scans(scans, None)}
    for noise in (False, True):
        run = scanner_field(study, subjects, args.target_site, noise)
        images["scanner-field" + ("+noise" if noise else "")] = {s.key: run(s) for s in scans}
    for spec in args.profile:
        name, _, path = spec.partition("=")
        images[name] = harmonize_scans(scans, load_profile(path))
    heldout = [x for x in args.heldout_sites.split(",") if x]
    result = score_images(scans, images, heldout, raw="raw")
    json.dump(result, sys.stdout, indent=1)
    print()
    return result


if __name__ == "__main__":
    main()
