"""gre2d on every hardware profile: timing, TE/TR, k-space grid, labels, header, write/read."""

from __future__ import annotations

import math

import ismrmrd.xsd as mx
import numpy as np
import pytest

import sequences
from sequences.analysis import adc_events, kspace_per_adc, measure_te, measure_tr, read_sequence, rf_events
from sequences.header import header_xml_path

SYSTEMS = sequences.list_systems()
MATRIX = 32


@pytest.fixture(scope="module")
def built() -> dict[str, sequences.BuiltSequence]:
    return {s: sequences.build_protocol("gre2d", s, {"matrix": MATRIX}) for s in SYSTEMS}


def test_at_least_four_profiles_with_different_hardware():
    profiles = [sequences.load_system(s) for s in SYSTEMS]
    assert len(profiles) >= 4
    for attr in ("max_grad", "max_slew", "grad_raster_time", "rf_dead_time", "B0"):
        assert len({getattr(p, attr) for p in profiles}) >= 3, attr


@pytest.mark.parametrize("system", SYSTEMS)
def test_timing_check_passes(built, system):
    ok, errors = built[system].seq.check_timing()
    assert ok, errors[:3]


@pytest.mark.parametrize("system", SYSTEMS)
def test_te_tr_measured_from_blocks_match_protocol(built, system):
    b = built[system]
    raster = b.system.block_duration_raster
    assert abs(measure_te(b.seq) - 5e-3) <= raster / 2 + 1e-9
    assert abs(measure_tr(b.seq) - 20e-3) <= raster / 2 + 1e-9


