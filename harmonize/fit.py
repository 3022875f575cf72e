"""Fit a harmonization profile from a traveling-subject study (what `unisono harmonize fit` runs)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from harmonize.cdf import fit_cdf_reference
from harmonize.learned import (
    TrainingConfig,
    apply_learned,
    intensity_unit,
    output_level,
    output_shading,
    save_weights,
    train_unet,
)
from harmonize.nyul import fit_nyul
from harmonize.profile import (
    METHODS,
    HarmonizationProfile,
    file_sha256,
    load_profile,
    save_profile,
)
from harmonize.site_contrast import SiteContrast, add_site, calibrate_sites
from harmonize.site_noise import SiteNoise, calibrate_site_noise, check_noise_sd
from harmonize.study import CLEAN_REPEAT, Study, StudyScan
from harmonize.target_shading import calibrate_target_shading

#: learned variants fit_profile accepts: name -> UNetConfig settings of the variant. All write
#: method "unet"; the output kind is recorded in the profile's parameters["unet"] (and in the
#: weights file), so the profile describes itself and older profiles load as "residual".
#: unet-gain: smooth log-gain (quadratic polynomial) x input; unet-fields: smooth monotone map
LEARNED_VARIANTS: dict[str, dict] = {
    "unet-gain": {"output": "gain", "field_degree": 2},
    "unet-fields": {"output": "fields", "field_degree": 2},
}
#: per-image output scale of the smooth-field variants: the parenchyma level (harmonize.volumes.
#: parenchyma_level) is set to the training targets' mean one. One global gain keeps the image's
#: composition, unlike histogram matching; and a level that does not move with the CSF share (the
#: median did: pooled atrophy r 0.24 on the 48-subject study, 0.94 with this) keeps it in
#: absolute units, so images pooled across sites still show it
OUTPUT_SCALE_STATISTIC = "parenchyma"


def _provenance(study: Study, scans: Sequence, extra: dict | None = None) -> dict:
    ids = sorted({(s.subject, s.site, s.repeat) for s in scans})
    return {
        "study_source": study.source,
        "train_subjects": sorted({s.subject for s in scans}),
        "train_sites": sorted({s.site for s in scans}),
        "n_images": len(ids),
        # hash of which scans were used, so two profiles can be told to share training data
        "train_scans_sha256": hashlib.sha256(json.dumps(ids).encode()).hexdigest(),
        "fitted_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(extra or {}),
    }


def fit_profile(
    method: str,
    study: Study,
    out_path: str | Path,
    *,
    target_site: str | None = None,
    train_subjects: Sequence[int] | None = None,
    train_sites: Sequence[str] | None = None,
    name: str | None = None,
    training: TrainingConfig | None = None,
) -> HarmonizationProfile:
    """Fit ``method`` on ``study`` and write the profile (and weights) to ``out_path``.

    target_site: the reference site (nyul, cdf, unet; default: the study's first site).
    train_subjects: subjects used for fitting (default all); train_sites: sites whose scans
    the learned model sees as sources (default all). Per-image methods (zscore,
    whitestripe) need no data and get default parameters. method "unet-gain" / "unet-fields"
    (LEARNED_VARIANTS) fits the smooth-field U-Net variants: profile method "unet", the
    variant's UNetConfig settings applied unless ``training`` already names that output kind,
    plus parameters["output_scale"] (parenchyma-level anchor).
    Returns the saved profile.
    """
    if method not in METHODS and method not in LEARNED_VARIANTS:
        raise ValueError(f"method must be one of {METHODS + tuple(LEARNED_VARIANTS)}, got {method!r}")
    out = Path(out_path)
    if out.suffix != ".json":
        out = out.with_name(out.name + ".json")
    name = name or out.stem
    target = target_site or study.sites[0]
    if target not in study.sites:
        raise ValueError(f"target_site {target!r} is not in the study (sites: {study.sites})")
    subjects = list(study.subjects if train_subjects is None else train_subjects)
    missing = set(subjects) - set(study.subjects)
    if missing:
        raise ValueError(
            f"train_subjects {sorted(missing)} are not in the study (subjects: {study.subjects})"
        )

    if method in ("zscore", "whitestripe"):
        params = {} if method == "zscore" else {"tau": 0.05, "contrast": "T1"}
        prof = HarmonizationProfile(name, method, params, provenance={"trained": False})
        save_profile(prof, out)
        return prof

    ref = study.select(subjects, [target])
    if not ref:
        raise ValueError(f"no scans of the training subjects at target site {target!r}")
    if method == "nyul":
        params = fit_nyul([s.image for s in ref], [s.mask for s in ref]).to_dict()
        prof = HarmonizationProfile(name, method, params, target, _provenance(study, ref))
        save_profile(prof, out)
        return prof
    if method == "cdf":
        params = fit_cdf_reference([s.image for s in ref], [s.mask for s in ref]).to_dict()
        prof = HarmonizationProfile(name, method, params, target, _provenance(study, ref))
        save_profile(prof, out)
        return prof

    # unet: pairs (subject at any training site, same subject at the target site). The target is
    # the noise-free twin when the study has one (the network then harmonizes and denoises),
    # else repeat 0; a scan is never paired with itself, which would teach it to keep its noise
    cfg = training or TrainingConfig()
    variant = LEARNED_VARIANTS.get(method, {})
    if variant and cfg.unet.output != variant["output"]:
        cfg = replace(cfg, unet=replace(cfg.unet, **variant))
    fields = cfg.unet.output != "residual"
    sites = list(study.sites if train_sites is None else train_sites)
    sources, targets, subject_targets = [], [], []
    for s in subjects:
        tgt = _training_target(study, s, target)
        subject_targets.append(tgt)
        for src in study.select([s], sites, repeat=None):
            if src.key != tgt.key:
                sources.append(src)
                targets.append(tgt)
    if not sources:
        raise ValueError("no training pairs: need scans of the training subjects at other sites or rescans")
    n_clean = sum(t.clean for t in subject_targets)
    model, history = train_unet(
        [s.image for s in sources],
        [t.image for t in targets],
        [s.mask for s in sources],
        [t.mask for t in targets],
        cfg,
    )
    weights = save_weights(model, out.with_suffix(".pt"))
    cfg_dict = asdict(cfg)
    params = {"unet": cfg_dict.pop("unet"), "intensity_unit": "in-mask 99th percentile"}
    if fields:
        params["output_scale"] = {
            "statistic": OUTPUT_SCALE_STATISTIC,
            "value": output_scale_reference(subject_targets),
        }
    prof = HarmonizationProfile(
        name,
        "unet",
        params,
        target,
        _provenance(
            study,
            sources + targets,
            {
                "training": cfg_dict,
                "final_loss": history["final_loss"],
                "train_seconds": history["train_seconds"],
                "n_pairs": len(sources),
                "noise_free_targets": n_clean,
                "n_parameters": history["n_parameters"],
            },
        ),
        weights_file=weights.name,
        weights_sha256=file_sha256(weights),
        description=(
            f"U-Net-predicted smooth {_FIELD_KIND[cfg.unet.output]} trained on {len(sources)} "
            f"traveling-subject pairs to look like {target} (noise-free simulated targets: {n_clean}); "
            "output scaled to the targets' parenchyma level (field-corrected in-mask 95th percentile)"
            if fields
            else f"2-D U-Net trained on {len(sources)} traveling-subject pairs to look like {target}"
            + (" without noise (noise-free simulated targets)" if n_clean else "")
        ),
    )
    save_profile(prof, out)
    return prof


def _training_target(study: Study, subject: int, target_site: str) -> StudyScan:
    """What the learned model is trained to reproduce for ``subject``: its noise-free twin at
    the target site when the study has one, else repeat 0 there."""
    clean = study.select([subject], [target_site], repeat=CLEAN_REPEAT)
    return clean[0] if clean else study.get(subject, target_site, 0)


_FIELD_KIND = {
    "gain": "multiplicative gain field (output = gain x input)",
    "fields": "monotone intensity map (offset and slope fields)",
}


def output_scale_reference(targets: Sequence, statistic: str = OUTPUT_SCALE_STATISTIC) -> float:
    """Mean ``output_level`` of the target scans in p99 units (the smooth-field variants' output scale)."""
    if not targets:
        raise ValueError("output_scale_reference needs at least one target scan")
    vals = [output_level(t.image, t.mask, statistic) / intensity_unit(t.image, t.mask) for t in targets]
    return float(np.mean(vals))


def _beside(profile: HarmonizationProfile, out_path: str | Path, what: str) -> Path:
    """Where a profile derived from the U-Net ``profile`` goes: a .json beside it (they share weights)."""
    if profile.method != "unet" or profile.source_dir is None:
        raise ValueError(f"{what} needs a U-Net profile that was saved or loaded from a file")
    out = Path(out_path)
    if out.suffix != ".json":
        out = out.with_name(out.name + ".json")
    if out.parent.resolve() != profile.source_dir:
        raise ValueError(
            f"{out} must sit beside the U-Net profile (in {profile.source_dir}): they share weights"
        )
    return out


def _derived(
    profile: HarmonizationProfile, out: Path, name: str | None, params: dict, provenance: dict, note: str
) -> HarmonizationProfile:
    """Save (and reload) a copy of ``profile`` with new parameters, sharing its weights file."""
    prof = HarmonizationProfile(
        name or out.stem,
        "unet",
        params,
        profile.target_site,
        {**profile.provenance, **provenance},
        weights_file=profile.weights_file,
        weights_sha256=profile.weights_sha256,
        description=profile.description + note,
    )
    save_profile(prof, out)
    return load_profile(out)


def with_output_cdf(
    profile: HarmonizationProfile,
    study: Study,
    out_path: str | Path,
    *,
    train_subjects: Sequence[int] | None = None,
    name: str | None = None,
) -> HarmonizationProfile:
    """A copy of a fitted U-Net ``profile`` whose output is then CDF-aligned to the target site.

    The reference histogram is that of the training targets (the noise-free twins at the
    target site when the study has them, else repeat 0) in the network's output units
    (each image divided by its in-mask 99th percentile). The copy shares the weights
    file, so ``out_path`` must be in the same folder as the U-Net profile.
    """
    out = _beside(profile, out_path, "with_output_cdf")
    target = profile.target_site or study.sites[0]
    subjects = list(study.subjects if train_subjects is None else train_subjects)
    refs = [_training_target(study, s, target) for s in subjects]
    ref = fit_cdf_reference([r.image / intensity_unit(r.image, r.mask) for r in refs], [r.mask for r in refs])
    params = {**profile.parameters, "output_cdf": ref.to_dict()}
    return _derived(
        profile, out, name, params, {"output_cdf_from": _provenance(study, refs)},
        f"; output histogram then CDF-aligned to {target}",
    )  # fmt: skip


#: what ``with_site_contrast`` adds to a profile's description when it changes the shading
_SHADING_NOTES = {
    "removed": "; smooth shading removed",
    "target": "; smooth shading replaced by the target site's own",
}


def with_site_contrast(
    profile: HarmonizationProfile,
    study: Study,
    out_path: str | Path,
    *,
    sites: Sequence[str] | None = None,
    subjects: Sequence[int] | None = None,
    name: str | None = None,
    domain: str | None = None,
    shading: str | None = None,
    noise_sd: float | None = None,
) -> HarmonizationProfile:
    """A copy of a smooth-field U-Net ``profile`` with per-site contrast curves (harmonize.site_contrast).

    Each site in ``sites`` (default: all of the study's) is calibrated from its scans of
    ``subjects`` (default all; repeat 0, no pairing needed) after the profile's network and
    output anchor; the target site must be among them unless the profile already holds
    curves, which are then kept (and the named sites added or recalibrated). A site held
    out of training can be calibrated this way, from its own scans alone. domain: what the
    curves act on (site_contrast.DOMAINS; default: the profile's curves' own, else "image");
    a table holds one domain, so it cannot differ from that of curves the profile holds.
    shading: the output's smooth shading, "kept", "removed" or "target" (learned.OUTPUT_SHADINGS,
    parameters["output_shading"]; default: the profile's own); the curves are calibrated on
    that output (for "target" on the flat output the target's shading then goes on), so it
    cannot change under curves the profile already holds. "target" calibrates the target
    site's shading from its scans of ``subjects`` (harmonize.target_shading) unless the
    profile holds it already.
    noise_sd: the scans' thermal noise sd in their own units
    (site_noise.PREWHITENED_RSS_NOISE_SD for the recon's images); given, each named site's
    noise level is calibrated too (harmonize.site_noise; added to a table the profile holds),
    and the output of a site noisier than the target is brought down to its level.
    The copy shares the weights file, so ``out_path`` must be in the same folder as the profile.
    """

    out = _beside(profile, out_path, "with_site_contrast")
    if "output_scale" not in profile.parameters or "output_cdf" in profile.parameters:
        raise ValueError(
            "site contrast curves need a smooth-field U-Net profile (unet-gain, unet-fields) "
            "without an output CDF"
        )
    names = list(study.sites if sites is None else sites)
    unknown = set(names) - set(study.sites)
    if unknown:
        raise ValueError(f"sites {sorted(unknown)} are not in the study (sites: {study.sites})")
    if noise_sd is not None:
        check_noise_sd(noise_sd)  # before any curve is fitted
    # the curves are calibrated on what reaches them: the output before curves and noise step
    steps = ("site_contrast", "site_noise", "target_shading")
    base_params = {k: v for k, v in profile.parameters.items() if k not in steps}
    own_shading = output_shading(base_params)
    if shading is not None:
        base_params["output_shading"] = shading
        output_shading(base_params)
    # "target" puts its shading on after the curves: they see the flat output, as with "removed"
    flat = {"output_shading": "removed"} if output_shading(base_params) == "target" else {}
    base = replace(profile, parameters={**base_params, **flat})
    existing = profile.parameters.get("site_contrast")
    held = SiteContrast.from_dict(existing) if existing else None
    if held is not None and domain not in (None, held.domain):
        raise ValueError(
            f"domain={domain!r}: the profile's curves act in the {held.domain!r} domain; "
            "calibrate the profile without its curves to change it"
        )
    if held is not None and shading not in (None, own_shading):
        raise ValueError(
            f"shading={shading!r}: the profile's curves were calibrated on its output with the "
            f"shading {own_shading}; calibrate the profile without its curves to change it"
        )
    scans_by_site, used = {}, []
    for site in names:
        scans = study.select(subjects, [site], repeat=0)
        if not scans:
            raise ValueError(f"no scans of the calibration subjects at site {site!r}")
        used += scans
        scans_by_site[site] = scans
    unharmonized = {site: ([s.image for s in sc], [s.mask for s in sc]) for site, sc in scans_by_site.items()}
    target = profile.target_site or study.sites[0]
    held_noise = profile.parameters.get("site_noise")
    noise = SiteNoise.from_dict(held_noise) if held_noise else None
    if noise_sd is not None:
        # a new table goes before the curves, unless curves calibrated without it are kept
        fresh = {} if held is None else {"placement": "after_curves"}
        noise = calibrate_site_noise(unharmonized, target, noise_sd, held=noise, **fresh)
    if noise is not None and noise.placement == "before_curves":
        # the curves are calibrated on the output the noise step has filtered
        base = replace(base, parameters={**base.parameters, "site_noise": noise.to_dict()})
    by_site = {
        site: ([apply_learned(base, s.image, s.mask, site) for s in sc], [s.mask for s in sc])
        for site, sc in scans_by_site.items()
    }
    if held is not None:
        contrast = held
        for site, (ims, mks) in by_site.items():
            contrast = add_site(contrast, site, ims, mks)
    else:
        contrast = calibrate_sites(by_site, target, domain=domain or "image")
    params = {**base_params, "site_contrast": contrast.to_dict()}
    if output_shading(params) == "target":
        # kept under held curves (the shading cannot change there); else the target's scans are
        # among the calibrated ones (calibrate_sites has required them)
        held_shading = profile.parameters.get("target_shading")
        params["target_shading"] = (
            held_shading or calibrate_target_shading(*unharmonized[target], target).to_dict()
        )
    if noise is not None:
        params["site_noise"] = noise.to_dict()
    new_shading = output_shading(params)
    shading_note = _SHADING_NOTES.get(new_shading, "") if new_shading != own_shading else ""
    return _derived(
        profile, out, name, params, {"site_contrast_from": _provenance(study, used)},
        shading_note
        + f"; then one contrast curve per site ({', '.join(sorted(contrast.sites))}) onto {target}"
        + (f"; noisier sites' noise brought down to {target}'s" if noise and not held_noise else ""),
    )  # fmt: skip
