"""z-score, WhiteStripe, Nyúl–Udupa, CDF alignment and auto_mask against their published definitions."""

from __future__ import annotations

import numpy as np
import pytest

from harmonize import (
    NyulScale,
    apply_nyul,
    auto_mask,
    cdf_align,
    find_white_stripe,
    fit_cdf_reference,
    fit_nyul,
    otsu_threshold,
    whitestripe,
    zscore,
)
from harmonize.synthetic import CSF, GM, WM, synthetic_scan, synthetic_subject


def tissue_image(means: dict[int, float], sd: float = 20.0, shape=(2, 64, 64), seed: int = 0):
    """Label image with known Gaussian tissue intensities; returns (image, labels, mask)."""
    rng = np.random.default_rng(seed)
    subj = synthetic_subject(seed, shape)
    img = np.zeros(shape)
    for lab, mu in means.items():
        sel = subj.labels == lab
        img[sel] = rng.normal(mu, sd, sel.sum())
    return img, subj.labels, subj.labels > 0


# --- auto_mask -------------------------------------------------------------------------------


def test_otsu_threshold_splits_two_gaussians_at_their_midpoint():
    rng = np.random.default_rng(0)
    v = np.concatenate([rng.normal(10, 1, 50_000), rng.normal(30, 1, 50_000)])
    # equal weights and variances: the between-class variance peaks at the midpoint
    assert otsu_threshold(v) == pytest.approx(20.0, abs=1.0)


@pytest.mark.parametrize("site", ["A", "B", "C", "D"])
def test_auto_mask_finds_the_head_at_every_site(site):
    subj = synthetic_subject(1, (2, 96, 96))
    m = auto_mask(synthetic_scan(subj, site))
    truth = subj.brain_mask
    dice = 2 * (m & truth).sum() / (m.sum() + truth.sum())
    assert dice > 0.97
    assert m.dtype == bool and m.shape == truth.shape


def test_auto_mask_fills_dark_ventricles_and_keeps_one_component():
    img, labels, truth = tissue_image({CSF: 50.0, GM: 500.0, WM: 800.0}, sd=5.0)
    img[labels == CSF] = 0.0  # ventricles and rim as dark as the background
    img[:, 2:5, 2:5] = 900.0  # a bright speck far from the head
    m = auto_mask(img)
    ventricles = (labels == CSF) & np.roll(labels == WM, 3, axis=2)
    assert m[ventricles].all(), "internal dark structures are holes to fill"
    assert not m[:, 2:5, 2:5].any(), "only the largest component is kept"


def test_auto_mask_rejects_bad_input():
    with pytest.raises(ValueError, match="all zero"):
        auto_mask(np.zeros((1, 8, 8)))
    with pytest.raises(ValueError, match="finite"):
        auto_mask(np.full((1, 8, 8), np.nan))
    with pytest.raises(ValueError, match="2-D .* or 3-D"):
        auto_mask(np.ones(8))


# --- z-score -----------------------------------------------------------------------------------


def test_zscore_has_mean_0_sd_1_in_mask_and_zero_background():
    subj = synthetic_subject(2, (2, 64, 64))
    img = synthetic_scan(subj, "B")
    m = subj.brain_mask
    out = zscore(img, m)
    assert out.dtype == np.float32
    assert out[m].mean() == pytest.approx(0.0, abs=1e-5)
    assert out[m].std() == pytest.approx(1.0, abs=1e-5)
    assert np.all(out[~m] == 0)


def test_zscore_is_invariant_to_gain_and_offset():
    img, _, m = tissue_image({CSF: 200.0, GM: 500.0, WM: 800.0})
    np.testing.assert_allclose(zscore(3.7 * img + 41.0, m), zscore(img, m), atol=1e-5)


def test_zscore_rejects_constant_and_mismatched_mask():
    with pytest.raises(ValueError, match="constant"):
        zscore(np.ones((1, 8, 8)), np.ones((1, 8, 8), bool))
    with pytest.raises(ValueError, match="mask must have the image's shape"):
        zscore(np.ones((1, 8, 8)), np.ones((1, 8, 9), bool))