@pytest.mark.parametrize("system", SYSTEMS)
def test_kspace_on_cartesian_grid_with_centred_lines(built, system):
    b = built[system]
    k, noise = kspace_per_adc(b.seq)
    ev = adc_events(b.seq)
    fov = 0.22
    assert noise[0] and not any(noise[1:])
    img = [(e, kk) for e, kk, nz in zip(ev, k, noise, strict=True) if not nz]
    assert len(img) == MATRIX
    n_s = 2 * MATRIX
    expected_kx = (np.arange(n_s) - n_s // 2) / (2 * fov)  # 2x oversampled readout: dk = 1/(2 FOV)
    for e, kk in img:
        lin = e.labels["LIN"]
        assert kk.shape == (n_s, 3)
        np.testing.assert_allclose(kk[:, 0], expected_kx, atol=1e-6 / fov)
        np.testing.assert_allclose(kk[:, 1], (lin - MATRIX // 2) / fov, atol=1e-6 / fov)
        np.testing.assert_allclose(kk[:, 2], 0.0, atol=1e-6 / fov)
    # centred: line N/2, sample N_s/2 is exactly k = 0
    centre = [kk for e, kk in img if e.labels["LIN"] == MATRIX // 2][0]
    assert np.linalg.norm(centre[n_s // 2]) < 1e-6


def test_labels_present_on_every_adc(built):
    ev = adc_events(built["generic"].seq)
    assert ev[0].labels["NOISE"] == 1
    assert built["generic"].seq.get_block(1).rf is None  # noise prescan: ADC, no RF
    lins = [e.labels["LIN"] for e in ev[1:]]
    assert lins == list(range(MATRIX))
    for e in ev[1:]:
        for name in ("LIN", "PAR", "SLC", "AVG", "REP", "SET", "ECO", "NAV", "NOISE"):
            assert name in e.labels
        assert e.labels["NOISE"] == 0 and e.labels["NAV"] == 0 and e.labels["PAR"] == 0


def test_rf_spoiling_quadratic_and_adc_follows_rf():
    b = sequences.build_protocol("gre2d", "generic", {"matrix": 16, "dummy_scans": 0})
    phases_rf, phases_adc = [], []
    for bid in b.seq.block_events:
        blk = b.seq.get_block(bid)
        if blk.rf is not None:
            phases_rf.append(blk.rf.phase_offset)
        if blk.adc is not None and bid > 1:
            phases_adc.append(blk.adc.phase_offset)
    inc = math.radians(117)
    expected = [(inc * n * (n + 1) / 2) % (2 * math.pi) for n in range(16)]
    np.testing.assert_allclose(np.unwrap(phases_rf), np.unwrap(expected), atol=1e-9)
    np.testing.assert_allclose(np.unwrap(phases_adc), np.unwrap(expected), atol=1e-9)
    # second difference of the phase is the constant 117 deg increment
    d2 = np.diff(np.unwrap(phases_rf), 2)
    np.testing.assert_allclose(np.mod(d2, 2 * np.pi), inc, atol=1e-9)


def test_multislice_offsets_and_slc_labels():
    b = sequences.build_protocol("gre2d", "generic", {"matrix": 16, "n_slices": 3, "dummy_scans": 0})
    ev = adc_events(b.seq)[1:]
    assert sorted({e.labels["SLC"] for e in ev}) == [0, 1, 2]
    freqs = sorted(
        {round(blk.rf.freq_offset, 3) for blk in map(b.seq.get_block, b.seq.block_events) if blk.rf}
    )
    gz = b.seq.get_block(2).gz.amplitude
    np.testing.assert_allclose(freqs, gz * np.array([-6e-3, 0.0, 6e-3]), atol=1e-3)
    assert b.header.encoding[0].encodingLimits.slice.maximum == 2


def test_flip_angle_from_waveform():
    b = sequences.build_protocol("gre2d", "generic", {"matrix": 16, "flip_angle": 20})
    flips = {round(math.degrees(r.flip), 6) for r in rf_events(b.seq)}
    assert flips == {20.0}


def test_header_describes_encoding(built):
    h = built["generic"].header
    enc = h.encoding[0]
    assert enc.trajectory == mx.trajectoryType.CARTESIAN
    assert (enc.encodedSpace.matrixSize.x, enc.encodedSpace.matrixSize.y) == (2 * MATRIX, MATRIX)
    assert enc.encodedSpace.fieldOfView_mm.x == pytest.approx(440.0)
    assert (enc.reconSpace.matrixSize.x, enc.reconSpace.fieldOfView_mm.x) == (MATRIX, pytest.approx(220.0))
    assert enc.encodingLimits.kspace_encoding_step_1.maximum == MATRIX - 1
    assert enc.encodingLimits.kspace_encoding_step_1.center == MATRIX // 2
    assert h.sequenceParameters.TE == [pytest.approx(5.0)]
    assert h.sequenceParameters.TR == [pytest.approx(20.0)]
    assert h.sequenceParameters.flipAngle_deg == [pytest.approx(15.0)]
    assert h.measurementInformation.protocolName == "gre2d"
    assert h.acquisitionSystemInformation.systemFieldStrength_T == 3.0
    assert h.acquisitionSystemInformation.receiverChannels is None
    assert h.experimentalConditions.H1resonanceFrequency_Hz == round(42.576e6 * 3.0)
    assert built["vendor_c_1p5t"].header.acquisitionSystemInformation.systemFieldStrength_T == 1.5
    # XML round trip
    h2 = mx.CreateFromDocument(mx.ToXML(h))
    assert h2 == h


def test_write_read_round_trip(built, tmp_path):
    b = built["vendor_b_3t"]
    seq_path, xml_path = b.write(tmp_path / "g.seq")
    assert xml_path == header_xml_path(seq_path) and xml_path.name == "g.mrd.xml"
    back = read_sequence(seq_path, b.system.to_opts())
    assert back.check_timing()[0]
    assert len(back.block_events) == len(b.seq.block_events)
    assert back.definitions["Name"] == "gre2d"
    np.testing.assert_allclose(back.definitions["FOV"], [0.22, 0.22, 0.005])
    k1, _ = kspace_per_adc(b.seq)
    k2, _ = kspace_per_adc(back)
    # the file stores gradient amplitudes to ~6 significant digits
    assert max(np.abs(a - c).max() for a, c in zip(k1, k2, strict=True)) < 1e-3 * (1 / 0.22)
    assert [e.labels for e in adc_events(back)] == [e.labels for e in adc_events(b.seq)]
    assert measure_te(back) == pytest.approx(5e-3, abs=1e-9)
    # writing what was read gives the same file: nothing lost on the way through
    again = tmp_path / "again.seq"
    back.write(str(again))
    strip = [ln for ln in seq_path.read_text().splitlines() if not ln.startswith(("# Created", "Hash"))]
    strip2 = [ln for ln in again.read_text().splitlines() if not ln.startswith(("# Created", "Hash"))]
    assert strip == strip2
    assert sequences.header_for_seq_file(seq_path) == b.header


def test_header_from_definitions_when_no_xml(built, tmp_path):
    b = built["generic"]
    seq_path, xml_path = b.write(tmp_path / "g.seq")
    xml_path.unlink()
    h = sequences.header_for_seq_file(seq_path)
    enc = h.encoding[0]
    assert (enc.encodedSpace.matrixSize.x, enc.encodedSpace.matrixSize.y) == (2 * MATRIX, MATRIX)
    assert enc.reconSpace.fieldOfView_mm.x == pytest.approx(220.0)
    assert enc.encodingLimits.kspace_encoding_step_1.maximum == MATRIX - 1
    assert h.sequenceParameters.TE == [pytest.approx(5.0)]
    assert h.measurementInformation.protocolName == "gre2d"
    assert h.acquisitionSystemInformation.systemFieldStrength_T == 3.0


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"TE": 1.0}, "TE"),
        ({"TR": 5.0}, "TR"),
        ({"slice_thickness": 0.5}, "slice_thickness"),
        ({"readout_bandwidth": 2000, "fov": 50}, "readout_bandwidth"),
        ({"matrix": 9999}, "matrix"),
        ({"matrix": 33}, "matrix"),
        ({"flip_angle": "a lot"}, "flip_angle"),
        ({"not_a_param": 1}, "not_a_param"),
    ],
)
def test_impossible_settings_give_one_clear_sentence(overrides, field):
    with pytest.raises(sequences.ProtocolError) as info:
        sequences.build_protocol("gre2d", "vendor_c_1p5t", overrides)
    msg = str(info.value)
    assert msg.startswith(field) and msg.endswith(".") and "\n" not in msg


def test_te_error_names_the_hardware_minimum():
    with pytest.raises(sequences.ProtocolError, match=r"TE = 1\.000 ms is below the minimum of 3\.\d+ ms"):
        sequences.build_protocol("gre2d", "generic", {"TE": 1.0})


def test_overrides_accept_units_and_strings():
    b = sequences.build_protocol("gre2d", "generic", {"matrix": "16", "TE": "6000us", "TR": "0.03s"})
    assert b.params["TE"] == pytest.approx(6e-3)
    assert b.params["actual_TR"] == pytest.approx(30e-3)
    with pytest.raises(sequences.ProtocolError, match="does not convert"):
        sequences.build_protocol("gre2d", "generic", {"TE": "6mm"})


def test_default_matrix_128_builds_on_every_system():
    for s in SYSTEMS:
        b = sequences.build_protocol("gre2d", s)
        assert b.seq.check_timing()[0]
        assert len(adc_events(b.seq)) == 129


def _bloch_profile(rf, gz_amp, area_after, z):
    """Transverse magnetisation after a shaped pulse under a constant slice gradient, then a
    gradient area ``area_after`` [1/m]; rotations per RF sample (rotating frame, on resonance)."""
    m = np.zeros((len(z), 3))
    m[:, 2] = 1.0
    t = np.asarray(rf.t)
    dt = np.diff(np.concatenate([[0.0], t]))
    for b1, d in zip(np.asarray(rf.signal) * np.exp(1j * rf.phase_offset), dt, strict=True):
        # rotation vector (rad): B1 along (Re, Im), off-resonance from the gradient along z
        w = np.stack(
            [
                np.full_like(z, 2 * np.pi * b1.real * d),
                np.full_like(z, 2 * np.pi * b1.imag * d),
                2 * np.pi * gz_amp * z * d,
            ],
            axis=1,
        )
        ang = np.linalg.norm(w, axis=1)
        n = w / np.maximum(ang, 1e-30)[:, None]
        c, s = np.cos(ang)[:, None], np.sin(ang)[:, None]
        # left-handed precession (dM/dt = gamma M x B): rotate by -angle about n
        m = m * c - np.cross(n, m) * s + n * np.sum(n * m, axis=1)[:, None] * (1 - c)
    mxy = (m[:, 0] + 1j * m[:, 1]) * np.exp(-2j * np.pi * area_after * z)
    return mxy


@pytest.mark.parametrize(
    ("protocol", "system"), [("gre2d", "generic"), ("gre2d", "vendor_b_3t"), ("epi2d", "generic")]
)
def test_slice_profile_width_and_rephasing_by_bloch_simulation(protocol, system):
    # epi2d on generic plays its pulse a few us late on a lengthened flat top (exact TE): same profile
    b = sequences.build_protocol(protocol, system, {"matrix": 16, "flip_angle": 15})
    exc_block = b.seq.get_block(2)
    reph_block = b.seq.get_block(3)
    rf, gz = exc_block.rf, exc_block.gz
    assert (
        rf.delay >= gz.delay + gz.rise_time
        and rf.delay + rf.shape_dur <= gz.delay + gz.rise_time + gz.flat_time
    )
    # gradient area still to come after the pulse: rest of the flat top, the ramp down, the rephaser
    t_rf_end = rf.delay + rf.shape_dur
    area_after = (
        gz.amplitude * (gz.delay + gz.rise_time + gz.flat_time - t_rf_end) + gz.amplitude * gz.fall_time / 2
    )
    area_after += reph_block.gz.area
    z = np.linspace(-10e-3, 10e-3, 801)
    mxy = _bloch_profile(rf, gz.amplitude, area_after, z)
    mag = np.abs(mxy)
    assert mag.max() == pytest.approx(math.sin(math.radians(15)), rel=0.03)
    above = z[mag >= mag.max() / 2]
    fwhm = above.max() - above.min()
    assert fwhm == pytest.approx(5e-3, rel=0.1)  # slice_thickness
    core = np.abs(z) < 1.5e-3
    phase = np.angle(mxy[core] * np.conj(mxy[len(z) // 2]))
    assert np.abs(phase).max() < 0.1  # refocused: flat phase across the slice (rad)
