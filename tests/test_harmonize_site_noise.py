"""Site noise levels: calibrated from the recon's known noise sd, brought down to the target's."""

from __future__ import annotations

import json

import numpy as np
import pytest

from harmonize import apply_profile, load_profile
from harmonize.fit import fit_profile, with_site_contrast
from harmonize.learned import TrainingConfig, scale_output
from harmonize.profile import HarmonizationProfile
from harmonize.site_contrast import SiteContrast, apply_site_contrast
from harmonize.site_noise import (
    PREWHITENED_RSS_NOISE_SD,
    SiteNoise,
    apply_site_noise,
    calibrate_site_noise,
    non_local_means,
    relative_noise,
)
from harmonize.study import synthetic_study
from harmonize.unet import UNetConfig
from unisono.cli import main

N = 64


def _disc_image(level: float, sd: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A disc whose left half is at ``level`` and right half at level/2, with Gaussian noise ``sd``.

    Returns (noisy image, noise-free image, mask), (1, N, N)."""
    yy, xx = np.mgrid[:N, :N]
    mask = ((yy - 31.5) ** 2 + (xx - 31.5) ** 2 < 28**2)[None]
    truth = np.where(mask, np.where(xx < 32, level, level / 2), 0.0)
    noisy = truth + sd * np.random.default_rng(seed).standard_normal(truth.shape)
    return np.where(mask, noisy, 0).astype(np.float32), truth, mask


def _flat_noise(image: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """Noise sd left in the two flat halves, away from the edge and the rim."""
    yy, xx = np.mgrid[:N, :N]
    flat = mask[0] & (np.abs(xx - 31.5) > 4) & ((yy - 31.5) ** 2 + (xx - 31.5) ** 2 < 24**2)
    return float((image[0] - truth[0])[flat].std())


def test_non_local_means_removes_noise_and_keeps_the_edge():
    noisy, truth, mask = _disc_image(100.0, 5.0, 0)
    out = non_local_means(noisy, mask, h=5.0, noise_sd=5.0)
    assert _flat_noise(out, truth, mask) < 0.5 * _flat_noise(noisy, truth, mask)
    # the 50-unit step between the halves survives: the columns beside it keep their levels
    rows = slice(20, 44)
    assert out[0, rows, 30].mean() == pytest.approx(100, abs=2)
    assert out[0, rows, 33].mean() == pytest.approx(50, abs=2)
    assert np.all(out[~mask] == 0)
    with pytest.raises(ValueError, match="h > 0"):
        non_local_means(noisy, mask, h=0.0, noise_sd=5.0)


def test_calibration_sets_each_sites_share_of_the_filter():
    """Same noise sd in the recon's units, B's signal 0.4 of A's: B carries 2.5x A's relative
    noise, so 60 % of its output comes from the filtered image; A and unknown sites pass."""
    a = [_disc_image(100.0, PREWHITENED_RSS_NOISE_SD, s) for s in range(3)]
    b = [_disc_image(40.0, PREWHITENED_RSS_NOISE_SD, 10 + s) for s in range(3)]
    table = calibrate_site_noise(
        {
            "A": ([i for i, _, _ in a], [m for _, _, m in a]),
            "B": ([i for i, _, _ in b], [m for _, _, m in b]),
        },
        "A",
        PREWHITENED_RSS_NOISE_SD,
    )
    assert table.levels["B"] / table.levels["A"] == pytest.approx(2.5, rel=0.03)
    assert table.weight("B") == pytest.approx(0.6, abs=0.01)
    assert table.weight("A") == 0 and table.weight("elsewhere") == 0 and table.weight(None) == 0
    assert table.n_images == {"A": 3, "B": 3}
    assert SiteNoise.from_dict(json.loads(json.dumps(table.to_dict()))) == table
    with pytest.raises(ValueError, match="target site 'A'"):
        calibrate_site_noise({"B": ([b[0][0]], [b[0][2]])}, "A", PREWHITENED_RSS_NOISE_SD)
    with pytest.raises(ValueError, match="noise_sd must be"):
        relative_noise(a[0][0], a[0][2], 0.0)


def test_a_noisier_sites_output_comes_down_to_the_targets_noise():
    """B's output (2.5x A's relative noise) comes out within 25 % of A's relative noise;
    A's output is returned as it is."""
    table = SiteNoise("A", {"A": 0.02, "B": 0.05})
    noisy_b, truth_b, mask = _disc_image(100.0, 5.0, 1)
    out_b = apply_site_noise(noisy_b, mask, table, "B")
    assert _flat_noise(noisy_b, truth_b, mask) / 100 == pytest.approx(0.05, rel=0.1)
    assert _flat_noise(out_b, truth_b, mask) / 100 == pytest.approx(0.02, rel=0.25)
    noisy_a, _, _ = _disc_image(100.0, 2.0, 2)
    np.testing.assert_array_equal(apply_site_noise(noisy_a, mask, table, "A"), noisy_a)
    # a blank image from the noisier site has no tissue level to scale the filter: returned as it is
    blank = np.zeros_like(noisy_b)
    np.testing.assert_array_equal(apply_site_noise(blank, mask, table, "B"), blank)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"target_site": "A", "levels": {"B": 0.1}}, "target site 'A'"),
        ({"target_site": "A", "levels": {"A": 0.0}}, "level must be"),
        ({"target_site": "A", "levels": {"A": 0.1}, "strength": -1}, "strength must be"),
        ({"target_site": "A", "levels": {"A": 0.1}, "search_radius": 0}, "search_radius"),
        ({"target_site": "A"}, "site_noise must be"),
        ({"target_site": "A", "levels": {"A": 0.1}, "placement": "last"}, "placement must be one of"),
    ],
)
def test_bad_noise_tables_are_refused_at_load(bad, message):
    with pytest.raises(ValueError, match=message):
        SiteNoise.from_dict(bad)
    with pytest.raises(ValueError, match=message):
        HarmonizationProfile("x", "unet", {"site_noise": bad})


