"""The target scanner's shading: recovered from its scans, put on a flat output, validated."""

from __future__ import annotations

import numpy as np
import pytest

from harmonize.profile import HarmonizationProfile
from harmonize.target_shading import TargetShading, apply_target_shading, calibrate_target_shading
from harmonize.volumes import log_field

N = 48
#: the scanner's field, log F = 0.2 x - 0.15 y + 0.1 xy + 0.5 x^2 + 0.4 y^2 (x, y: -1..1 across the
#: matrix): brighter towards the coils, 0.85-2.2 of its centre over the head
TRUTH = {"x": 0.2, "y": -0.15, "xy": 0.1, "x2": 0.5, "y2": 0.4}


def _grid(n_slices: int = 1) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.meshgrid(np.linspace(-1, 1, N), np.linspace(-1, 1, N), indexing="ij")
    return np.broadcast_to(x, (n_slices, N, N)), np.broadcast_to(y, (n_slices, N, N))


def _true_log_field(n_slices: int = 1, z_slope: float = 0.0) -> np.ndarray:
    x, y = _grid(n_slices)
    c = TRUTH
    log_f = c["x"] * x + c["y"] * y + c["xy"] * x * y + c["x2"] * x * x + c["y2"] * y * y
    if n_slices > 2:
        log_f = log_f + z_slope * np.linspace(-1, 1, n_slices)[:, None, None]
    return log_f


def _anatomy(seed: int, n_slices: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A head of WM 1.0 / GM 0.6 / CSF 0.2 patches (a different subject per seed) and its mask."""
    rng = np.random.default_rng(seed)
    x, y = _grid(n_slices)
    mask = x**2 / 0.8 + y**2 / 0.7 < 1.0
    coarse = rng.random((n_slices, N // 4, N // 4)).repeat(4, 1).repeat(4, 2)
    levels = np.where(coarse < 0.15, 0.2, np.where(coarse < 0.5, 0.6, 1.0))
    image = levels * (1 + 0.01 * rng.standard_normal(levels.shape))
    return np.where(mask, image, 0).astype(np.float32), mask


def test_calibration_recovers_a_known_scanner_shading():
    """Scans of eight subjects under one scanner's field: the mean of their fits is that field,
    although each subject's anatomy leaks a little into its own fit."""
    scans = [_anatomy(seed) for seed in range(8)]
    field = np.exp(_true_log_field())
    table = calibrate_target_shading([im * field for im, _ in scans], [m for _, m in scans], "A")
    assert table.site == "A" and table.n_images == 8 and "z" not in table.coefficients
    for term, value in TRUTH.items():
        assert table.coefficients[term] == pytest.approx(value, abs=0.02), term
    # a stack of three slices or more also gets the through-slice slope
    stack = [_anatomy(seed, 3) for seed in range(4)]
    field3 = np.exp(_true_log_field(3, z_slope=0.25))
    table3 = calibrate_target_shading([im * field3 for im, _ in stack], [m for _, m in stack], "A")
    assert table3.coefficients["z"] == pytest.approx(0.25, abs=0.05)
    with pytest.raises(ValueError, match="same number of slices"):
        calibrate_target_shading([scans[0][0], stack[0][0]], [scans[0][1], stack[0][1]], "A")


def test_the_target_shading_goes_on_a_flat_image_at_its_mean_level():
    table = TargetShading("A", dict(TRUTH), 8)
    flat, mask = _anatomy(1)
    out = apply_target_shading(flat, mask, table)
    ratio = out[mask] / flat[mask]
    assert ratio.mean() == pytest.approx(1.0, rel=1e-5)  # a flat region keeps its mean intensity
    # the output carries the scanner's field (up to its scale), and nothing outside the mask
    log_ratio = np.log(ratio) - _true_log_field()[mask]
    assert np.ptp(log_ratio) < 1e-5
    assert np.all(out[~mask] == 0) and out.dtype == np.float32
    # what the calibration's own field fit finds on the output is that field again
    found = np.log(log_field(out, mask)[mask]) - _true_log_field()[mask]
    assert np.ptp(found) < 0.02
    # 2-D images work alike; a blank image stays blank
    np.testing.assert_allclose(apply_target_shading(flat[0], mask[0], table), out[0], rtol=1e-6)
    np.testing.assert_array_equal(apply_target_shading(np.zeros_like(flat), mask, table), np.zeros_like(flat))


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ([1, 2], "must be a table"),
        ({"site": "A", "coefficients": dict(TRUTH)}, "needs 'n_images'"),
        ({"site": "", "coefficients": dict(TRUTH), "n_images": 3}, "site must be a site name"),
        ({"site": "A", "coefficients": {**TRUTH, "w": 1.0}, "n_images": 3}, "unknown terms"),
        ({"site": "A", "coefficients": {"x": 0.1}, "n_images": 3}, "missing in-plane terms"),
        (
            {"site": "A", "coefficients": {**TRUTH, "x2": float("nan")}, "n_images": 3},
            r"coefficients\['x2'\]",
        ),
        ({"site": "A", "coefficients": dict(TRUTH), "n_images": 0}, "n_images must be a positive"),
    ],
)
def test_bad_target_shading_tables_are_refused(table, message):
    with pytest.raises(ValueError, match=message):
        TargetShading.from_dict(table)


def test_a_profile_holds_a_target_shading_only_with_output_shading_target():
    table = {"site": "A", "coefficients": dict(TRUTH), "n_images": 3}
    HarmonizationProfile("ok", "unet", {"output_shading": "target", "target_shading": table})
    with pytest.raises(ValueError, match="go together"):
        HarmonizationProfile("x", "unet", {"output_shading": "target"})
    with pytest.raises(ValueError, match="go together"):
        HarmonizationProfile("x", "unet", {"output_shading": "removed", "target_shading": table})
    with pytest.raises(ValueError, match="not the profile's target site"):
        HarmonizationProfile(
            "x", "unet", {"output_shading": "target", "target_shading": table}, target_site="B"
        )
    with pytest.raises(ValueError, match="n_images"):
        HarmonizationProfile(
            "x", "unet", {"output_shading": "target", "target_shading": {**table, "n_images": -1}}
        )
