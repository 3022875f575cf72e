"""Traveling-subject evaluation: how alike one subject looks across sites, before and after each method.

All scores are computed on held-out subjects (not used for fitting) at every
site of the study, one repeat per site. Scores that compare intensities across
sites are made scale-free so that raw scanner units and each method's output
units can share one table:

- ssim, psnr: same subject, every pair of sites, inside both masks; the dynamic
  range L is that pair's in-mask range (higher = more alike).
- w1: Wasserstein-1 between the pair's masked intensity histograms divided by
  the subject's mean WM–CSF contrast in the same units (lower = more alike).
- tissue_spread: across-site sd of CSF/GM/WM means over WM–CSF contrast.
- site_accuracy: leave-one-subject-out site classifier (diagonal LDA on intensity
  quantiles and a noise-texture feature; chance 1/n_sites), with a 95 % subject-bootstrap
  interval (``site_accuracy_ci95``: the images' predictions kept, whole test subjects
  resampled, metrics.bootstrap_site_accuracy); site_accuracy_nc: the earlier
  nearest-centroid classifier, kept for comparison.
- structure: SSIM structure term against the unharmonized scan (anatomy kept = 1);
  structure_lowpass: the same after a 1-px Gaussian low-pass of both (noise removed
  from the comparison); structure_detrended (and _lowpass): each window's plane in
  (x, y) removed first, so a smooth gain field (shading) is not counted as structure
  (see metrics.structure_similarity).
- atrophy_r_per_image: Pearson r of the atrophy factor with the CSF read-out of
  harmonize.volumes.csf_signal_fractions (linear partial-volume unmixing of the mean,
  per image; None for offset scales, which have no zero); atrophy_r: the same with ONE
  parenchyma/CSF reference for all images (a pooled multi-site analysis, which needs a
  common intensity scale). Each r comes with a 95 % subject-bootstrap interval (``_ci95``:
  whole subjects resampled, 2000 times, see metrics.bootstrap_pearson_r), and each method
  with the paired interval of its r minus raw's (``_minus_raw_ci95``: the same resamples for
  both), which says whether harmonization kept the effect as far as the raw images carry it.
  The pooled read-out's P and C stay those of all the images in every resample.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from harmonize import metrics as M
from harmonize.profile import HarmonizationProfile, apply_profile
from harmonize.study import Study, StudyScan
from harmonize.synthetic import CSF, GM, WM
from harmonize.volumes import csf_signal_fractions

#: Gaussian low-pass (px) of the noise-insensitive structure variants
STRUCTURE_LOWPASS_SIGMA = 1.0
#: the structure scores: name -> metrics.structure_similarity options
STRUCTURE_VARIANTS: dict[str, dict[str, Any]] = {
    "structure": {},
    "structure_lowpass": {"lowpass_sigma": STRUCTURE_LOWPASS_SIGMA},
    "structure_detrended": {"detrend": True},
    "structure_detrended_lowpass": {"lowpass_sigma": STRUCTURE_LOWPASS_SIGMA, "detrend": True},
}

Key = tuple[int, str, int]


def harmonize_scans(
    scans: Sequence[StudyScan], profile: HarmonizationProfile | None
) -> dict[Key, np.ndarray]:
    """Apply ``profile`` (None = raw: masked scan) to each scan with its stored mask and site."""
    out = {}
    for s in scans:
        if profile is None:
            out[s.key] = np.where(s.mask, s.image, 0).astype(np.float32)
        else:
            out[s.key] = apply_profile(profile, s.image, s.mask, site=s.site)
    return out


#: the two atrophy read-outs: score name -> csf_signal_fractions(pooled=...)
READOUTS = {"atrophy_r": True, "atrophy_r_per_image": False}


def atrophy_readouts(scans: Sequence[StudyScan], images: Mapping[Key, np.ndarray]) -> dict[str, np.ndarray]:
    """The CSF read-outs (n_scans,) of each READOUTS score (harmonize.volumes.csf_signal_fractions)."""
    ims = [images[s.key] for s in scans]
    masks = [s.mask for s in scans]
    return {name: csf_signal_fractions(ims, masks, pooled=pooled) for name, pooled in READOUTS.items()}


def _r_samples(scans: Sequence[StudyScan], readout: np.ndarray) -> np.ndarray | None:
    """Subject-bootstrap samples of r(atrophy, readout); one seed, so samples of two read-outs pair."""
    return M.bootstrap_pearson_r([s.atrophy for s in scans], readout, [s.subject for s in scans])


def score_method(
    scans: Sequence[StudyScan],
    images: Mapping[Key, np.ndarray],
    heldout_sites=(),
    readouts: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Point scores of one method's ``images`` (keyed like the scans) — see the module docstring
    (evaluate_study adds the intervals of r). readouts: atrophy_readouts(scans, images) when
    already computed."""
    by_subject: dict[int, list[StudyScan]] = {}
    for s in scans:
        if s.labels is None:
            raise ValueError(f"scan {s.key} has no tissue labels: evaluation needs ground truth")
        by_subject.setdefault(s.subject, []).append(s)
    ssim, psnr, w1, spread, ssim_held = [], [], [], [], []
    for subj_scans in by_subject.values():
        if len(subj_scans) < 2:
            continue
        lab = [s.labels for s in subj_scans]
        imgs = [images[s.key] for s in subj_scans]
        contrast = np.mean(
            [M.tissue_means(im, lb, [WM, CSF]) @ [1.0, -1.0] for im, lb in zip(imgs, lab, strict=True)]
        )
        for a, b in itertools.combinations(subj_scans, 2):
            m = a.mask & b.mask
            ia, ib = images[a.key], images[b.key]
            val = M.ssim(ia, ib, m)
            ssim.append(val)
            if a.site in heldout_sites or b.site in heldout_sites:
                ssim_held.append(val)
            psnr.append(M.psnr(ia, ib, m))
            w1.append(M.wasserstein1(ia[a.mask], ib[b.mask]) / abs(contrast))
        spread.append(M.tissue_mean_spread(imgs, lab, [CSF, GM, WM], WM, CSF))
    feats = np.array([M.site_features(images[s.key], s.mask) for s in scans])
    site_labels, subject_labels = [s.site for s in scans], [s.subject for s in scans]
    atrophy = [s.atrophy for s in scans]
    if readouts is None:
        readouts = atrophy_readouts(scans, images)
    out: dict[str, Any] = {
        "ssim": float(np.mean(ssim)),
        "psnr_db": float(np.mean(psnr)),
        "w1": float(np.mean(w1)),
        "tissue_spread": float(np.mean(spread)),
        "site_accuracy": M.site_classifier_accuracy(feats, site_labels, subject_labels, method="dlda"),
        "site_accuracy_ci95": list(
            M.percentile_interval(M.bootstrap_site_accuracy(feats, site_labels, subject_labels))
        ),
        "site_accuracy_nc": M.site_classifier_accuracy(feats, site_labels, subject_labels, method="nc"),
    }
    for name, options in STRUCTURE_VARIANTS.items():
        out[name] = float(
            np.mean([M.structure_similarity(s.image, images[s.key], s.mask, **options) for s in scans])
        )
    for name in READOUTS:
        out[name] = M.pearson_r(atrophy, readouts[name])
    if ssim_held:
        out["ssim_heldout_site"] = float(np.mean(ssim_held))
    return out


