"""Harmonization profiles: file round trip, hashes, shipped profiles and apply_profile dispatch."""

from __future__ import annotations

import json

import numpy as np
import pytest

from harmonize import (
    HarmonizationProfile,
    apply_profile,
    auto_mask,
    fit_cdf_reference,
    fit_nyul,
    list_profiles,
    load_profile,
    save_profile,
    whitestripe,
    zscore,
)
from harmonize.synthetic import synthetic_scan, synthetic_subject


@pytest.fixture(scope="module")
def scans():
    subjects = [synthetic_subject(i, (1, 64, 64)) for i in range(3)]
    return [synthetic_scan(s, "A") for s in subjects], [s.brain_mask for s in subjects]


def _profiles(scans):
    images, masks = scans
    return [
        HarmonizationProfile("z", "zscore"),
        HarmonizationProfile("ws", "whitestripe", {"tau": 0.05, "contrast": "T1"}),
        HarmonizationProfile("ny", "nyul", fit_nyul(images, masks).to_dict(), target_site="A"),
        HarmonizationProfile("cd", "cdf", fit_cdf_reference(images, masks).to_dict(), target_site="A"),
    ]


def test_profiles_round_trip_with_same_hash_and_output(tmp_path, scans):
    image = synthetic_scan(synthetic_subject(9, (1, 64, 64)), "C")
    for prof in _profiles(scans):
        path = save_profile(prof, tmp_path / prof.name)
        assert path.suffix == ".json"
        loaded = load_profile(path)
        assert loaded == prof
        assert loaded.sha256 == prof.sha256 and len(loaded.sha256) == 64
        a, b = apply_profile(prof, image), apply_profile(loaded, image)
        assert a.dtype == np.float32 and a.shape == image.shape
        np.testing.assert_array_equal(a, b)


def test_hash_identifies_the_transform_not_the_name(scans):
    a = HarmonizationProfile("one", "whitestripe", {"tau": 0.05, "contrast": "T1"}, provenance={"x": 1})
    b = HarmonizationProfile("two", "whitestripe", {"tau": 0.05, "contrast": "T1"})
    c = HarmonizationProfile("one", "whitestripe", {"tau": 0.06, "contrast": "T1"})
    assert a.sha256 == b.sha256 != c.sha256


def test_edited_profile_is_refused(tmp_path):
    path = save_profile(HarmonizationProfile("ws", "whitestripe", {"tau": 0.05}), tmp_path / "ws.json")
    data = json.loads(path.read_text())
    data["parameters"]["tau"] = 0.2
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="does not match its content"):
        load_profile(path)


def test_bad_profiles_get_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="method must be one of"):
        HarmonizationProfile("x", "histogram-magic")
    with pytest.raises(ValueError, match="unknown profile 'nope'"):
        load_profile("nope")
    with pytest.raises(FileNotFoundError):
        load_profile(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_profile(tmp_path / "bad.json")
    (tmp_path / "old.json").write_text(json.dumps({"name": "x", "method": "zscore"}))
    with pytest.raises(ValueError, match="format must be"):
        load_profile(tmp_path / "old.json")


def test_shipped_default_profile_loads_by_name_and_applies():
    assert "default" in list_profiles()
    prof = load_profile("default")
    assert prof.name == "default"
    subj = synthetic_subject(4, (1, 64, 64))
    img = synthetic_scan(subj, "B")
    out = apply_profile(prof, img)
    m = auto_mask(img)
    assert np.all(out[~m] == 0)
    if prof.method == "whitestripe":
        np.testing.assert_allclose(out, whitestripe(img, m, **prof.parameters), atol=1e-6)


def test_apply_profile_uses_the_given_mask():
    subj = synthetic_subject(5, (1, 64, 64))
    img = synthetic_scan(subj, "A")
    out = apply_profile(HarmonizationProfile("z", "zscore"), img, mask=subj.brain_mask)
    np.testing.assert_array_equal(out, zscore(img, subj.brain_mask))