# --- WhiteStripe -------------------------------------------------------------------------------


def test_whitestripe_finds_the_wm_mode_of_a_t1_image():
    # WM is the highest-intensity mode (T1w); the stripe must sit on it and normalize WM to ~0
    img, labels, m = tissue_image({CSF: 200.0, GM: 500.0, WM: 800.0}, sd=20.0)
    ws = find_white_stripe(img, m, tau=0.05)
    assert ws.mode == pytest.approx(800.0, abs=5.0)
    assert ws.mean == pytest.approx(800.0, abs=3.0)
    # the stripe holds the voxels within ±tau quantiles of the mode: 2*tau of the mask
    assert ws.n_voxels / m.sum() == pytest.approx(0.10, abs=0.005)
    vals = np.sort(img[m])
    assert ws.lower == pytest.approx(np.quantile(vals, ws.mode_quantile - 0.05))
    assert ws.upper == pytest.approx(np.quantile(vals, ws.mode_quantile + 0.05))
    out = whitestripe(img, m)
    stripe = (img >= ws.lower) & (img <= ws.upper) & m
    assert out[stripe].mean() == pytest.approx(0.0, abs=1e-4)
    assert out[stripe].std() == pytest.approx(1.0, abs=1e-4)
    assert abs(out[labels == WM].mean()) * ws.sd < 3.0  # WM lands on 0 to within 3 input units
    assert np.all(out[~m] == 0)


def test_whitestripe_t2_picks_the_largest_mode_not_the_brightest():
    # T2-like: CSF brightest; WM is the most populated tissue and must be chosen
    img, _, m = tissue_image({CSF: 1200.0, GM: 700.0, WM: 450.0}, sd=20.0)
    assert find_white_stripe(img, m, contrast="T2").mode == pytest.approx(450.0, abs=6.0)
    assert find_white_stripe(img, m, contrast="T1").mode == pytest.approx(1200.0, abs=6.0)


def test_whitestripe_is_invariant_to_gain_and_offset():
    img, _, m = tissue_image({CSF: 200.0, GM: 500.0, WM: 800.0})
    np.testing.assert_allclose(whitestripe(0.01 * img + 3.0, m), whitestripe(img, m), atol=1e-4)


def test_whitestripe_rejects_bad_parameters():
    img, _, m = tissue_image({CSF: 200.0, GM: 500.0, WM: 800.0})
    with pytest.raises(ValueError, match="tau"):
        whitestripe(img, m, tau=0.7)
    with pytest.raises(ValueError, match="contrast"):
        whitestripe(img, m, contrast="PD")


# --- Nyúl–Udupa ---------------------------------------------------------------------------------


def _training_set():
    subjects = [synthetic_subject(i, (1, 64, 64)) for i in range(4)]
    return [synthetic_scan(s, "A", seed=i) for i, s in enumerate(subjects)], [s.brain_mask for s in subjects]


def test_nyul_standard_scale_is_the_mean_of_linearly_mapped_landmarks():
    images, masks = _training_set()
    scale = fit_nyul(images, masks, p_low=1, p_high=99, s_low=0, s_high=100)
    pcs = [1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99]
    assert scale.percentiles == tuple(float(p) for p in pcs)
    expected = np.mean(
        [
            (lambda lm: 100 * (lm - lm[0]) / (lm[-1] - lm[0]))(np.percentile(im[m], pcs))
            for im, m in zip(images, masks, strict=True)
        ],
        axis=0,
    )
    np.testing.assert_allclose(scale.landmarks, expected, rtol=1e-12)
    assert scale.landmarks[0] == 0 and scale.landmarks[-1] == pytest.approx(100)


