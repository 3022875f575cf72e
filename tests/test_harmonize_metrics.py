"""Evaluation metrics against closed forms."""

from __future__ import annotations

import numpy as np
import pytest

from harmonize import metrics as M
from harmonize.synthetic import CSF, GM, WM, synthetic_subject


def test_ssim_of_an_image_with_itself_is_one():
    rng = np.random.default_rng(0)
    x = rng.random((1, 40, 40))
    m = np.ones(x.shape, bool)
    assert M.ssim(x, x, m) == pytest.approx(1.0)
    assert M.psnr(x, x, m) == float("inf")


def test_ssim_of_constant_images_is_the_luminance_term():
    # no variance anywhere: SSIM = (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1), C1 = (K1 L)^2
    x = np.full((1, 32, 32), 100.0)
    y = np.full((1, 32, 32), 120.0)
    m = np.ones(x.shape, bool)
    L = 50.0
    c1 = (0.01 * L) ** 2
    expected = (2 * 100 * 120 + c1) / (100**2 + 120**2 + c1)
    assert M.ssim(x, y, m, data_range=L) == pytest.approx(expected, rel=1e-9)


def test_ssim_falls_as_noise_grows():
    rng = np.random.default_rng(1)
    x = synthetic_subject(0, (1, 64, 64)).signal
    m = x > 0
    vals = [M.ssim(x, x + s * rng.standard_normal(x.shape), m, data_range=1.0) for s in (0.01, 0.05, 0.2)]
    assert vals[0] > vals[1] > vals[2]


def test_psnr_of_a_constant_offset():
    x = np.random.default_rng(2).random((1, 16, 16))
    m = np.ones(x.shape, bool)
    assert M.psnr(x, x + 0.1, m, data_range=1.0) == pytest.approx(20.0)


def test_wasserstein1_of_a_shift_is_the_shift():
    v = np.random.default_rng(3).normal(0, 1, 5000)
    assert M.wasserstein1(v, v + 2.5) == pytest.approx(2.5)
    assert M.wasserstein1([0.0, 0.0], [1.0, 3.0]) == pytest.approx(2.0)


def test_tissue_mean_spread_closed_form():
    lab = synthetic_subject(0, (1, 48, 48)).labels
    means_a = {CSF: 0.0, GM: 5.0, WM: 10.0}
    means_b = {CSF: 2.0, GM: 5.0, WM: 10.0}
    a = np.vectorize(lambda v: means_a.get(v, 0.0))(lab)
    b = np.vectorize(lambda v: means_b.get(v, 0.0))(lab)
    # sd across 2 sites: CSF 1, GM 0, WM 0 -> mean 1/3; contrast mean(10, 8) = 9
    got = M.tissue_mean_spread([a, b], [lab, lab], [CSF, GM, WM], WM, CSF)
    assert got == pytest.approx((1 / 3) / 9)


def test_site_classifier_accuracy_separable_and_chance():
    rng = np.random.default_rng(4)
    subjects = np.repeat(np.arange(20), 3)
    sites = np.tile(["A", "B", "C"], 20)
    offsets = {"A": 0.0, "B": 10.0, "C": 20.0}
    sep = np.array([[offsets[s] + rng.normal()] for s in sites])
    assert M.site_classifier_accuracy(sep, sites, subjects) == 1.0
    noise = rng.normal(size=(60, 5))
    assert M.site_classifier_accuracy(noise, sites, subjects) < 0.6


def test_structure_similarity_ignores_gain_and_offset_but_not_noise():
    rng = np.random.default_rng(5)
    x = synthetic_subject(1, (1, 64, 64)).signal
    m = x > 0
    assert M.structure_similarity(x, 7.0 * x + 3.0, m) == pytest.approx(1.0, abs=1e-6)
    assert M.structure_similarity(x, rng.random(x.shape), m) < 0.2


def test_csf_fraction_of_a_clean_label_image_is_the_true_fraction():
    subj = [synthetic_subject(i, (1, 64, 64)) for i in range(4)]
    imgs = [np.where(s.labels == CSF, 100.0, np.where(s.labels == GM, 300.0, 500.0)) for s in subj]
    masks = [s.brain_mask for s in subj]
    frac, _ = M.csf_fractions(imgs, masks)
    truth = [((s.labels == CSF).sum() / s.brain_mask.sum()) for s in subj]
    np.testing.assert_allclose(frac, truth)
    assert M.atrophy_correlation(imgs, masks, [s.atrophy for s in subj]) > 0.9


def test_metrics_reject_mismatched_inputs():
    with pytest.raises(ValueError, match="same shape"):
        M.ssim(np.ones((1, 4, 4)), np.ones((1, 4, 5)), np.ones((1, 4, 4), bool))
    with pytest.raises(ValueError, match="non-empty"):
        M.wasserstein1([], [1.0])


