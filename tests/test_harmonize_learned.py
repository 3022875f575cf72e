"""The learned (U-Net) method: identity at start, learns a site map, profile and weights round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harmonize import apply_profile, list_profiles, load_profile
from harmonize.fit import fit_profile
from harmonize.learned import (
    TrainingConfig,
    intensity_unit,
    predict,
    scale_output,
    train_unet,
)
from harmonize.study import synthetic_study
from harmonize.synthetic import synthetic_scan, synthetic_subject
from harmonize.unet import UNet2D, UNetConfig
from harmonize.volumes import log_field, parenchyma_level


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


def test_shipped_learned_profiles_are_small_and_run():
    learned = [load_profile(n) for n in list_profiles() if load_profile(n).method == "unet"]
    assert {p.name for p in learned} >= {"unet", "unet-network", "unet-gain"}
    subj = synthetic_subject(3, (1, 64, 64))
    img = synthetic_scan(subj, "B")
    for prof in learned:
        assert prof.weights_path().stat().st_size < 2 * 1024 * 1024
        out = apply_profile(prof, img, subj.brain_mask)
        assert np.isfinite(out).all() and np.all(out[~subj.brain_mask] == 0), prof.name


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


# --- smooth-field (structure-preserving) variants -----------------------------------------------


def _field_model(output: str, std: float = 0.3, **kw) -> UNet2D:
    """A small fields/gain model with a non-trivial random head (not the identity)."""
    torch.manual_seed(1)
    model = UNet2D(UNetConfig(base_channels=4, depth=2, output=output, **kw))
    torch.nn.init.normal_(model.head.weight, std=std)
    torch.nn.init.normal_(model.head.bias, std=std)
    return model.eval()


def _fields_of(model: UNet2D, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """The smooth fields the model computes for input slices x (n, 1, h, w) with masks m."""
    captured = {}
    hook = model.head.register_forward_hook(lambda mod, inp, out: captured.setdefault("raw", out))
    try:
        model(torch.cat([x, m], 1))
    finally:
        hook.remove()
    return model.fields(captured["raw"], m)


@pytest.mark.parametrize(
    "output,kw", [("fields", {}), ("fields", {"field_degree": 3}), ("gain", {"field_degree": 3})]
)
def test_smooth_field_models_start_as_identity_and_are_monotone_at_every_pixel(output, kw):
    subj = synthetic_subject(2, (1, 48, 48))
    img = synthetic_scan(subj, "B")
    m = subj.brain_mask
    untrained = UNet2D(UNetConfig(base_channels=4, depth=2, output=output, **kw))
    expected = np.where(m, img / intensity_unit(img.astype(np.float64), m), 0)
    np.testing.assert_allclose(predict(untrained, img, m), expected, rtol=1e-5, atol=1e-6)

    model = _field_model(output, **kw)
    x = torch.from_numpy(expected.astype(np.float32))[:, None]
    mt = torch.from_numpy(m)[:, None].float()
    with torch.no_grad():
        f = _fields_of(model, x, mt)
        # the model's output is the map with these fields applied to its input
        np.testing.assert_allclose(
            model(torch.cat([x, mt], 1)).numpy(), model.apply_fields(x, f).numpy(), rtol=1e-5
        )
        # every pixel's map is strictly increasing in the input intensity, also beyond the data range
        levels = torch.tensor([1e-3, 0.05, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0, 1.5, 3.0])
        ys = torch.stack([model.apply_fields(torch.full_like(x, v), f) for v in levels])
        assert (ys[1:] > ys[:-1]).all()
        # and not the identity: the random head makes a real spatially varying map
        assert float((ys[-3] / ys[-3][mt.bool()].mean())[mt.bool()].std()) > 0.02


@pytest.mark.parametrize("kind", ["grid", "poly"])
def test_smooth_fields_are_smooth_and_ignore_the_background(kind):
    from harmonize.unet import poly_field, smooth_field

    def smooth(v, m):
        return smooth_field(v, m, 4) if kind == "grid" else poly_field(v, m, 2)

    torch.manual_seed(0)
    raw = torch.randn(1, 2, 40, 40)
    m = torch.zeros(1, 1, 40, 40)
    m[..., 5:35, 8:33] = 1
    f = smooth(raw, m)
    assert f.shape == raw.shape and torch.isfinite(f).all()
    # neighbouring pixels differ far less than in the white-noise input
    assert float(f.diff(dim=-1).abs().max()) < 0.2 * float(raw.diff(dim=-1).abs().mean())
    # what lies outside the mask does not change the fields inside it
    other = torch.where(m.expand_as(raw) > 0, raw, torch.full_like(raw, 100.0))
    inside = m.expand_as(raw) > 0
    np.testing.assert_allclose(smooth(other, m)[inside].numpy(), f[inside].numpy(), atol=1e-4)


def test_gain_model_keeps_structure_where_a_free_residual_does_not():
    from harmonize.metrics import structure_similarity

    subj = synthetic_subject(4, (1, 64, 64))
    img = synthetic_scan(subj, "A")
    m = subj.brain_mask
    out = predict(_field_model("gain", std=0.1, field_degree=2), img, m)
    assert structure_similarity(img, out, m) >= 0.99
    # the map is not trivial: the gain varies by more than 15 % across the head (5th-95th percentile)
    ratio = out[m] / img[m]
    assert np.percentile(ratio, 95) / np.percentile(ratio, 5) > 1.15
    # a free-form residual of even a fifth of that head's size changes the anatomy's texture
    torch.manual_seed(1)
    residual = UNet2D(UNetConfig(base_channels=4, depth=2))
    torch.nn.init.normal_(residual.head.weight, std=0.02)
    assert structure_similarity(img, predict(residual.eval(), img, m), m) < 0.99


def test_fields_model_recovers_a_known_smooth_gain_and_gamma():
    """Train on pairs target = source**gamma * exp(smooth field): the fields come out as that map."""
    gamma = 1.3
    subjects = [synthetic_subject(i, (1, 48, 48)) for i in range(4)]
    yy, xx = np.mgrid[-1:1:48j, -1:1:48j]
    log_gain = (0.35 * xx - 0.25 * yy + 0.2 * xx * yy)[None]
    src = [s.signal.astype(np.float32) for s in subjects]
    masks = [s.brain_mask for s in subjects]
    tgt = [
        (np.where(m, (x / intensity_unit(x, m)) ** gamma, 0) * np.exp(log_gain)).astype(np.float32)
        for x, m in zip(src, masks, strict=True)
    ]
    cfg = TrainingConfig(
        iterations=150,
        batch_size=4,
        lr=1e-2,
        augment=False,
        unet=UNetConfig(base_channels=4, depth=2, output="fields", field_degree=2, knots=(1.0,)),
    )
    model, _ = train_unet(src, tgt, masks, masks, cfg)
    x = torch.from_numpy(np.concatenate([s / intensity_unit(s, m) for s, m in zip(src, masks, strict=True)]))
    target = torch.from_numpy(
        np.concatenate([t / intensity_unit(t, m) for t, m in zip(tgt, masks, strict=True)])
    )
    mt = torch.from_numpy(np.concatenate(masks))
    with torch.no_grad():
        f = _fields_of(model, x[:, None], mt[:, None].float())
        pred = model(torch.stack([x, mt.float()], 1))[:, 0]
    slope = f[:, 1][mt & (x < 1)]  # the segment below the knot at 1: nearly every tissue voxel
    assert abs(float(slope.mean()) - gamma) < 0.06 and float(slope.std()) < 0.05
    # the offset field is the log gain up to one constant per image (the target's p99 unit)
    want = np.broadcast_to(log_gain, f[:, 0].shape)
    for i in range(len(src)):
        assert np.corrcoef(f[i, 0][mt[i]].numpy(), want[i][mt[i].numpy()])[0, 1] > 0.97
    err = float((pred - target).abs()[mt].mean() / target[mt].mean())
    identity = float((x - target).abs()[mt].mean() / target[mt].mean())
    assert identity > 0.15 and err < 0.06


def test_gain_profile_is_self_describing_and_round_trips(tmp_path):
    study = synthetic_study(range(3), ("A", "B"), (1, 48, 48))
    cfg = TrainingConfig(iterations=3, batch_size=2, unet=UNetConfig(base_channels=4, depth=2))
    prof = fit_profile("unet-gain", study, tmp_path / "g.json", target_site="A", training=cfg)
    assert prof.method == "unet"
    assert prof.parameters["unet"]["output"] == "gain" and prof.parameters["unet"]["field_degree"] == 2
    assert prof.parameters["output_scale"]["statistic"] == "parenchyma"
    loaded = load_profile(tmp_path / "g.json")
    assert loaded.sha256 == prof.sha256
    img, m = study.get(1, "B").image, study.get(1, "B").mask
    out = apply_profile(loaded, img, m)
    np.testing.assert_array_equal(out, apply_profile(prof, img, m))
    # the output scale: parenchyma level at the training targets' mean level
    assert parenchyma_level(out, m) == pytest.approx(prof.parameters["output_scale"]["value"], rel=1e-5)
    assert np.all(out[~m] == 0)


def test_zero_iterations_fit_the_untrained_identity_network(tmp_path):
    """--iterations 0: the ablation baseline. The profile is written as for a trained network
    (same anchor), but its network is the identity, so the output is the input times one gain."""
    study = synthetic_study(range(3), ("A", "B"), (1, 48, 48))
    cfg = TrainingConfig(iterations=0, unet=UNetConfig(base_channels=4, depth=2))
    prof = fit_profile("unet-gain", study, tmp_path / "id.json", target_site="A", training=cfg)
    assert prof.provenance["training"]["iterations"] == 0 and prof.provenance["final_loss"] is None
    scan = study.get(1, "B")
    out = apply_profile(load_profile(tmp_path / "id.json"), scan.image, scan.mask)
    ratio = out[scan.mask] / scan.image[scan.mask]
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-5)
    level = prof.parameters["output_scale"]["value"]
    assert parenchyma_level(out, scan.mask) == pytest.approx(level, rel=1e-5)
    with pytest.raises(ValueError, match="iterations must be >= 0"):
        TrainingConfig(iterations=-1)


def _shaded_head(csf_radius: float, shift: float = 0.0):
    """Closed-form (1, 64, 64) head: parenchyma 1, a central CSF disk 0.4, under exp(quadratic) shading."""
    y, x = np.mgrid[-1:1:64j, -1:1:64j]
    r = np.hypot(x, y)
    mask = r < 0.8
    tissue = np.where(r < csf_radius, 0.4, 1.0)
    shading = np.exp(0.6 * (x - shift) + 0.3 * y**2 - 0.2 * x * y)
    return (tissue * shading * mask)[None].astype(np.float32), mask[None], tissue[None]


def test_parenchyma_anchor_keeps_the_csf_share_in_absolute_units():
    """One gain that pins the field-corrected P95: the level ignores the CSF share and the
    receive gain, so the flattened mean of the output is value * (1 - f (1 - C/P)) exactly."""
    value = 0.7
    scale = {"statistic": "parenchyma", "value": value}
    means = []
    for radius, gain in ((0.2, 1.0), (0.4, 37.0)):
        img, m, tissue = _shaded_head(radius)
        out = scale_output(img * gain, m, scale)
        assert parenchyma_level(out, m) == pytest.approx(value, rel=1e-5)
        flat = out / log_field(out, m)
        f = float((tissue[m] < 1).mean())
        assert flat[m].mean() == pytest.approx(value * (1 - f * (1 - 0.4)), rel=2e-3)
        means.append(flat[m].mean())
    assert means[1] < means[0] - 0.05  # more CSF, darker: the difference survives the anchor
    # a median anchor (older profiles) pins both images' medians, which move with the CSF share:
    # it takes most of that difference out of the flattened means
    med_means = []
    for radius in (0.2, 0.4):
        img, m, _ = _shaded_head(radius)
        out = scale_output(img, m, {"statistic": "median", "value": value})
        med_means.append((out / log_field(out, m))[m].mean())
    assert abs(med_means[1] - med_means[0]) < 0.5 * abs(means[1] - means[0])
    # where the head sits under the coils: other shading, the same anchored, flattened image
    moved, m2, _ = _shaded_head(0.2, shift=0.3)
    out = scale_output(moved, m2, scale)
    np.testing.assert_allclose((out / log_field(out, m2))[m2].mean(), means[0], rtol=1e-4)
    with pytest.raises(ValueError, match="statistic must be"):
        scale_output(moved, m2, {"statistic": "mode", "value": 1.0})


def test_residual_profiles_without_output_field_still_load():
    """Profiles written before the smooth-field variants (no "output" key) are the residual U-Net."""
    cfg = UNetConfig(**{"in_channels": 2, "base_channels": 8, "depth": 3})
    assert cfg.output == "residual" and cfg.n_fields == 1
    prof = load_profile("unet-network")
    assert "output" not in prof.parameters["unet"]
    with pytest.raises(ValueError, match="output must be one of"):
        UNetConfig(output="free")
    with pytest.raises(ValueError, match="knots"):
        UNetConfig(output="fields", knots=(0.5, 0.25))