def test_nyul_maps_every_training_image_landmarks_onto_the_standard_scale():
    images, masks = _training_set()
    scale = fit_nyul(images, masks)
    for im, m in zip(images, masks, strict=True):
        out = apply_nyul(im, scale, m)
        # a monotone piecewise-linear map with knots at the landmarks sends each landmark
        # to its standard value (up to percentile interpolation between two voxels)
        np.testing.assert_allclose(np.percentile(out[m], scale.percentiles), scale.landmarks, atol=0.2)
        assert np.all(out[~m] == 0)


def test_nyul_mapping_is_monotone_and_extrapolates_the_end_slopes():
    scale = NyulScale((1.0, 50.0, 99.0), (0.0, 30.0, 100.0))
    img = np.concatenate([np.linspace(0, 100, 1000), [150.0, 200.0]]).reshape(1, 1, -1)
    m = np.ones_like(img, bool)
    out = apply_nyul(img, scale, m).ravel().astype(np.float64)
    assert np.all(np.diff(out) >= 0)
    lm = np.percentile(img[m], scale.percentiles)
    slope_hi = (100 - 30) / (lm[2] - lm[1])
    np.testing.assert_allclose(out[-2:], 100 + (np.array([150.0, 200.0]) - lm[2]) * slope_hi, rtol=1e-5)
    slope_lo = 30 / (lm[1] - lm[0])
    assert out[0] == pytest.approx((0.0 - lm[0]) * slope_lo, rel=1e-5)


def test_nyul_undoes_a_site_gain_exactly():
    images, masks = _training_set()
    scale = fit_nyul(images, masks)
    np.testing.assert_allclose(
        apply_nyul(7.0 * images[0], scale, masks[0]), apply_nyul(images[0], scale, masks[0]), atol=1e-3
    )


def test_nyul_rejects_bad_scale():
    with pytest.raises(ValueError, match="s_high must exceed s_low"):
        fit_nyul([np.ones((1, 4, 4))], s_low=5, s_high=5)
    with pytest.raises(ValueError, match="p_low"):
        fit_nyul([np.ones((1, 4, 4))], p_low=20)


def test_nyul_refuses_an_image_without_spread_instead_of_zeroing_it():
    """As z-score and WhiteStripe do: a constant head (or one bright voxel on it) has every
    landmark at one intensity; mapped anyway, the whole head came out at s_low (0)."""
    images, masks = _training_set()
    scale = fit_nyul(images, masks)
    flat = np.where(masks[0], 100.0, 0.0)
    flat.flat[np.flatnonzero(masks[0])[0]] = 1e4
    with pytest.raises(ValueError, match="no intensity spread"):
        apply_nyul(flat, scale, masks[0])


# --- CDF alignment ------------------------------------------------------------------------------


def test_cdf_alignment_matches_the_reference_quantiles():
    images, masks = _training_set()
    ref = fit_cdf_reference(images, masks, n_quantiles=64)
    subj = synthetic_subject(7, (1, 64, 64))
    out = cdf_align(synthetic_scan(subj, "B"), ref, subj.brain_mask)
    q = np.quantile(out[subj.brain_mask], ref.probabilities)
    contrast = ref.quantiles[-1] - ref.quantiles[0]
    assert np.max(np.abs(q - ref.quantiles)) < 0.01 * contrast
    assert np.all(out[~subj.brain_mask] == 0)


def test_cdf_alignment_inverts_a_monotone_distortion_of_the_reference():
    rng = np.random.default_rng(3)
    ref_img = rng.gamma(4.0, 50.0, (1, 80, 80))
    m = np.ones(ref_img.shape, bool)
    ref = fit_cdf_reference([ref_img], [m], n_quantiles=256, tail=0.001)
    distorted = 3.0 * ref_img**1.3 + 10.0  # a strictly increasing site map
    out = cdf_align(distorted, ref, m)
    inner = (ref_img > ref.quantiles[0]) & (ref_img < ref.quantiles[-1])
    np.testing.assert_allclose(out[inner], ref_img[inner], rtol=0.01, atol=0.5)