def test_structure_low_pass_variant_discounts_noise_but_not_anatomy():
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:64, 0:64]
    anatomy = 100.0 + 40.0 * (np.sin(xx / 4.0) > 0) + 30.0 * (np.cos(yy / 5.0) > 0)
    m = np.ones((1, 64, 64), bool)
    noisy = anatomy + rng.normal(0, 8.0, anatomy.shape)
    plain = M.structure_similarity(noisy[None], anatomy[None], m)
    smooth = M.structure_similarity(noisy[None], anatomy[None], m, lowpass_sigma=1.0)
    # the denoised image keeps the anatomy (flat regions still hold some noise after 1 px)
    assert smooth > plain + 0.1 and smooth > 0.9
    # another anatomy still scores low after the low-pass
    other = 100.0 + 40.0 * (np.sin(yy / 3.0) > 0)
    assert M.structure_similarity(noisy[None], other[None], m, lowpass_sigma=1.0) < 0.5


def test_dlda_site_classifier_is_not_fooled_by_constant_features():
    """One feature tells the sites apart; 19 others are (near-)constant jitter, as after CDF alignment."""
    rng = np.random.default_rng(5)
    subjects = np.repeat(np.arange(10), 3)
    sites = np.tile(["A", "B", "C"], 10)
    informative = np.array([{"A": 0.0, "B": 1.0, "C": 2.0}[s] for s in sites]) + rng.normal(0, 0.25, 30)
    jitter = rng.normal(0, 1e-9, (30, 19))
    X = np.column_stack([jitter, informative])
    assert M.site_classifier_accuracy(X, sites, subjects, method="dlda") > 0.9
    # standardizing the jitter to unit variance hides the informative feature from nearest centroid
    assert M.site_classifier_accuracy(X, sites, subjects, method="nc") < 0.7
    with pytest.raises(ValueError, match="method must be"):
        M.site_classifier_accuracy(X, sites, subjects, method="svm")


def test_dlda_ignores_float32_rounding_of_a_pinned_feature():
    """A quantile a method pins to one value differs between images by float32 rounding only:
    that must not count as a site difference (it used to carry as much weight as a real one)."""
    rng = np.random.default_rng(7)
    subjects = np.repeat(np.arange(12), 3)
    sites = np.tile(["A", "B", "C"], 12)
    weak = np.array([{"A": 0.0, "B": 0.3, "C": 0.6}[s] for s in sites]) + rng.normal(0, 0.5, 36)
    alone = M.site_classifier_accuracy(weak[:, None], sites, subjects)
    pinned = (np.float32(1.0) + rng.normal(0, 1.2e-7, (36, 3))).astype(np.float64)  # rounding only
    with_pinned = M.site_classifier_accuracy(np.column_stack([weak, pinned]), sites, subjects)
    assert with_pinned == alone


def _bivariate(n: int, rho: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n)
    return x, rho * x + np.sqrt(1 - rho**2) * rng.standard_normal(n)


def test_bootstrap_interval_of_r_agrees_with_fishers_closed_form():
    """Independent pairs: the percentile interval is close to tanh(atanh r ± 1.96/√(n − 3))."""
    n = 60
    x, y = _bivariate(n, 0.8, seed=3)
    r = M.pearson_r(x, y)
    lo, hi = M.percentile_interval(M.bootstrap_pearson_r(x, y, np.arange(n)))
    half = 1.96 / np.sqrt(n - 3)
    f_lo, f_hi = np.tanh(np.arctanh(r) - half), np.tanh(np.arctanh(r) + half)
    assert lo < r < hi
    assert abs(lo - f_lo) < 0.03 and abs(hi - f_hi) < 0.03, (lo, hi, f_lo, f_hi)
    # a perfect linear relation has r = 1 in every resample
    assert np.allclose(M.bootstrap_pearson_r(x, 2 * x + 1, np.arange(n), n_resamples=50), 1.0)


def test_bootstrap_resamples_whole_subjects():
    """Three sites that repeat each subject's values add no evidence: resampling subjects gives
    the one-site interval, while treating the 3n images as independent would narrow it."""
    n = 30
    x, y = _bivariate(n, 0.7, seed=5)
    x3, y3 = np.repeat(x, 3), np.repeat(y, 3)
    subjects = np.repeat(np.arange(n), 3)
    one_site = M.percentile_interval(M.bootstrap_pearson_r(x, y, np.arange(n), seed=1))
    by_subject = M.percentile_interval(M.bootstrap_pearson_r(x3, y3, subjects, seed=1))
    by_image = M.percentile_interval(M.bootstrap_pearson_r(x3, y3, np.arange(3 * n), seed=1))
    assert np.allclose(one_site, by_subject)
    assert by_image[1] - by_image[0] < 0.7 * (by_subject[1] - by_subject[0])


def test_bootstrap_samples_of_two_read_outs_pair():
    """One seed draws the same subjects for every read-out: a read-out against itself differs
    by exactly 0, and a noisier copy's difference interval lies below 0."""
    n = 40
    x, y = _bivariate(n, 0.9, seed=7)
    noisy = y + 0.8 * np.random.default_rng(8).standard_normal(n)
    a, b = M.bootstrap_pearson_r(x, y, np.arange(n)), M.bootstrap_pearson_r(x, noisy, np.arange(n))
    assert np.array_equal(a, M.bootstrap_pearson_r(x, y, np.arange(n)))
    assert M.percentile_interval(b - a)[1] < 0


