"""`unisono harmonize study|fit|apply|evaluate` end to end, and the gadget's output equals `apply`."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from harmonize import apply_profile, load_profile
from unisono.cli import main


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    rc = main(["harmonize", "study", "--synthetic", "--subjects", "6", "--sites", "A,B,C", "--matrix", "48",
               "-o", str(out)])  # fmt: skip
    assert rc == 0
    return out


def test_study_fit_apply_npy(study_dir, tmp_path):
    prof_path = tmp_path / "ny.json"
    assert main(["harmonize", "fit", "--method", "nyul", "--train", str(study_dir), "--target-site", "A",
                 "--train-subjects", "0-2", "-o", str(prof_path)]) == 0  # fmt: skip
    prof = load_profile(prof_path)
    assert prof.method == "nyul" and prof.target_site == "A"
    assert prof.provenance["train_subjects"] == [0, 1, 2]
    img = np.load(study_dir / "sub-004_site-B_rep-0.npz")["image"]
    np.save(tmp_path / "in.npy", img)
    assert (
        main(["harmonize", "apply", str(prof_path), str(tmp_path / "in.npy"), "-o", str(tmp_path / "o.npy")])
        == 0
    )
    np.testing.assert_array_equal(np.load(tmp_path / "o.npy"), apply_profile(prof, img))


def test_apply_nifti_keeps_geometry(tmp_path):
    import nibabel as nib

    from harmonize.synthetic import synthetic_scan, synthetic_subject

    zyx = synthetic_scan(synthetic_subject(2, (3, 48, 48)), "C")
    affine = np.diag([0.9, 0.9, 5.0, 1.0])
    affine[:3, 3] = [-20, 10, 3]
    nib.save(nib.Nifti1Image(zyx.T, affine), tmp_path / "in.nii.gz")
    assert (
        main(["harmonize", "apply", "zscore", str(tmp_path / "in.nii.gz"), "-o", str(tmp_path / "o.nii.gz")])
        == 0
    )
    out = nib.load(tmp_path / "o.nii.gz")
    np.testing.assert_allclose(out.affine, affine)
    np.testing.assert_allclose(
        np.asarray(out.get_fdata()).T, apply_profile(load_profile("zscore"), zyx), atol=1e-6
    )


def test_apply_mrd_records_profile_and_keeps_header(tmp_path):
    import ismrmrd

    from gadgets.mrdfile import read_images, write_images
    from harmonize.synthetic import synthetic_scan, synthetic_subject

    img = synthetic_scan(synthetic_subject(1, (1, 48, 48)), "B")
    im = ismrmrd.Image.from_array(img[None], transpose=False)
    im.field_of_view = (220.0, 220.0, 5.0)
    im.position = (1.0, 2.0, 3.0)
    im.image_series_index = 4
    write_images(tmp_path / "in.h5", None, [im])
    assert main(["harmonize", "apply", "default", str(tmp_path / "in.h5"), "-o", str(tmp_path / "o.h5")]) == 0
    (out,) = read_images(tmp_path / "o.h5")
    prof = load_profile("default")
    np.testing.assert_allclose(np.asarray(out.data)[0], apply_profile(prof, img), atol=1e-6)
    assert tuple(out.position) == pytest.approx((1.0, 2.0, 3.0))
    assert tuple(out.field_of_view) == pytest.approx((220.0, 220.0, 5.0))
    meta = ismrmrd.Meta.deserialize(out.attribute_string)
    assert meta["unisono.harmonization"] == "default"
    assert meta["unisono.harmonization_sha256"] == prof.sha256


def test_evaluate_json_scores_every_method(study_dir, capsys):
    capsys.readouterr()
    assert main(["harmonize", "evaluate", str(study_dir), "--methods", "raw,zscore,nyul,cdf", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["test_subjects"] == [3, 4, 5] and res["heldout_sites"] == ["C"]
    assert set(res["methods"]) == {"raw", "zscore", "nyul", "cdf"}
    for name in ("zscore", "nyul", "cdf"):
        assert res["methods"][name]["w1"] < res["methods"]["raw"]["w1"]
        assert res["methods"][name]["ssim"] > res["methods"]["raw"]["ssim"]
    # r with its subject-bootstrap interval; methods also get the paired interval of r - raw's r
    raw = res["methods"]["raw"]
    lo, hi = raw["atrophy_r_per_image_ci95"]
    assert lo <= raw["atrophy_r_per_image"] <= hi
    assert "atrophy_r_minus_raw_ci95" not in raw
    assert len(res["methods"]["cdf"]["atrophy_r_per_image_minus_raw_ci95"]) == 2
    assert res["methods"]["nyul"]["atrophy_r_per_image_minus_raw_ci95"] is None  # offset scale: no read-out


def test_any_harmonizers_images_are_scored_like_a_profiles(study_dir, capsys):
    """evaluate.score_images scores images made outside a profile exactly as evaluate_study
    scores a profile's; the network-free scanner-field benchmark prints such scores."""
    import importlib.util
    from pathlib import Path

    from harmonize.evaluate import evaluate_study, evaluation_scans, harmonize_scans, score_images
    from harmonize.study import load_study

    study = load_study(study_dir)
    nyul = load_profile("nyul-siteA")
    scans = evaluation_scans(study, [3, 4, 5])
    by_hand = score_images(
        scans, {"raw": harmonize_scans(scans, None), "n": harmonize_scans(scans, nyul)}, ["C"], "raw"
    )
    via_profiles = evaluate_study(study, {"raw": None, "n": nyul}, [3, 4, 5], heldout_sites=["C"])
    assert by_hand["methods"]["raw"] == via_profiles["methods"]["raw"]
    assert by_hand["methods"]["n"] == {
        k: v for k, v in via_profiles["methods"]["n"].items() if k != "profile_sha256"
    }
    lo, hi = by_hand["methods"]["n"]["site_accuracy_ci95"]
    assert lo <= by_hand["methods"]["n"]["site_accuracy"] <= hi
    with pytest.raises(ValueError, match="no image for scans"):
        score_images(scans, {"x": {}})
    with pytest.raises(ValueError, match="raw='q'"):
        score_images(scans, {"raw": harmonize_scans(scans, None)}, raw="q")
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "harmonize_fixed_shading.py"
    spec = importlib.util.spec_from_file_location("harmonize_fixed_shading", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    capsys.readouterr()
    res = bench.main([str(study_dir), "--target-site", "A", "--calibration-subjects", "0-2",
                      "--test-subjects", "3-5", "--heldout-sites", "C"])  # fmt: skip
    assert set(res["methods"]) == {"raw", "scanner-field", "scanner-field+noise"}
    assert (
        json.loads(capsys.readouterr().out)["methods"]["scanner-field"]["ssim"]
        > res["methods"]["raw"]["ssim"]
    )


def test_fit_and_evaluate_the_smooth_field_variants(study_dir, tmp_path, capsys):
    prof_path = tmp_path / "g.json"
    assert main(["harmonize", "fit", "--method", "unet-gain", "--train", str(study_dir), "--target-site", "A",
                 "--train-subjects", "0-2", "--iterations", "2", "-o", str(prof_path)]) == 0  # fmt: skip
    prof = load_profile(prof_path)
    assert prof.method == "unet" and prof.parameters["unet"]["output"] == "gain"
    assert (tmp_path / "g.pt").is_file()
    capsys.readouterr()
    assert main(["harmonize", "evaluate", str(study_dir), "--methods", "raw,unet-fields,unet-gain+sites",
                 "--iterations", "2", "--json"]) == 0  # fmt: skip
    res = json.loads(capsys.readouterr().out)
    assert set(res["methods"]) == {
        "raw",
        "unet-fields",
        "unet-gain",
        "unet-gain+sites",
    }  # the base is scored too
    assert 0 < res["methods"]["unet-fields"]["structure"] <= 1
    # the held-out site C is calibrated too, from the training subjects' scans
    sites = load_profile(study_dir / "profiles" / "unet-gain-sites.json").parameters["site_contrast"]["sites"]
    assert sorted(sites) == ["A", "B", "C"] and sites["C"]["n_images"] == 3


def test_cli_errors_are_one_sentence(study_dir, capsys):
    assert (
        main(["harmonize", "fit", "--method", "magic", "--train", str(study_dir), "-o", "/tmp/x.json"]) == 2
    )
    assert "method must be one of" in capsys.readouterr().err
    assert main(["harmonize", "apply", "default", "/nonexistent.h5", "-o", "/tmp/o.h5"]) == 2
    assert main(["harmonize", "evaluate", str(study_dir), "--methods", "raw,bogus"]) == 2
    assert "bogus" in capsys.readouterr().err


#: a target shading as calibrate --shading target writes it (siteA's coils brighten the edges)
TARGET_SHADING = {
    "site": "siteA",
    "coefficients": {"x": -0.1, "y": 0.04, "xy": -0.04, "x2": 1.9, "y2": 2.0},
    "n_images": 12,
}


def _derived_profile(folder, name: str) -> str:
    """The shipped unet-gain-sites with a noise table in which siteB is the noisier site, and a
    bias-corrected output ("noise-step", a table older than its placement: after the curves) or
    the target's shading on it ("target-shading"): parameters the gadget must pass through as
    `apply` does."""
    import shutil

    from harmonize.profile import save_profile

    shipped = load_profile("unet-gain-sites")
    shutil.copy(shipped.weights_path(), folder / shipped.weights_file)
    noise = {"target_site": "siteA", "levels": {"siteA": 0.0129, "siteB": 0.0297}}
    params = {**shipped.parameters, "site_noise": noise, "output_shading": "removed"}
    if name == "target-shading":  # with the noise step before the curves, as calibrate writes it
        noise = {**noise, "placement": "before_curves"}
        params = {**params, "site_noise": noise, "output_shading": "target", "target_shading": TARGET_SHADING}
    prof = replace(shipped, name=name, parameters=params, source_dir=None)
    return str(save_profile(prof, folder / f"{name}.json"))


@pytest.mark.parametrize(
    "profile", ["default", "unet", "unet-gain", "unet-gain-sites", "noise-step", "target-shading"]
)
def test_gadget_output_on_a_stream_equals_apply(profile, tmp_path):
    """The harmonize gadget in the real chain gives what `apply_profile` gives on the unharmonized
    image, with the site named by the header's stationName (which picks a per-site contrast curve
    and noise level)."""
    import ismrmrd
    import torch

    from gadgets import load_chain, run_chain
    from sequences import build_protocol
    from simulator import brain_phantom, load_site, simulate, with_site

    torch.set_num_threads(1)
    if profile in ("noise-step", "target-shading"):
        profile = _derived_profile(tmp_path, profile)
    built = build_protocol("gre2d", overrides={"matrix": 32, "flip_angle": 30.0})
    site = load_site("siteB")
    ph = brain_phantom(field_T=site.field_T, fov_m=0.22, matrix=32, subject=2)
    hdr = with_site(built.header, site)
    acqs = list(simulate(built.seq, ph, site, header=hdr, isochromats_per_voxel=1, seed=0))
    plain = run_chain(load_chain("cartesian", overrides={"harmonize": {"enabled": False}}), hdr, acqs)
    chain = load_chain("cartesian", overrides={"harmonize": {"profile": profile, "keep_original": False}})
    harm = run_chain(chain, hdr, acqs)
    prof = load_profile(profile)
    assert len(plain) == len(harm) == 1
    assert hdr.acquisitionSystemInformation.stationName == "siteB"
    expected = apply_profile(prof, np.abs(np.asarray(plain[0].data))[0], site="siteB")
    np.testing.assert_allclose(np.asarray(harm[0].data)[0], expected, rtol=1e-5, atol=1e-5)
    meta = ismrmrd.Meta.deserialize(harm[0].attribute_string)
    assert meta["unisono.harmonization"] == prof.name
    assert meta["unisono.harmonization_sha256"] == prof.sha256
    if "site_contrast" in prof.parameters:
        assert meta["unisono.harmonization_site"] == "siteB"
        unmapped = apply_profile(prof, np.abs(np.asarray(plain[0].data))[0])
        assert not np.allclose(np.asarray(harm[0].data)[0], unmapped, rtol=1e-3, atol=1e-3)


def test_study_runs_the_real_pipeline(tmp_path):
    """sequence → simulator → recon for 2 subjects x 2 sites at 32x32; labels line up with the image."""
    from harmonize.study import load_study

    out = tmp_path / "sim"
    assert main(["harmonize", "study", "--subjects", "2", "--sites", "siteA,siteB", "--matrix", "32",
                 "--isochromats", "1", "--spins", "4", "-o", str(out)]) == 0  # fmt: skip
    study = load_study(out)
    assert study.source == "simulator" and study.sites == ["siteA", "siteB"] and study.subjects == [1, 2]
    assert study.provenance["isochromats_per_voxel"] == 1 and study.provenance["spins_per_isochromat"] == 4
    scan = study.get(1, "siteB")
    assert scan.image.shape == scan.labels.shape == scan.mask.shape == (1, 32, 32)
    # the brain is brighter than the background and the phantom's labels sit on it
    assert scan.image[scan.mask].mean() > 5 * scan.image[~scan.mask].mean()
    assert study.get(1, "siteA").atrophy == study.get(1, "siteB").atrophy


def test_study_noise_free_twins_share_units_and_scans_never_share_noise(tmp_path):
    """--clean-site: a noise-free twin of repeat 0 in the same units; every scan its own noise."""
    from harmonize.study import CLEAN_REPEAT, load_study
    from unisono.commands.harmonize import scan_seed

    out = tmp_path / "sim"
    assert main(["harmonize", "study", "--subjects", "2", "--sites", "siteA,siteB", "--matrix", "32",
                 "--isochromats", "1", "--spins", "4", "--clean-site", "siteA", "--clean-subjects", "1",
                 "--clean-isochromats", "2", "-o", str(out)]) == 0  # fmt: skip
    study = load_study(out)
    clean_prov = study.provenance["clean"]
    assert clean_prov["isochromats_per_voxel"] == 2 and clean_prov["spins_per_isochromat"] == 4
    clean = study.get(1, "siteA", CLEAN_REPEAT)
    noisy = study.get(1, "siteA", 0)
    assert clean.clean and not noisy.clean
    assert [s.key for s in study.select(None, None, repeat=None)] == [
        s.key for s in study.scans if s.repeat != CLEAN_REPEAT
    ]  # "all repeats" never hands out a noise-free twin by accident
    m = noisy.mask
    # same units (same prewhitening): the brain means agree to a few %, the twin is not noise
    assert clean.image[m].mean() == pytest.approx(noisy.image[m].mean(), rel=0.1)
    assert np.abs(clean.image - noisy.image)[m].mean() > 0
    assert len({scan_seed(1, "siteA", 0), scan_seed(1, "siteB", 0), scan_seed(1, "siteA", 1)}) == 3


def test_study_default_twin_is_the_scan_without_thermal_noise(tmp_path):
    """Without --clean-isochromats/--clean-spins the twin repeats the scan's own sampling and seed:
    it differs from the scan by the thermal noise only (far less than the scan's own contrast)."""
    from harmonize.study import CLEAN_REPEAT, load_study
    from unisono.cli import build_parser
    from unisono.commands.harmonize import STUDY_ISOCHROMATS, STUDY_SPINS

    args = build_parser().parse_args(["harmonize", "study", "-o", "x"])
    assert (args.isochromats, args.spins) == (STUDY_ISOCHROMATS, STUDY_SPINS) == (4, 32)
    assert args.clean_isochromats is None and args.clean_spins is None
    out = tmp_path / "sim"
    assert main(["harmonize", "study", "--subjects", "2", "--sites", "siteA,siteB", "--matrix", "32",
                 "--isochromats", "1", "--spins", "2", "--clean-site", "siteA", "--clean-subjects", "1",
                 "-o", str(out)]) == 0  # fmt: skip
    study = load_study(out)
    clean, noisy = study.get(1, "siteA", CLEAN_REPEAT), study.get(1, "siteA", 0)
    m = noisy.mask
    diff = np.abs(clean.image - noisy.image)[m]
    assert 0 < diff.mean() < 0.02 * noisy.image[m].mean()
    # --noise-scale K: the same noise draws K times stronger, prescan too; prewhitening puts images
    # in units of the noise sd, so the twin comes out K times smaller and the noise K times stronger
    # relative to it
    louder = tmp_path / "loud"
    assert main(["harmonize", "study", "--subjects", "2", "--sites", "siteA,siteB", "--matrix", "32",
                 "--isochromats", "1", "--spins", "2", "--clean-site", "siteA", "--clean-subjects", "1",
                 "--noise-scale", "20", "-o", str(louder)]) == 0  # fmt: skip
    loud = load_study(louder)
    assert loud.provenance["thermal_noise_scale"] == 20 and study.provenance["thermal_noise_scale"] == 1
    loud_clean, loud_noisy = loud.get(1, "siteA", CLEAN_REPEAT), loud.get(1, "siteA", 0)
    np.testing.assert_allclose(20 * loud_clean.image[m], clean.image[m], rtol=1e-3)
    loud_diff = np.abs(loud_clean.image - loud_noisy.image)[m]
    assert loud_diff.mean() / loud_clean.image[m].mean() == pytest.approx(
        20 * diff.mean() / clean.image[m].mean(), rel=0.1
    )


def test_benchmark_reports_every_method():
    from harmonize.benchmark import run_benchmark

    res = run_benchmark(size=64, repeats=1)
    assert set(res["methods"]) == {
        "zscore",
        "whitestripe",
        "nyul",
        "cdf",
        "unet",
        "unet-gain",
        "unet-gain-sites",
        "unet-gain-sites+noise",
        "unet-gain-sites+target",
    }
    assert res["methods"]["unet-gain"]["profile"] == "unet-gain"  # the shipped profile is timed
    assert res["methods"]["unet-gain-sites+target"]["profile"] == "unet-gain-sites+target"
    for v in res["methods"].values():
        assert v["median_s"] > 0 and len(v["profile_sha256"]) == 64
    with pytest.raises(ValueError, match="unknown methods"):
        run_benchmark(size=64, methods=("magic",))


def test_study_head_shifts_are_registered_back_onto_the_phantom_grid(tmp_path):
    """With --head-shift each scan puts the head up to that many pixels off the isocentre, and
    the image is rolled back onto the phantom's grid, where labels and brain mask are: it lines
    up with the same scan taken at the isocentre better than any 1-pixel roll of it does,
    while the coils' shading has moved under the anatomy."""
    from harmonize.study import load_study
    from unisono.commands.harmonize import head_shift

    def study(shift: int):
        out = tmp_path / f"h{shift}"
        assert main(["harmonize", "study", "--subjects", "2", "--sites", "siteA,siteB", "--matrix", "32",
                     "--isochromats", "1", "--spins", "4", "--head-shift", str(shift),
                     "-o", str(out)]) == 0  # fmt: skip
        return load_study(out)

    centred, shifted = study(0), study(2)
    assert shifted.provenance["head_shift_pixels"] == 2
    shifts = [head_shift(s.subject, s.site, s.repeat, 2) for s in shifted.scans]
    assert any(sh != (0, 0) for sh in shifts) and all(max(map(abs, sh)) <= 2 for sh in shifts)
    for scan, sh in zip(shifted.scans, shifts, strict=True):
        ref = centred.get(scan.subject, scan.site, scan.repeat)
        here, *rolled = (
            float(np.corrcoef(np.roll(scan.image, d, axis=(1, 2))[ref.mask], ref.image[ref.mask])[0, 1])
            for d in [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)]
        )
        assert all(here > r for r in rolled), (scan.key, sh)
        if sh != (0, 0):
            assert here < 0.999  # the shading moved under the head
    assert head_shift(3, "siteB", 0, 0) == (0, 0)
    assert head_shift(3, "siteB", 0, 3) == head_shift(3, "siteB", 0, 3) != head_shift(3, "siteB", 1, 3)


