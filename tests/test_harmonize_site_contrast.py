"""Per-site contrast curves: recovered from unpaired scans, one curve per scanner, profile and CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from harmonize import apply_profile, load_profile
from harmonize.fit import fit_profile, with_site_contrast
from harmonize.learned import TrainingConfig
from harmonize.profile import HarmonizationProfile
from harmonize.site_contrast import (
    DOMAINS,
    SiteContrast,
    add_site,
    apply_site_contrast,
    calibrate_sites,
)
from harmonize.study import synthetic_study
from harmonize.target_shading import TargetShading, apply_target_shading, calibrate_target_shading
from harmonize.unet import UNetConfig
from harmonize.volumes import log_field, parenchyma_level
from unisono.cli import main

SHAPE = (1, 48, 48)


def _subject(seed: int, csf_share: float) -> tuple[np.ndarray, np.ndarray]:
    """A target-site image with tissue levels CSF 0.2, GM 0.6, WM 1.0 and a CSF share, and its mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:48, :48]
    mask = ((yy - 23.5) ** 2 + (xx - 23.5) ** 2 < 20**2)[None]
    u = rng.random(SHAPE)
    levels = np.where(u < csf_share, 0.2, np.where(u < csf_share + 0.4, 0.6, 1.0))
    image = levels + 0.01 * rng.standard_normal(SHAPE)
    return np.where(mask, image, 0).astype(np.float32), mask


def _site_b(image: np.ndarray) -> np.ndarray:
    """What scanner B does to intensities: a gain and a contrast exponent (monotone)."""
    return (2.0 * np.clip(image, 0, None) ** 1.4).astype(np.float32)


def _readout(image: np.ndarray, mask: np.ndarray) -> float:
    v = image[mask]
    return 1.0 - v.mean() / np.percentile(v, 95)


def test_unpaired_calibration_recovers_a_known_scanner_map():
    # calibration subjects differ between the sites: no pairs, only each site's own scans
    cal_a = [_subject(s, 0.1 + 0.02 * s) for s in range(8)]
    cal_b = [_subject(100 + s, 0.1 + 0.02 * s) for s in range(8)]
    contrast = calibrate_sites(
        {"A": ([i for i, _ in cal_a], [m for _, m in cal_a]),
         "B": ([_site_b(i) for i, _ in cal_b], [m for _, m in cal_b])},
        "A",
    )  # fmt: skip
    truth, mask = _subject(999, 0.2)
    at_b = _site_b(truth)
    mapped = apply_site_contrast(at_b, mask, contrast, "B")
    err = np.abs(mapped - truth)[mask].mean()
    assert err < 0.02 < np.abs(at_b - truth)[mask].mean()
    assert np.all(mapped[~mask] == 0) and mapped.dtype == np.float32
    # the target's own curve is the identity; an unknown site passes unchanged
    np.testing.assert_allclose(apply_site_contrast(truth, mask, contrast, "A"), truth, atol=1e-6)
    np.testing.assert_array_equal(apply_site_contrast(at_b, mask, contrast, "Z"), at_b)
    np.testing.assert_array_equal(apply_site_contrast(at_b, mask, contrast, None), at_b)


def test_one_curve_per_site_keeps_what_differs_between_subjects():
    """Two subjects at one site keep their CSF difference; per-image histogram matching would erase it."""
    cal = [_subject(s, 0.1 + 0.02 * s) for s in range(8)]
    contrast = calibrate_sites(
        {
            "A": ([i for i, _ in cal], [m for _, m in cal]),
            "B": ([_site_b(i) for i, _ in cal], [m for _, m in cal]),
        },
        "A",
    )
    (young, m1), (atrophied, m2) = _subject(50, 0.10), _subject(51, 0.30)
    before = _readout(atrophied, m2) - _readout(young, m1)
    after = _readout(apply_site_contrast(_site_b(atrophied), m2, contrast, "B"), m2) - _readout(
        apply_site_contrast(_site_b(young), m1, contrast, "B"), m1
    )
    assert before > 0.1
    assert after == pytest.approx(before, rel=0.1)