def test_bootstrap_rejects_bad_input():
    x = np.arange(6.0)
    assert M.bootstrap_pearson_r(x, np.r_[x[:-1], np.nan], np.arange(6)) is None  # no read-out
    with pytest.raises(ValueError, match="groups"):
        M.bootstrap_pearson_r(x, x, [0, 0, 1, 1, 1, 1])
    with pytest.raises(ValueError, match="one length"):
        M.bootstrap_pearson_r(x, x[:5], np.arange(6))
    with pytest.raises(ValueError, match="level"):
        M.percentile_interval(x, level=95)


def test_detrended_structure_ignores_a_smooth_gain_field_but_not_blur():
    """In flat, nearly noise-free tissue a gain ramp is the windows' whole variance: the plain
    structure term scores changing it as lost structure, the detrended one (planes removed)
    does not, and both still see a 1-px blur and a different anatomy."""
    from scipy import ndimage

    rng = np.random.default_rng(11)
    x = synthetic_subject(2, (1, 64, 64)).signal
    m = x > 0
    x = x + rng.normal(0, 1e-3 * x.max(), x.shape)  # SNR ~1000, like the simulated study
    shaded = x * np.exp(0.5 * np.linspace(-1, 1, 64))[None, None, :]
    plain, detrended = (M.structure_similarity(x, shaded, m, detrend=d) for d in (False, True))
    assert detrended > 0.998 and plain < detrended - 0.01, (plain, detrended)
    # detrending is still invariant to a global gain and offset, and the identity scores 1
    assert M.structure_similarity(x, 3.0 * x + 2.0, m, detrend=True) == pytest.approx(1.0, abs=1e-6)
    blurred = ndimage.gaussian_filter(x, (0, 1.0, 1.0))
    assert M.structure_similarity(x, blurred, m, detrend=True) < 0.95
    other = synthetic_subject(7, (1, 64, 64)).signal
    assert M.structure_similarity(x, other, m, detrend=True) < 0.75


def test_site_noise_feature_is_in_plane_texture():
    """The classifier's noise feature is the in-plane Laplacian: a stack whose slices differ in
    anatomy or level (5 mm apart) has the texture of its slices, and noise raises it."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:32, :32]
    mask = np.broadcast_to((yy - 15.5) ** 2 + (xx - 15.5) ** 2 < 12**2, (3, 32, 32))
    smooth = np.exp(-((xx - 16.0) ** 2 + (yy - 16.0) ** 2) / 400.0)
    stack = np.stack([smooth * level for level in (80.0, 100.0, 60.0)])
    noisy = stack + rng.normal(0.0, 2.0, stack.shape)
    flat_noise = M.site_features(stack, mask)[-1]
    assert flat_noise < 1.0  # the slices' different levels are not texture (3-D Laplacian: 33)
    assert M.site_features(noisy, mask)[-1] > 5.0 > 5 * flat_noise
    one = M.site_features(noisy[1:2], mask[1:2])[-1]
    assert one == pytest.approx(M.site_features(noisy, mask)[-1], rel=0.2)


def test_site_accuracy_bootstrap_resamples_the_test_subjects():
    """Each resample is the mean correctness of the drawn subjects' images (a subject drawn
    twice counts twice), the leave-one-subject-out predictions kept; separable sites stay at
    1; features without any site information give an interval around chance as wide as 36
    subjects allow."""
    rng = np.random.default_rng(3)
    n, sites = 12, ["A", "B", "C"]
    site_labels = np.tile(sites, n)
    subjects = np.repeat(np.arange(n), 3)
    X = rng.normal(size=(3 * n, 4)) + 0.8 * (site_labels == "A")[:, None]
    correct = M.site_classifier_correct(X, site_labels, subjects)
    assert correct.mean() == M.site_classifier_accuracy(X, site_labels, subjects)
    samples = M.bootstrap_site_accuracy(X, site_labels, subjects, n_resamples=6, seed=5)
    counts, _ = M._subject_draws(subjects, 6, 5)
    for c, got in zip(counts, samples, strict=True):
        drawn = np.concatenate([np.flatnonzero(subjects == j) for j in range(n) for _ in range(int(c[j]))])
        assert got == pytest.approx(correct[drawn].mean(), abs=1e-12)
    sep = np.column_stack([(site_labels == s).astype(float) + 0.01 * rng.normal(size=3 * n) for s in sites])
    assert np.all(M.bootstrap_site_accuracy(sep, site_labels, subjects, n_resamples=50) == 1.0)
    big = np.repeat(np.arange(36), 3)
    noise = np.random.default_rng(0).normal(size=(108, 20))
    lo, hi = M.percentile_interval(M.bootstrap_site_accuracy(noise, np.tile(sites, 36), big))
    assert lo < M.site_classifier_accuracy(noise, np.tile(sites, 36), big) < hi
    assert lo < 1 / 3 < hi and 0.1 < hi - lo < 0.3