def test_study_phantom_slices_lie_where_a_gapped_even_stack_excites_them(tmp_path):
    """Two 5 mm slices 3 mm apart: their centres lie half a spacing either side of the
    phantom's middle, and each voxel spans a whole spacing. Placed there, both slices see
    the same amount of tissue (no margin: each is an end slice); a phantom half a slice off,
    or one whose voxels leave the gap empty, would leave one slice partly in air."""
    from harmonize.study import load_study

    out = tmp_path / "s"
    assert main(["harmonize", "study", "--subjects", "2", "--sites", "siteA,siteB", "--matrix", "32",
                 "--isochromats", "1", "--spins", "4", "--set", "n_slices=2", "--set", "slice_gap=3",
                 "-o", str(out)]) == 0  # fmt: skip
    for scan in load_study(out).scans:
        assert scan.image.shape == scan.labels.shape == (2, 32, 32)
        means = [scan.image[z][scan.mask[z]].mean() for z in range(2)]
        assert min(means) / max(means) > 0.9


def test_slab_study_phantom_margin_and_parallel_scans_agree(tmp_path):
    """A contiguous 3-slice stack: each slice also reads its neighbours' tissue through the slice
    profile's tails (70° is far above the Ernst angle, so the tails' small flips give the most
    signal). Without a margin the phantom ends at the stack and its outer slices come out
    darker; with one slice of margin they match the centre, as inside a head. Two processes
    give the same study as one."""
    from harmonize.study import load_study

    def study(margin: int, jobs: int):
        out = tmp_path / f"m{margin}j{jobs}"
        assert main(["harmonize", "study", "--subjects", "2", "--sites", "siteA,siteB", "--matrix", "32",
                     "--isochromats", "1", "--spins", "4", "--set", "n_slices=3", "--set", "slice_gap=0",
                     "--phantom-margin", str(margin), "--jobs", str(jobs), "-o", str(out)]) == 0  # fmt: skip
        return load_study(out)

    def outer_over_centre(scan) -> float:
        means = [scan.image[z][scan.mask[z]].mean() for z in range(3)]
        return min(means[0], means[2]) / means[1]

    ends, padded, parallel = study(0, 1), study(1, 1), study(1, 2)
    assert padded.provenance["phantom_margin_slices"] == 1
    scan = padded.get(1, "siteA")
    assert scan.image.shape == scan.mask.shape == scan.labels.shape == (3, 32, 32)
    assert outer_over_centre(ends.get(1, "siteA")) < 0.9
    assert outer_over_centre(scan) > 0.95
    assert [s.key for s in parallel.scans] == [s.key for s in padded.scans]
    for a, b in zip(parallel.scans, padded.scans, strict=True):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.labels, b.labels)


@pytest.mark.parametrize(
    "option",
    [
        ["--phantom-margin", "-1"],
        ["--jobs", "0"],
        ["--noise-scale", "0"],
        ["--noise-scale", "nan"],
        ["--head-shift", "9"],
        ["--head-shift", "-1"],
        ["--synthetic", "--head-shift", "2"],
    ],
)
def test_study_refuses_bad_options(option, tmp_path, capsys):
    out = tmp_path / "s"
    args = ["harmonize", "study", "--subjects", "2", "--sites", "siteA,siteB", *option, "-o", str(out)]
    assert main(args) == 2
    assert option[0] in capsys.readouterr().err
    assert not (out / "study.json").exists()
