"""Inputs of the virtual scanner: Pulseq files from other tools, phantoms, sites, the CLI."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import ismrmrd
import numpy as np
import pypulseq as pp
import pytest
import torch

from simulator import (
    SequenceError,
    brain_phantom,
    load_phantom,
    load_site,
    save_phantom,
    shepp_logan_phantom,
    simulate,
)
from simulator.tissue import tissue

EXAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "pulseq-examples"
if not EXAMPLES.is_dir():
    EXAMPLES = Path("/work/shared/data/pulseq-examples")


def _example_files() -> list[Path]:
    return sorted(EXAMPLES.glob("*.seq"))


@pytest.mark.skipif(not _example_files(), reason="pulseq-examples not present")
@pytest.mark.parametrize("path", _example_files(), ids=lambda p: p.stem)
def test_every_example_file_simulates(path):
    seq = pp.Sequence()
    seq.read(str(path))
    adc_sizes = [int(seq.get_block(i).adc.num_samples) for i, ev in seq.block_events.items() if ev[5]]
    site = load_site("siteA")
    ph = shepp_logan_phantom(matrix=16, fov_m=0.24)
    acqs = list(simulate(seq, ph, site, isochromats_per_voxel=1, spins_per_isochromat=1))
    assert [a.data.shape for a in acqs] == [(site.n_coils, n) for n in adc_sizes]
    assert all(np.isfinite(a.data).all() for a in acqs)
    assert acqs[-1].is_flag_set(ismrmrd.ACQ_LAST_IN_MEASUREMENT)
    # the object gives signal well above the noise somewhere in the scan
    peak = max(float(np.abs(a.data).max()) for a in acqs)
    assert peak > 20 * site.noise_sigma
    if path.stem == "write_epi_label":
        rev = [a.is_flag_set(ismrmrd.ACQ_IS_REVERSE) for a in acqs]
        assert 0.3 < np.mean(rev) < 0.7
        assert any(a.is_flag_set(ismrmrd.ACQ_IS_NAVIGATION_DATA) for a in acqs)
        assert len({a.idx.slice for a in acqs}) > 1
    if path.stem == "write_radial_gre":
        traj = np.concatenate([a.traj for a in acqs])
        assert traj.shape[1] == 2
        # normalised as ISMRMRD expects: k * FOV / matrix, so the edge of k-space is near 0.5
        assert 0.4 < np.abs(traj).max() < 0.6


def test_unsupported_feature_names_the_block():
    sys = pp.Opts(rf_dead_time=0, adc_dead_time=0, rf_ringdown_time=0)
    seq = pp.Sequence(sys)
    seq.add_block(pp.make_delay(1e-3))
    rf = pp.make_block_pulse(math.pi / 2, duration=1e-3, system=sys)
    seq.add_block(rf, pp.make_adc(num_samples=10, dwell=1e-5, system=sys))
    with pytest.raises(SequenceError, match="block 2: RF and ADC overlap"):
        list(simulate(seq, shepp_logan_phantom(matrix=8), load_site("siteA")))


def test_brain_phantom_subjects_and_tissues():
    a = brain_phantom(field_T=3.0, matrix=48, subject=1, resolution=2)
    b = brain_phantom(field_T=3.0, matrix=48, subject=1, resolution=2)
    c = brain_phantom(field_T=3.0, matrix=48, subject=2, resolution=2)
    template = brain_phantom(field_T=3.0, matrix=48, subject=0, resolution=2)
    torch.testing.assert_close(a.pd, b.pd)
    assert (a.pd - c.pd).abs().mean() > 0.02 and (a.pd - template.pd).abs().mean() > 0.02
    t0 = brain_phantom(field_T=3.0, matrix=48, subject=0)
    total = sum(t0.tissue_maps.values())
    assert float(total.max()) <= 1.0 + 1e-5
    # axial slice through the ventricles: all three tissues present in quantity
    # (4.6 mm pixels: GM and CSF are rarely pure, hence the lower thresholds)
    for name, level in (("gm", 0.6), ("wm", 0.9), ("csf", 0.5)):
        assert float((t0.tissue_maps[name] > level).sum()) > 20, name
    wm = t0.tissue_maps["wm"] > 0.99
    # (up to 1% GM in those voxels raises T1 a little)
    assert float(t0.t1[wm].mean()) == pytest.approx(tissue("wm", 3.0).t1, rel=0.01)
    low = brain_phantom(field_T=1.5, matrix=48, subject=0)
    assert float(low.t1[wm].mean()) == pytest.approx(tissue("wm", 1.5).t1, rel=0.01)
    torch.testing.assert_close(low.pd, t0.pd)  # the anatomy does not depend on the field
    assert t0.brain_mask.any() and not t0.brain_mask[:, 0, 0].any()
    atrophic = brain_phantom(field_T=3.0, matrix=48, atrophy=0.3, resolution=2)
    assert atrophic.tissue_maps["csf"].sum() > 1.2 * template.tissue_maps["csf"].sum()


def test_phantom_file_round_trip_and_errors(tmp_path):
    ph = shepp_logan_phantom(matrix=16)
    ph.b0_hz[:] = 5.0
    path = tmp_path / "p.h5"
    save_phantom(path, ph)
    back = load_phantom(path)
    for name in ("pd", "t1", "t2", "t2prime", "b0_hz", "b1"):
        torch.testing.assert_close(getattr(back, name), getattr(ph, name))
    assert back.voxel_size_m == pytest.approx(ph.voxel_size_m)
    import h5py

    with h5py.File(tmp_path / "bad.h5", "w") as f:
        f["PD"] = np.ones((1, 4, 4))
        f["T1"] = np.ones((1, 4, 4))
        f.attrs["voxel_size_mm"] = [5, 1, 1]
    with pytest.raises(ValueError, match="dataset 'T2' is missing"):
        load_phantom(tmp_path / "bad.h5")
    with h5py.File(tmp_path / "bad2.h5", "w") as f:
        for k in ("PD", "T1", "T2"):
            f[k] = np.ones((1, 4, 4))
        f["B0"] = np.ones((1, 4, 5))
        f.attrs["voxel_size_mm"] = [5, 1, 1]
    with pytest.raises(ValueError, match="b0_hz has shape"):
        load_phantom(tmp_path / "bad2.h5")


def test_site_files_are_validated(tmp_path):
    assert [load_site(n).field_T for n in ("siteA", "siteB", "siteC")] == [3.0, 1.5, 3.0]
    bad = tmp_path / "s.toml"
    bad.write_text("field_T = 3.0\n[coils]\nn = 0\n")
    with pytest.raises(ValueError, match=r"coils.n=0 must be an integer in 1..128"):
        load_site(bad)
    bad.write_text("field_T = 3.0\n[noise]\nsigmaa = 1\n")
    with pytest.raises(ValueError, match="key 'noise.sigmaa' is unknown"):
        load_site(bad)
    bad.write_text("field_T = 3.0\n[b0]\npoly_hz = { w = 1 }\n")
    with pytest.raises(ValueError, match="polynomial term 'w' is unknown"):
        load_site(bad)
    with pytest.raises(ValueError, match="site 'nowhere' is unknown"):
        load_site("nowhere")
    site = load_site("siteB")
    pts = torch.tensor([[0.0, 0.0, 0.0], [0.08, 0.0, 0.0]])
    sens = site.coil_sensitivities(pts)
    assert sens.shape == (12, 2)
    assert float(sens[:, 0].abs().pow(2).sum().sqrt()) == pytest.approx(1.0, rel=1e-5)
    cov = site.noise_covariance()
    assert np.allclose(cov, cov.conj().T) and np.linalg.eigvalsh(cov).min() > 0
    with pytest.raises(ValueError, match="noise.correlation"):
        dataclasses.replace(site, noise_correlation=1.0)


def test_cli_writes_an_mrd_file(tmp_path):
    from unisono.cli import main

    sys = pp.Opts(rf_dead_time=0, adc_dead_time=0, rf_ringdown_time=0)
    seq = pp.Sequence(sys)
    seq.add_block(pp.make_block_pulse(math.pi / 2, duration=1e-4, system=sys))
    seq.add_block(pp.make_adc(num_samples=32, dwell=2e-5, system=sys))
    seq.set_definition("FOV", [0.22, 0.22, 0.005])
    path = tmp_path / "fid.seq"
    seq.write(str(path))
    out = tmp_path / "raw.h5"
    rc = main(["simulate", str(path), "--phantom", "shepp-logan", "--matrix", "16", "--site", "siteC",
               "--device", "cpu", "-o", str(out)])  # fmt: skip
    assert rc == 0
    ds = ismrmrd.Dataset(str(out), "dataset", create_if_needed=False)
    try:
        assert ds.number_of_acquisitions() == 1
        assert ds.read_acquisition(0).data.shape == (16, 32)
    finally:
        ds.close()
    assert main(["simulate", str(path), "--phantom", "nope", "-o", str(out)]) == 2


def test_cli_multislice_phantom_follows_the_slice_positions(tmp_path):
    import sequences
    from unisono.cli import main

    built = sequences.build_protocol("gre2d", overrides={"matrix": 16, "n_slices": 2})
    seq_path, _ = built.write(tmp_path / "ms.seq")
    out = tmp_path / "ms.h5"
    assert (
        main(["simulate", str(seq_path), "--phantom", "shepp-logan", "--device", "cpu", "-o", str(out)]) == 0
    )
    ds = ismrmrd.Dataset(str(out), "dataset", create_if_needed=False)
    try:
        acqs = [ds.read_acquisition(i) for i in range(ds.number_of_acquisitions())]
    finally:
        ds.close()
    peak: dict[int, float] = {}
    z: dict[int, float] = {}
    for a in acqs:
        if a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT):
            continue
        peak[a.idx.slice] = max(peak.get(a.idx.slice, 0.0), float(np.abs(a.data).max()))
        z[a.idx.slice] = float(a.position[2])
    assert sorted(z.values()) == pytest.approx([-3.0, 3.0], abs=0.01)
    # each excited slice lies inside its own phantom slice: equal signal (2% noise allowance)
    assert abs(peak[0] - peak[1]) < 0.02 * max(peak.values())


def test_a_gapped_even_stacks_phantom_slices_lie_on_the_excited_slices():
    """gre2d with 4 slices of 5 mm, 2 mm apart: the phantom's voxels span the 7 mm spacing and,
    moved by the stack's offset, sit on the sequence's slice centres; each slice holds the
    template's anatomy at its own height (a single slice centred there)."""
    import sequences
    from sequences.gre import slice_positions
    from simulator.brain import VENTRICLE_Z_MNI_MM
    from simulator.phantom_spec import phantom_from_spec, slice_stack

    built = sequences.build_protocol("gre2d", overrides={"matrix": 16, "n_slices": 4, "slice_gap": 2.0})
    stack = slice_stack(built.seq)
    assert stack is not None and stack.n_slices == 4
    assert stack.thickness_m == pytest.approx(0.005) and stack.gap_m == pytest.approx(0.002)
    ph = phantom_from_spec("brain", field_T=3.0, fov_m=0.22, matrix=16, slice_thickness_m=0.005,
                           n_slices=4, slice_gap_m=stack.gap_m)  # fmt: skip
    ph.offset_m = (0.0, 0.0, stack.phantom_offset_m())
    assert ph.voxel_size_m[0] == pytest.approx(0.007)
    z = ph.positions_m()[:, 0, 0, 2].numpy()
    np.testing.assert_allclose(z, slice_positions(4, 0.005, 0.002), atol=1e-6)
    # phantom slice i was sampled at (i - 2) spacings from the centre: the same anatomy as one
    # slice centred there
    for i in (0, 3):
        one = brain_phantom(field_T=3.0, matrix=16, centre_z_mni_mm=VENTRICLE_Z_MNI_MM + (i - 2) * 7.0)
        np.testing.assert_allclose(ph.pd[i].numpy(), one.pd[0].numpy(), atol=1e-5)
    # with a margin slice on each side the stack's slices keep their places
    padded = phantom_from_spec("brain", field_T=3.0, fov_m=0.22, matrix=16, slice_thickness_m=0.005,
                               n_slices=6, slice_gap_m=stack.gap_m)  # fmt: skip
    padded.offset_m = (0.0, 0.0, stack.phantom_offset_m())
    np.testing.assert_allclose(padded.positions_m()[1:5, 0, 0, 2].numpy(), z, atol=1e-6)


def test_slice_stack_refuses_slices_one_grid_cannot_hold():
    from types import SimpleNamespace

    from simulator.phantom_spec import slice_stack

    assert slice_stack(SimpleNamespace(definitions={})) is None
    one = slice_stack(SimpleNamespace(definitions={"SlicePositions": 0.01, "SliceThickness": 0.004}))
    assert one is not None and one.phantom_offset_m() == pytest.approx(0.01) and one.gap_m == 0.0
    with pytest.raises(ValueError, match="equally spaced"):
        slice_stack(SimpleNamespace(definitions={"SlicePositions": [0.0, 0.006, 0.02]}))
    with pytest.raises(ValueError, match="equally spaced"):
        slice_stack(SimpleNamespace(definitions={"SlicePositions": [0.0, 0.0]}))
    with pytest.raises(ValueError, match="slice_gap_m"):
        brain_phantom(matrix=16, slice_gap_m=-0.001)