def test_calibrate_adds_a_noise_table_to_a_profile(tmp_path):
    study = synthetic_study(range(4), ("A", "B", "C"), (1, 32, 32))
    cfg = TrainingConfig(iterations=2, batch_size=2, unet=UNetConfig(base_channels=4, depth=2))
    fit_profile("unet-gain", study, tmp_path / "g.json", target_site="A", train_sites=["A", "B"],
                train_subjects=[0, 1], training=cfg)  # fmt: skip
    prof = load_profile(tmp_path / "g.json")
    ab = with_site_contrast(
        prof, study, tmp_path / "g-ab.json", sites=["A", "B"], subjects=[0, 1], noise_sd=1.0
    )
    table = SiteNoise.from_dict(ab.parameters["site_noise"])
    assert sorted(table.levels) == ["A", "B"] and "noise" in ab.description
    # a site joining later gets its level from its own scans; without noise_sd the table is kept
    abc = with_site_contrast(ab, study, tmp_path / "g-abc.json", sites=["C"], subjects=[2, 3], noise_sd=1.0)
    grown = SiteNoise.from_dict(abc.parameters["site_noise"])
    assert grown.levels["A"] == table.levels["A"] and grown.n_images["C"] == 2
    kept = with_site_contrast(ab, study, tmp_path / "g-ab2.json", sites=["B"])
    assert kept.parameters["site_noise"] == ab.parameters["site_noise"]
    # the noise step comes before the curves, which are calibrated on what it leaves (a noise sd
    # this large makes the filter act on these nearly noise-free images)
    ab = with_site_contrast(
        prof, study, tmp_path / "g-ab30.json", sites=["A", "B"], subjects=[0, 1], noise_sd=30.0
    )
    table = SiteNoise.from_dict(ab.parameters["site_noise"])
    assert table.placement == "before_curves" and table.weight("B") > 0
    plain = with_site_contrast(prof, study, tmp_path / "g-plain.json", sites=["A", "B"], subjects=[0, 1])
    assert plain.parameters["site_contrast"]["sites"]["B"] != ab.parameters["site_contrast"]["sites"]["B"]
    scan = study.get(3, "B")
    scale = prof.parameters["output_scale"]
    stepped = apply_site_noise(
        apply_profile(prof, scan.image, scan.mask), scan.mask, table, "B", scale["value"]
    )
    curves = SiteContrast.from_dict(ab.parameters["site_contrast"])
    expected = scale_output(apply_site_contrast(stepped, scan.mask, curves, "B"), scan.mask, scale)
    np.testing.assert_allclose(apply_profile(ab, scan.image, scan.mask, site="B"), expected, rtol=1e-6)
    # a table added under curves calibrated without it goes after them, and older tables too
    late = with_site_contrast(
        plain, study, tmp_path / "g-late.json", sites=["A", "B"], subjects=[0, 1], noise_sd=30.0
    )
    assert late.parameters["site_noise"]["placement"] == "after_curves"
    assert late.parameters["site_contrast"]["sites"]["A"] == plain.parameters["site_contrast"]["sites"]["A"]
    late_table = SiteNoise.from_dict(late.parameters["site_noise"])
    expected = apply_site_noise(
        apply_profile(plain, scan.image, scan.mask, site="B"), scan.mask, late_table, "B"
    )
    np.testing.assert_allclose(apply_profile(late, scan.image, scan.mask, site="B"), expected, rtol=1e-6)
    assert SiteNoise.from_dict({"target_site": "A", "levels": {"A": 0.1}}).placement == "after_curves"
    study_dir = tmp_path / "study"
    assert main(["harmonize", "study", "--synthetic", "--subjects", "2", "--sites", "A,B", "--matrix", "32",
                 "-o", str(study_dir)]) == 0  # fmt: skip
    out = tmp_path / "g-cli.json"
    assert main(["harmonize", "calibrate", str(tmp_path / "g.json"), "--scans", str(study_dir),
                 "--noise-sd", "0.7071", "-o", str(out)]) == 0  # fmt: skip
    assert sorted(load_profile(out).parameters["site_noise"]["levels"]) == ["A", "B"]
    with pytest.raises(ValueError, match="noise_sd must be"):
        with_site_contrast(prof, study, tmp_path / "g-x.json", noise_sd=-1.0)