def _shaded(image: np.ndarray, tilt: float) -> np.ndarray:
    """``image`` under a smooth receive field, a ramp exp(tilt x) across the head (x in -0.5..0.5)."""
    xx = np.mgrid[:48, :48][1] / 47.0 - 0.5
    return (image * np.exp(tilt * xx)[None]).astype(np.float32)


def test_flattened_curves_map_tissue_contrast_and_keep_the_shading():
    """Sites that shade differently (B's coils shade 7x more steeply): a curve fitted to the
    shaded histograms turns the shading difference into a contrast error; one fitted with the
    smooth field divided out maps the tissue levels onto the target's and leaves the image's
    own shading in place."""
    cal_a = [_subject(s, 0.1 + 0.02 * s) for s in range(8)]
    cal_b = [_subject(100 + s, 0.1 + 0.02 * s) for s in range(8)]
    scans = {"A": ([_shaded(i, 0.2) for i, _ in cal_a], [m for _, m in cal_a]),
             "B": ([_shaded(_site_b(i), 1.5) for i, _ in cal_b], [m for _, m in cal_b])}  # fmt: skip
    truth, mask = _subject(999, 0.2)
    tissues = [mask & (np.abs(truth - level) < 0.1) for level in (0.2, 0.6, 1.0)]
    at_a, at_b = _shaded(truth, 0.2), _shaded(_site_b(truth), 1.5)

    def tissue_levels(image: np.ndarray) -> np.ndarray:
        flat = image / log_field(image, mask)
        return np.array([flat[t].mean() for t in tissues])

    want = tissue_levels(at_a)
    errors = {}
    for domain in DOMAINS:
        contrast = calibrate_sites(scans, "A", domain=domain)
        assert contrast.domain == domain
        assert SiteContrast.from_dict(json.loads(json.dumps(contrast.to_dict()))) == contrast
        mapped = apply_site_contrast(at_b, mask, contrast, "B")
        errors[domain] = np.abs(tissue_levels(mapped) - want).max() / (want[2] - want[0])
        if domain == "flattened":
            # a monotone map of each voxel with the field fixed: B's shading stays
            np.testing.assert_allclose(log_field(mapped, mask), log_field(at_b, mask), rtol=0.02)
    # tissue levels within 2.5 % of the WM-CSF contrast against up to 7.6 % off
    assert errors["flattened"] < 0.025 < 0.05 < errors["image"]
    with pytest.raises(ValueError, match="domain must be one of"):
        calibrate_sites(scans, "A", domain="shaded")


def test_site_table_round_trips_and_rejects_bad_input():
    cal = [_subject(s, 0.2) for s in range(3)]
    table = calibrate_sites({"A": ([i for i, _ in cal], [m for _, m in cal])}, "A", percentiles=(5, 50, 95))
    assert SiteContrast.from_dict(json.loads(json.dumps(table.to_dict()))) == table
    grown = add_site(table, "C", [_site_b(i) for i, _ in cal], [m for _, m in cal])
    assert grown.sites["A"] == table.sites["A"] and grown.sites["C"].n_images == 3
    with pytest.raises(ValueError, match="target site 'A'"):
        calibrate_sites({"B": ([cal[0][0]], [cal[0][1]])}, "A")
    with pytest.raises(ValueError, match="percentiles must increase"):
        SiteContrast("A", (50, 5), table.sites)
    with pytest.raises(ValueError, match="site_contrast must be"):
        SiteContrast.from_dict({"target_site": "A"})
    # tables written before the domain existed act on the image as it is
    old = {k: v for k, v in table.to_dict().items() if k != "domain"}
    assert SiteContrast.from_dict(old).domain == "image"
    with pytest.raises(ValueError, match="domain must be one of"):
        SiteContrast("A", table.percentiles, table.sites, "shaded")
    bad = {**table.to_dict(), "sites": {"A": {"quantiles": [3, 2, 1], "n_images": 1}}}
    with pytest.raises(ValueError, match="non-decreasing"):
        HarmonizationProfile("x", "unet", {"site_contrast": bad})


@pytest.fixture(scope="module")
def gain_profile(tmp_path_factory):
    out = tmp_path_factory.mktemp("sites")
    study = synthetic_study(range(4), ("A", "B", "C"), SHAPE)
    cfg = TrainingConfig(iterations=2, batch_size=2, unet=UNetConfig(base_channels=4, depth=2))
    fit_profile("unet-gain", study, out / "g.json", target_site="A", train_sites=["A", "B"],
                train_subjects=[0, 1], training=cfg)  # fmt: skip
    return study, load_profile(out / "g.json"), out


