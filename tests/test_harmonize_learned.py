"""The learned (U-Net) method: identity at start, learns a site map, profile and weights round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harmonize import apply_profile, list_profiles, load_profile
from harmonize.fit import fit_profile
from harmonize.learned import TrainingConfig, intensity_unit, predict, train_unet
from harmonize.study import synthetic_study
from harmonize.synthetic import synthetic_scan, synthetic_subject
from harmonize.unet import UNet2D, UNetConfig


def test_untrained_unet_is_the_identity_in_intensity_units():
    subj = synthetic_subject(0, (1, 64, 64))
    img = synthetic_scan(subj, "B")
    m = subj.brain_mask
    out = predict(UNet2D(UNetConfig()), img, m)
    expected = np.where(m, img / intensity_unit(img.astype(np.float64), m), 0)
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_unet_keeps_odd_shapes_and_zero_background():
    torch.manual_seed(0)
    model = UNet2D(UNetConfig(base_channels=4, depth=2))
    torch.nn.init.normal_(model.head.weight, std=0.1)  # a non-trivial network
    img = np.random.default_rng(0).random((2, 37, 45)).astype(np.float32) + 0.5
    m = np.zeros(img.shape, bool)
    m[:, 5:30, 6:40] = True
    out = predict(model, img, m)
    assert out.shape == img.shape and out.dtype == np.float32
    assert np.all(out[~m] == 0)


def test_training_learns_a_site_contrast_map():
    subjects = [synthetic_subject(i, (1, 48, 48)) for i in range(4)]
    src = [synthetic_scan(s, "B") for s in subjects]
    tgt = [synthetic_scan(s, "A") for s in subjects]
    masks = [s.brain_mask for s in subjects]
    identity = np.mean(
        [
            np.abs(x / intensity_unit(x.astype(float), m) - y / intensity_unit(y.astype(float), m))[m].mean()
            for x, y, m in zip(src, tgt, masks, strict=True)
        ]
    )
    cfg = TrainingConfig(
        iterations=80, batch_size=4, lr=5e-3, augment=False, unet=UNetConfig(base_channels=4, depth=2)
    )
    model, hist = train_unet(src, tgt, masks, masks, cfg)
    assert hist["final_loss"] < 0.7 * identity
    assert hist["n_slices"] == 4


def test_unet_profile_round_trip_and_weights_check(tmp_path):
    study = synthetic_study(range(3), ("A", "B"), (1, 48, 48))
    cfg = TrainingConfig(iterations=3, batch_size=2, unet=UNetConfig(base_channels=4, depth=2))
    prof = fit_profile("unet", study, tmp_path / "u.json", target_site="A", training=cfg)
    assert (tmp_path / "u.pt").is_file() and prof.weights_file == "u.pt"
    assert prof.provenance["n_pairs"] == 3  # B -> A per subject; A is never paired with itself
    loaded = load_profile(tmp_path / "u.json")
    assert loaded.sha256 == prof.sha256
    img = study.get(1, "B").image
    np.testing.assert_array_equal(apply_profile(loaded, img), apply_profile(prof, img))
    (tmp_path / "u.pt").write_bytes((tmp_path / "u.pt").read_bytes() + b"x")
    with pytest.raises(ValueError, match="does not match the sha256"):
        load_profile(tmp_path / "u.json")


def test_training_rejects_mismatched_pairs():
    with pytest.raises(ValueError, match="equally many"):
        train_unet([np.ones((1, 32, 32))], [], [np.ones((1, 32, 32), bool)], [])


def test_shipped_learned_profile_is_small_and_runs():
    prof = next(load_profile(n) for n in list_profiles() if load_profile(n).method == "unet")
    assert prof.weights_path().stat().st_size < 2 * 1024 * 1024
    subj = synthetic_subject(3, (1, 64, 64))
    out = apply_profile(prof, synthetic_scan(subj, "B"), subj.brain_mask)
    assert np.isfinite(out).all() and np.all(out[~subj.brain_mask] == 0)


def test_noise_free_twins_are_the_training_targets_and_output_cdf_variant(tmp_path):
    """With CLEAN_REPEAT scans the U-Net learns towards them; the +cdf copy shares the weights."""
    from dataclasses import replace

    from harmonize.cdf import CdfReference, cdf_align
    from harmonize.fit import with_output_cdf
    from harmonize.study import CLEAN_REPEAT, Study

    base = synthetic_study(range(3), ("A", "B"), (1, 48, 48))
    twins = [
        replace(s, repeat=CLEAN_REPEAT, image=s.image * 0 + s.image.mean()) for s in base.select(None, ["A"])
    ]
    study = Study(base.scans + twins, "synthetic")
    cfg = TrainingConfig(iterations=2, batch_size=2, unet=UNetConfig(base_channels=4, depth=2))
    prof = fit_profile("unet", study, tmp_path / "u.json", target_site="A", training=cfg)
    # A (repeat 0) and B are both sources now, the twin is the only target
    assert prof.provenance["n_pairs"] == 6 and prof.provenance["noise_free_targets"] == 3
    cprof = with_output_cdf(prof, study, tmp_path / "u-cdf.json")
    assert cprof.weights_sha256 == prof.weights_sha256 and cprof.sha256 != prof.sha256
    img, m = study.get(1, "B").image, study.get(1, "B").mask
    ref = CdfReference.from_dict(cprof.parameters["output_cdf"])
    np.testing.assert_allclose(
        apply_profile(cprof, img, m), cdf_align(apply_profile(prof, img, m), ref, m), rtol=1e-6, atol=1e-6
    )
    with pytest.raises(ValueError, match="beside the U-Net profile"):
        with_output_cdf(prof, study, tmp_path / "elsewhere" / "x.json")