def evaluation_scans(
    study: Study, test_subjects: Sequence[int] | None = None, sites: Sequence[str] | None = None
) -> list[StudyScan]:
    """The scans an evaluation scores: repeat 0 of ``test_subjects`` (default: all) at ``sites``."""
    scans = study.select(test_subjects, sites, repeat=0)
    if len({s.subject for s in scans}) < 2 or len({s.site for s in scans}) < 2:
        raise ValueError("evaluation needs >= 2 test subjects scanned at >= 2 sites")
    return scans


def score_images(
    scans: Sequence[StudyScan],
    images: Mapping[str, Mapping[Key, np.ndarray]] | Iterable[tuple[str, Mapping[Key, np.ndarray]]],
    heldout_sites: Sequence[str] = (),
    raw: str | None = None,
) -> dict[str, Any]:
    """Score each method's images (method name -> {scan key: image}, one image per scan) as
    ``evaluate_study`` does, with the intervals of r, and the paired intervals against the
    method named ``raw`` (the unharmonized images) when given. Any harmonizer's outputs can
    be scored this way, not only a profile's. ``images`` may also be an iterable of (name,
    images) pairs, so that one method's images at a time need be held.

    Returns {"methods": {name: scores}, "test_subjects", "sites", "heldout_sites", "chance"}.
    """
    result: dict[str, Any] = {
        "test_subjects": sorted({s.subject for s in scans}),
        "sites": sorted({s.site for s in scans}),
        "heldout_sites": list(heldout_sites),
        "chance": 1.0 / len({s.site for s in scans}),
        "methods": {},
    }
    r_samples: dict[str, dict[str, np.ndarray | None]] = {}  # method -> read-out -> bootstrap r
    for name, imgs in images.items() if isinstance(images, Mapping) else images:
        missing = [s.key for s in scans if s.key not in imgs]
        if missing:
            raise ValueError(f"method {name!r} has no image for scans {missing[:3]}")
        readouts = atrophy_readouts(scans, imgs)
        scores = score_method(scans, imgs, heldout_sites, readouts)
        r_samples[name] = {key: _r_samples(scans, readouts[key]) for key in READOUTS}
        for key, samples in r_samples[name].items():
            scores[f"{key}_ci95"] = None if samples is None else list(M.percentile_interval(samples))
        result["methods"][name] = scores
    if raw is not None and raw not in result["methods"]:
        raise ValueError(f"raw={raw!r} is not among the methods {sorted(result['methods'])}")
    for name in result["methods"]:
        if raw is None or name == raw:
            continue
        for key in READOUTS:
            a, b = r_samples[name][key], r_samples[raw][key]
            paired = None if a is None or b is None else list(M.percentile_interval(a - b))
            result["methods"][name][f"{key}_minus_raw_ci95"] = paired
    return result