def test_calibrated_profile_maps_each_site_and_adds_a_held_out_one(gain_profile):
    study, prof, out = gain_profile
    ab = with_site_contrast(prof, study, out / "g-ab.json", sites=["A", "B"], subjects=[0, 1])
    assert sorted(ab.parameters["site_contrast"]["sites"]) == ["A", "B"]
    assert ab.weights_sha256 == prof.weights_sha256
    # the held-out site joins later from its own scans; the others' curves are kept
    abc = with_site_contrast(ab, study, out / "g-abc.json", sites=["C"], subjects=[2, 3])
    curves = abc.parameters["site_contrast"]["sites"]
    assert curves["A"] == ab.parameters["site_contrast"]["sites"]["A"] and curves["C"]["n_images"] == 2
    scan = study.get(3, "C")
    plain = apply_profile(prof, scan.image, scan.mask)
    mapped = apply_profile(abc, scan.image, scan.mask, site="C")
    assert not np.allclose(mapped, plain)
    np.testing.assert_array_equal(apply_profile(abc, scan.image, scan.mask, site="elsewhere"), plain)
    # the output anchor holds after the curve
    level = parenchyma_level(plain, scan.mask)
    assert parenchyma_level(mapped, scan.mask) == pytest.approx(level, rel=1e-5)
    assert abc.provenance["site_contrast_from"]["train_sites"] == ["C"]
    # one table, one domain: a flattened calibration starts from the profile without curves
    with pytest.raises(ValueError, match="'image' domain"):
        with_site_contrast(ab, study, out / "g-x.json", sites=["C"], subjects=[2, 3], domain="flattened")
    flat = with_site_contrast(
        prof, study, out / "g-flat.json", sites=["A", "B"], subjects=[0, 1], domain="flattened"
    )
    assert flat.parameters["site_contrast"]["domain"] == "flattened"
    assert (
        with_site_contrast(flat, study, out / "g-flat-c.json", sites=["C"]).parameters["site_contrast"][
            "domain"
        ]
        == "flattened"
    )


def test_removed_shading_gives_a_flat_output_at_the_anchor_level(gain_profile):
    """output_shading "removed": the output's smooth field is divided out before the curves, so
    a scan under steep receive shading comes out flat, at the profile's parenchyma level, with
    the curves calibrated on that flat output; the network's own output keeps the shading."""
    study, prof, out = gain_profile
    flat = with_site_contrast(
        prof, study, out / "g-un.json", sites=["A", "B"], subjects=[0, 1], shading="removed"
    )
    assert flat.parameters["output_shading"] == "removed" and "shading removed" in flat.description
    scan = study.get(3, "B")
    shaded = _shaded(scan.image, 1.5)
    kept, removed = apply_profile(prof, shaded, scan.mask), apply_profile(flat, shaded, scan.mask, site="B")

    def span(image: np.ndarray) -> float:
        """Peak-to-peak log of the image's smooth field inside the mask."""
        return float(np.ptp(np.log(log_field(image, scan.mask)[scan.mask])))

    assert span(kept) > 1.0 > 0.05 > span(removed)
    level = flat.parameters["output_scale"]["value"]
    assert parenchyma_level(removed, scan.mask) == pytest.approx(level, rel=1e-4)
    assert np.all(removed[~scan.mask] == 0)
    # the curves were calibrated on the flat output: the shading cannot change under them
    with pytest.raises(ValueError, match="shading='kept'"):
        with_site_contrast(flat, study, out / "g-x.json", sites=["C"], shading="kept")
    assert (
        with_site_contrast(flat, study, out / "g-un-c.json", sites=["C"]).parameters["output_shading"]
        == "removed"
    )
    with pytest.raises(ValueError, match="output_shading must be one of"):
        HarmonizationProfile("x", "unet", {"output_shading": "flat"})


def test_target_shading_puts_the_target_sites_own_shading_on_the_flat_output(gain_profile):
    """output_shading "target": the bias-corrected output of "removed", curves calibrated on it,
    then the target site's shading, calibrated from its own scans, multiplied in."""
    study, prof, out = gain_profile
    kw = {"sites": ["A", "B"], "subjects": [0, 1]}
    removed = with_site_contrast(prof, study, out / "g-rm.json", shading="removed", **kw)
    target = with_site_contrast(prof, study, out / "g-tg.json", shading="target", **kw)
    assert target.parameters["output_shading"] == "target" and "target site's own" in target.description
    assert target.parameters["site_contrast"] == removed.parameters["site_contrast"]
    table = TargetShading.from_dict(target.parameters["target_shading"])
    at_a = study.select([0, 1], ["A"], repeat=0)
    assert table == calibrate_target_shading([s.image for s in at_a], [s.mask for s in at_a], "A")
    scan = study.get(3, "B")
    shaded = _shaded(scan.image, 1.5)
    want = apply_target_shading(apply_profile(removed, shaded, scan.mask, site="B"), scan.mask, table)
    np.testing.assert_allclose(apply_profile(target, shaded, scan.mask, site="B"), want, rtol=1e-6)
    # a held-out site joins under the same table; the shading cannot change under the curves
    with_c = with_site_contrast(target, study, out / "g-tg-c.json", sites=["C"])
    assert with_c.parameters["target_shading"] == target.parameters["target_shading"]
    with pytest.raises(ValueError, match="shading='removed'"):
        with_site_contrast(target, study, out / "g-x.json", sites=["C"], shading="removed")


def test_calibration_needs_a_smooth_field_profile(gain_profile, tmp_path):
    study, prof, out = gain_profile
    cfg = TrainingConfig(iterations=1, batch_size=2, unet=UNetConfig(base_channels=4, depth=2))
    residual = fit_profile("unet", study, out / "r.json", target_site="A", train_subjects=[0], training=cfg)
    with pytest.raises(ValueError, match="smooth-field U-Net"):
        with_site_contrast(residual, study, out / "r-sites.json")
    with pytest.raises(ValueError, match="not in the study"):
        with_site_contrast(prof, study, out / "x.json", sites=["Q"])
    with pytest.raises(ValueError, match="must sit beside"):
        with_site_contrast(prof, study, tmp_path / "x.json")


def test_calibrate_and_apply_from_the_command_line(tmp_path):
    study_dir = tmp_path / "study"
    assert main(["harmonize", "study", "--synthetic", "--subjects", "3", "--sites", "A,B", "--matrix", "32",
                 "-o", str(study_dir)]) == 0  # fmt: skip
    prof = tmp_path / "g.json"
    assert main(["harmonize", "fit", "--method", "unet-gain", "--train", str(study_dir), "--target-site", "A",
                 "--iterations", "2", "-o", str(prof)]) == 0  # fmt: skip
    cal = tmp_path / "g-sites.json"
    assert main(["harmonize", "calibrate", str(prof), "--scans", str(study_dir), "--subjects", "0-1",
                 "-o", str(cal)]) == 0  # fmt: skip
    loaded = load_profile(cal)
    assert sorted(loaded.parameters["site_contrast"]["sites"]) == ["A", "B"]
    assert main(["harmonize", "calibrate", str(prof), "--scans", str(study_dir), "--shading", "removed",
                 "-o", str(tmp_path / "g-flat.json")]) == 0  # fmt: skip
    assert load_profile(tmp_path / "g-flat.json").parameters["output_shading"] == "removed"
    assert main(["harmonize", "calibrate", str(prof), "--scans", str(study_dir), "--shading", "target",
                 "-o", str(tmp_path / "g-target.json")]) == 0  # fmt: skip
    assert load_profile(tmp_path / "g-target.json").parameters["target_shading"]["site"] == "A"
    img = np.load(study_dir / "sub-002_site-B_rep-0.npz")["image"]
    np.save(tmp_path / "in.npy", img)
    assert main(["harmonize", "apply", str(cal), str(tmp_path / "in.npy"), "-o", str(tmp_path / "o.npy"),
                 "--site", "B"]) == 0  # fmt: skip
    np.testing.assert_array_equal(np.load(tmp_path / "o.npy"), apply_profile(loaded, img, site="B"))