def evaluate_study(
    study: Study,
    profiles: Mapping[str, HarmonizationProfile | None],
    test_subjects: Sequence[int] | None = None,
    sites: Sequence[str] | None = None,
    heldout_sites: Sequence[str] = (),
    keep_images: bool = False,
) -> dict[str, Any]:
    """Score every method in ``profiles`` (name -> profile, None for raw) on the test subjects.

    Returns {"methods": {name: scores}, "test_subjects", "sites", "heldout_sites", "chance",
    and "images" {name: {key: image}} when keep_images}.
    """
    scans = evaluation_scans(study, test_subjects, sites)
    kept: dict[str, dict[Key, np.ndarray]] = {}

    def harmonized() -> Iterator[tuple[str, dict[Key, np.ndarray]]]:
        for name, prof in profiles.items():  # one method's images at a time, unless kept
            images = harmonize_scans(scans, prof)
            if keep_images:
                kept[name] = images
            yield name, images

    raw = next((name for name, prof in profiles.items() if prof is None), None)
    result = score_images(scans, harmonized(), heldout_sites, raw)
    for name, prof in profiles.items():
        if prof is not None:
            result["methods"][name]["profile_sha256"] = prof.sha256
    if keep_images:
        result["images"] = kept
    return result


def format_table(result: Mapping[str, Any]) -> str:
    """A Markdown table of evaluate_study's scores (one row per method)."""
    cols = [
        ("ssim", "SSIM ↑"),
        ("ssim_heldout_site", "SSIM held-out site ↑"),
        ("psnr_db", "PSNR dB ↑"),
        ("w1", "W1/contrast ↓"),
        ("tissue_spread", "tissue spread ↓"),
        ("site_accuracy", f"site acc. (chance {result['chance']:.2f}) ↓"),
        ("structure", "structure ↑"),
        ("structure_lowpass", "structure low-pass ↑"),
        ("structure_detrended", "structure detrended ↑"),
        ("structure_detrended_lowpass", "structure detrended low-pass ↑"),
        ("atrophy_r", "atrophy r pooled ↑"),
        ("atrophy_r_per_image", "atrophy r per image ↑"),
    ]
    present = [c for c in cols if any(c[0] in s for s in result["methods"].values())]
    lines = ["| method | " + " | ".join(h for _, h in present) + " |", "|---" * (len(present) + 1) + "|"]
    for name, s in result["methods"].items():
        cells = [_cell(s, k) for k, _ in present]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    paired = [n for n, s in result["methods"].items() if any(f"{k}_minus_raw_ci95" in s for k in READOUTS)]
    if paired:
        lines += ["", "| method | atrophy r pooled − raw, 95 % CI | atrophy r per image − raw, 95 % CI |"]
        lines.append("|---|---|---|")
        for name in paired:
            s = result["methods"][name]
            cells = [_interval(s.get(f"{k}_minus_raw_ci95")) for k in READOUTS]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _interval(ci: Sequence[float] | None) -> str:
    return "n/a" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _cell(scores: Mapping[str, Any], key: str) -> str:
    """One table cell: the score to 3 decimals, its 95 % interval after it where there is one."""
    if key not in scores:
        return "–"
    if scores[key] is None:
        return "n/a"
    ci = scores.get(f"{key}_ci95")
    return f"{scores[key]:.3f}" + (f" {_interval(ci)}" if ci else "")
