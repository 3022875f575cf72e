"""Every protocol on every hardware profile: timing, TE/TR, intended k-space, labels, header,
write/read round trip, and vendor agnosticism (identical sampling and timing, or a clear refusal)."""

from __future__ import annotations

import math

import ismrmrd.xsd as mx
import numpy as np
import pytest

import sequences
from sequences.analysis import (
    adc_events,
    gradient_usage,
    kspace_per_adc,
    measure_te,
    measure_ti,
    measure_tr,
    read_sequence,
    rf_events,
)
from sequences.epi import trapezoid_b_value
from sequences.gre import GOLDEN_ANGLE
from sequences.schema import find_schema, validate_header_xml

SYSTEMS = sequences.list_systems()
FOV = 0.22
N = 32
#: small, fast variants of each shipped protocol (values in the protocol's units)
SMALL: dict[str, dict] = {
    "gre2d": {"matrix": N, "dummy_scans": 0},
    "gre3d": {"matrix": N, "n_partitions": 4, "dummy_scans": 0},
    "radial2d": {"matrix": N, "n_spokes": 13, "dummy_scans": 0},
    "se2d": {"matrix": N, "dummy_scans": 0, "TR": 100},
    "tse2d": {"matrix": N, "echo_train_length": 8, "TE": 30, "dummy_scans": 0, "TR": 300},
    "epi2d": {"matrix": N, "dummy_scans": 0, "n_repetitions": 2},
    "dwi_epi": {"matrix": N, "dummy_scans": 0, "TE": 100, "diffusion_directions": [[1, 0, 0], [1, 1, 1]]},
    "spiral2d": {"matrix": N, "n_interleaves": 8, "dummy_scans": 0},
}
EXPECTED_TRAJECTORY = {
    "gre2d": "cartesian",
    "gre3d": "cartesian",
    "se2d": "cartesian",
    "tse2d": "cartesian",
    "radial2d": "goldenangle",
    "epi2d": "epi",
    "dwi_epi": "epi",
    "spiral2d": "spiral",
}
MAX_RASTER = max(sequences.load_system(s).block_duration_raster for s in SYSTEMS)


def test_every_shipped_protocol_is_covered():
    assert sorted(SMALL) == sequences.list_protocols()


@pytest.fixture(scope="module")
def built():
    return {(p, s): sequences.build_protocol(p, s, ov) for p, ov in SMALL.items() for s in SYSTEMS}


@pytest.fixture(scope="module")
def kspace(built):
    return {key: kspace_per_adc(b.seq) for key, b in built.items()}


def imaging(b, ks):
    """(AdcEvent, k (n, 3)) of the imaging readouts (no noise, no navigator lines)."""
    k, noise = ks
    return [
        (e, kk)
        for e, kk, nz in zip(adc_events(b.seq), k, noise, strict=True)
        if not nz and not e.labels.get("NAV", 0)
    ]


CASES = [(p, s) for p in SMALL for s in SYSTEMS]


@pytest.mark.parametrize(("protocol", "system"), CASES)
def test_timing_te_tr(built, kspace, protocol, system):
    b = built[(protocol, system)]
    ok, errors = b.seq.check_timing()
    assert ok, errors[:3]
    p = b.params
    raster = b.system.block_duration_raster
    assert abs(measure_te(b.seq, kspace[(protocol, system)][0]) - p["TE"]) <= raster / 2 + 1e-9
    assert abs(measure_tr(b.seq) - p["TR"]) <= raster / 2 + 1e-9
    assert abs(p["actual_TE"] - p["TE"]) <= raster / 2 + 1e-9


@pytest.mark.parametrize(("protocol", "system"), CASES)
def test_noise_prescan_and_labels(built, protocol, system):
    b = built[(protocol, system)]
    first = b.seq.get_block(1)
    assert first.rf is None and first.adc is not None
    events = adc_events(b.seq)
    assert events[0].labels["NOISE"] == 1
    for e in events[1:]:
        for name in ("LIN", "PAR", "SLC", "AVG", "REP", "SET", "ECO", "NAV", "NOISE"):
            assert name in e.labels
        assert e.labels["NOISE"] == 0


@pytest.mark.parametrize("system", SYSTEMS)
@pytest.mark.parametrize("protocol", ["gre2d", "se2d", "tse2d", "gre3d"])
def test_cartesian_kspace_grid(built, kspace, protocol, system):
    b = built[(protocol, system)]
    img = imaging(b, kspace[(protocol, system)])
    n_s = 2 * N
    kx = (np.arange(n_s) - n_s // 2) / (2 * FOV)
    nz = b.params.get("n_partitions", 1)
    slab = b.params.get("slab_thickness", 1.0)
    assert len(img) == N * nz
    seen = set()
    for e, k in img:
        np.testing.assert_allclose(k[:, 0], kx, atol=1e-6 / FOV)
        np.testing.assert_allclose(k[:, 1], (e.labels["LIN"] - N // 2) / FOV, atol=1e-6 / FOV)
        kz = (e.labels["PAR"] - nz // 2) / slab if nz > 1 else 0.0
        np.testing.assert_allclose(k[:, 2], kz, atol=1e-6 / FOV)
        seen.add((e.labels["LIN"], e.labels["PAR"]))
    assert len(seen) == N * nz  # every line exactly once


@pytest.mark.parametrize("system", SYSTEMS)
def test_tse_echo_ordering_puts_centre_at_effective_te(built, system):
    b = built[("tse2d", system)]
    etl, esp = 8, b.params["actual_echo_spacing"]
    e_te = round(b.params["TE"] / esp) - 1
    events = [e for e in adc_events(b.seq)[1:]]
    centre = [e for e in events if e.labels["LIN"] == N // 2]
    assert [e.labels["SEG"] for e in centre] == [e_te]
    # each shot (train) covers one line of every band of N/ETL lines
    for shot in range(N // etl):
        train = events[shot * etl : (shot + 1) * etl]
        assert [e.labels["SEG"] for e in train] == list(range(etl))
        assert sorted(e.labels["LIN"] // (N // etl) for e in train) == list(range(etl))
    assert b.header.encoding[0].echoTrainLength == etl
    assert b.header.sequenceParameters.echo_spacing == [pytest.approx(esp * 1e3)]


@pytest.mark.parametrize("system", SYSTEMS)
@pytest.mark.parametrize("protocol", ["epi2d", "dwi_epi"])
def test_epi_lines_and_ghost_reference(built, kspace, protocol, system):
    b = built[(protocol, system)]
    k, noise = kspace[(protocol, system)]
    events = adc_events(b.seq)
    n_s = 2 * N
    i = np.arange(n_s)
    n_ref = b.params["n_ref_lines"]
    refs = [(e, kk) for e, kk in zip(events, k, strict=True) if e.labels["NAV"]]
    n_sets = len(b.params["diffusion_encodings"]) * b.params["n_repetitions"]
    assert len(refs) == n_ref * n_sets
    for e, kk in refs:  # reference lines: ky = 0, alternating polarity, no blips
        assert e.labels["LIN"] == N // 2
        np.testing.assert_allclose(kk[:, 1], 0.0, atol=1e-6 / FOV)
        assert e.labels["REV"] == e.labels["SEG"] % 2
    for e, kk in imaging(b, (k, noise)):
        rev = e.labels["REV"]
        assert rev == e.labels["LIN"] % 2
        expected = (n_s // 2 - 1 - i) if rev else (i - n_s // 2)  # reversed lines, flipped, land on the grid
        np.testing.assert_allclose(kk[:, 0], expected / (2 * FOV), atol=1e-6 / FOV)
        np.testing.assert_allclose(kk[:, 1], (e.labels["LIN"] - N // 2) / FOV, atol=1e-6 / FOV)
    assert b.header.userParameters is not None
    strings = {u.name: u.value for u in b.header.userParameters.userParameterString}
    assert strings["unisono.navigator"] == "epi-phase-correction"


@pytest.mark.parametrize("system", SYSTEMS)
def test_dwi_b_values_from_the_played_gradients(built, system):
    """b = (2 pi)^2 int k^2 dt from the sequence's own gradients, k sign-flipped at the refocusing."""
    b = built[("dwi_epi", system)]
    seq = b.seq
    grads = seq.get_gradients()
    rfs = rf_events(seq)
    exc = [r for r in rfs if r.use == "excitation"]
    ref = [r for r in rfs if r.use == "refocusing"]
    te = b.params["actual_TE"]
    dt = 1e-6
    for i, (bval, direction) in enumerate(b.params["diffusion_encodings"]):
        t = np.arange(exc[i].t_center, exc[i].t_center + te, dt)
        g = np.stack([gp(t) if gp is not None else 0 * t for gp in grads])
        k = np.cumsum(g, axis=1) * dt
        after = t > ref[i].t_center
        k[:, after] -= 2 * k[:, [np.searchsorted(t, ref[i].t_center)]]
        b_num = (2 * math.pi) ** 2 * np.sum(k**2) * dt
        # imaging gradients (slice rephaser, crushers, EPI prephasers) add a few s/mm^2
        assert b_num == pytest.approx(bval, rel=0.03, abs=5e6), (bval, direction)
    labels_set = sorted({e.labels["SET"] for e in adc_events(seq)[1:]})
    assert labels_set == list(range(len(b.params["diffusion_encodings"])))
    user = {u.name: u.value for u in b.header.userParameters.userParameterDouble}
    assert user["diffusion_bvalue_s_per_mm2_1"] == pytest.approx(1000.0)
    assert user["diffusion_direction_2_x"] == pytest.approx(1 / math.sqrt(3))


def test_stejskal_tanner_with_ramps_matches_numeric_integral():
    g, eps, flat, Delta = 1e6, 0.5e-3, 10e-3, 30e-3  # Hz/m, s
    dt = 1e-7
    t = np.arange(0, Delta + flat + 2 * eps + 1e-3, dt)

    def trap(t0):
        x = t - t0
        return g * np.clip(np.minimum(x / eps, (flat + 2 * eps - x) / eps), 0, 1)

    # spin-echo: the second lobe acts with opposite sign on k after the (instantaneous) refocusing
    k = np.cumsum(trap(0.0) - trap(Delta), axis=0) * dt
    b_num = (2 * math.pi) ** 2 * np.sum(k**2) * dt
    assert trapezoid_b_value(g, flat + eps, Delta, eps) == pytest.approx(b_num, rel=1e-4)


@pytest.mark.parametrize("system", SYSTEMS)
def test_radial_golden_angle_spokes(built, kspace, system):
    b = built[("radial2d", system)]
    img = imaging(b, kspace[("radial2d", system)])
    traj = b.trajectory()
    assert len(traj) == len(img) == 13
    n_s = 2 * N
    r = (np.arange(n_s) - n_s // 2) / (2 * FOV)
    for (e, k), tr in zip(img, traj, strict=True):
        angle = e.labels["LIN"] * GOLDEN_ANGLE
        np.testing.assert_allclose(k[:, 0], r * math.cos(angle), atol=1e-6 / FOV)
        np.testing.assert_allclose(k[:, 1], r * math.sin(angle), atol=1e-6 / FOV)
        np.testing.assert_allclose(tr, k, atol=1e-6 / FOV)
    assert b.header.encoding[0].trajectoryDescription.identifier == "unisono.radial_golden_angle"


@pytest.mark.parametrize("system", SYSTEMS)
def test_spiral_interleaves(built, system):
    b = built[("spiral2d", system)]
    traj = b.trajectory()
    n_int = 8
    assert len(traj) == n_int
    k0 = traj[0]
    assert np.linalg.norm(k0[0]) < 1e-6 / FOV  # sample 0 at k = 0 (TE)
    k_max = N / (2 * FOV)
    radius = np.linalg.norm(k0[:, :2], axis=1)
    assert abs(radius.max() - k_max) < 0.02 * k_max  # reaches the resolution asked for
    # Nyquist along the radius: combined interleaves leave no radial gap wider than 1/FOV
    angles = np.arctan2(k0[:, 1], k0[:, 0])
    turn_gap = np.diff(radius[np.isclose(np.mod(angles - angles[-1], 2 * np.pi), 0, atol=0.05)])
    assert (np.abs(turn_gap) <= n_int / FOV * 1.05).all()
    for i, tr in enumerate(traj):
        a = 2 * math.pi * i / n_int
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        np.testing.assert_allclose(tr[:, :2], k0[:, :2] @ rot.T, atol=1e-6 / FOV)
    usage = gradient_usage(b.seq, b.system)
    assert usage["grad_use_percent"] <= 100 and usage["slew_use_percent"] <= 100.5


@pytest.mark.parametrize("protocol", list(SMALL))
def test_vendor_agnostic_identical_sampling_and_timing(built, kspace, protocol):
    """Same protocol on every profile: the same k-space samples, TE, TR and flip angle."""
    ref_key = (protocol, "generic")
    ref = built[ref_key]
    k_ref = kspace[ref_key][0]
    flips_ref = sorted({round(r.flip, 9) for r in rf_events(ref.seq)})
    for system in SYSTEMS[1:]:
        b = built[(protocol, system)]
        k = kspace[(protocol, system)][0]
        assert len(k) == len(k_ref)
        assert max(np.abs(a - c).max() for a, c in zip(k, k_ref, strict=True)) < 1e-6 / FOV
        assert [e.labels for e in adc_events(b.seq)] == [e.labels for e in adc_events(ref.seq)]
        # exact, except dwi_epi whose EPI centre sample may sit up to half a raster off the spin echo
        te_tol = MAX_RASTER / 2 if protocol == "dwi_epi" else 1e-9
        assert abs(b.params["actual_TE"] - ref.params["actual_TE"]) <= te_tol
        assert abs(b.params["actual_TR"] - ref.params["actual_TR"]) <= 1e-9
        flips = sorted({round(r.flip, 9) for r in rf_events(b.seq)})
        np.testing.assert_allclose(flips, flips_ref, atol=1e-6)
        # the same ADC dwell everywhere: identical sampling in time as well as in k
        assert {e.dwell for e in adc_events(b.seq)} == {e.dwell for e in adc_events(ref.seq)}


@pytest.mark.parametrize(
    ("protocol", "overrides", "weak", "strong", "field"),
    [
        ("gre2d", {"matrix": 32, "slice_thickness": 1.0}, "vendor_c_1p5t", "vendor_a_3t", "slice_thickness"),
        (
            "epi2d",
            {"matrix": 32, "readout_bandwidth": 4000, "fov": 80},
            "vendor_c_1p5t",
            "vendor_a_3t",
            "readout_bandwidth",
        ),
        (
            "spiral2d",
            {"matrix": 32, "design_max_grad": 40},
            "vendor_c_1p5t",
            "vendor_a_3t",
            "design_max_grad",
        ),
        ("dwi_epi", {"matrix": 32, "TE": 70}, "vendor_c_1p5t", "vendor_a_3t", "TE"),
    ],
)
def test_documented_refusal_on_weaker_hardware(protocol, overrides, weak, strong, field):
    """Where a profile cannot play a protocol it refuses, naming the field, the value and its limit."""
    sequences.build_protocol(protocol, strong, overrides)
    with pytest.raises(sequences.ProtocolError) as info:
        sequences.build_protocol(protocol, weak, overrides)
    msg = str(info.value)
    assert msg.startswith(field) and weak in msg and "\n" not in msg


@pytest.mark.parametrize(
    ("protocol", "overrides", "field"),
    [
        ("tse2d", {"TE": 35}, "TE"),  # not a multiple of the echo spacing
        ("tse2d", {"echo_train_length": 12}, "echo_train_length"),  # does not divide 128
        ("tse2d", {"TR": 60}, "TR"),  # shorter than the slice's echo train
        ("se2d", {"TE": 6}, "TE"),
        ("gre3d", {"TE": 1}, "TE"),
        ("dwi_epi", {"diffusion_directions": [[0, 0, 0]]}, "diffusion_directions"),
        ("dwi_epi", {"b_values": [-5]}, "b_values"),
        ("radial2d", {"n_spokes": 2}, "n_spokes"),
    ],
)
def test_impossible_settings_name_the_field(protocol, overrides, field):
    with pytest.raises(sequences.ProtocolError) as info:
        sequences.build_protocol(protocol, "generic", overrides)
    msg = str(info.value)
    assert msg.startswith(field) and msg.endswith(".") and "\n" not in msg


@pytest.mark.parametrize("protocol", list(SMALL))
def test_header_validates_against_ismrmrd_schema(built, protocol):
    b = built[(protocol, "vendor_b_3t")]
    xml = mx.ToXML(b.header)
    assert mx.CreateFromDocument(xml) == b.header
    enc = b.header.encoding[0]
    assert enc.trajectory.value == EXPECTED_TRAJECTORY[protocol]
    assert b.header.measurementInformation.protocolName == protocol
    assert b.header.sequenceParameters.TE == [pytest.approx(b.params["actual_TE"] * 1e3)]
    if find_schema() is None:
        pytest.skip("no ISMRMRD XSD installed (Debian package ismrmrd-schema)")
    assert validate_header_xml(xml) == []


def test_schema_validator_catches_errors(built):
    if find_schema() is None:
        pytest.skip("no ISMRMRD XSD installed (Debian package ismrmrd-schema)")
    xml = mx.ToXML(built[("gre2d", "generic")].header)
    assert validate_header_xml(xml.replace(">cartesian<", ">zigzag<"))
    assert validate_header_xml(xml.replace("<H1resonanceFrequency_Hz>", "<H1resonanceFrequency_Hz>x"))
    assert validate_header_xml(xml.replace("<experimentalConditions>", "<experimentalConditions><a>1</a>"))
    assert validate_header_xml(xml.replace("<reconSpace>", "<reconSpace><extra/>"))


@pytest.mark.parametrize("protocol", list(SMALL))
def test_write_read_round_trip(built, kspace, protocol, tmp_path):
    b = built[(protocol, "vendor_c_1p5t")]
    seq_path, xml_path = b.write(tmp_path / f"{protocol}.seq")
    back = read_sequence(seq_path, b.system.to_opts())
    assert back.check_timing()[0]
    assert back.definitions["Name"] == protocol
    assert [e.labels for e in adc_events(back)] == [e.labels for e in adc_events(b.seq)]
    k_back, _ = kspace_per_adc(back)
    k_orig = kspace[(protocol, "vendor_c_1p5t")][0]
    assert max(np.abs(a - c).max() for a, c in zip(k_back, k_orig, strict=True)) < 1e-3 / FOV
    assert measure_te(back) == pytest.approx(b.params["actual_TE"], abs=1e-7)
    again = tmp_path / "again.seq"
    back.write(str(again))

    def body(path):
        return [ln for ln in path.read_text().splitlines() if not ln.startswith(("# Created", "Hash"))]

    assert body(seq_path) == body(again)
    assert sequences.header_for_seq_file(seq_path) == b.header


def test_motion_navigator_is_labelled_and_interleaved():
    b = sequences.build_protocol("gre2d", "generic", {"matrix": 16, "navigator_every": 4, "dummy_scans": 0})
    events = adc_events(b.seq)[1:]
    navs = [e for e in events if e.labels["NAV"]]
    assert len(navs) == 2 * 4  # x and y projections, every 4 of 16 lines
    assert [e.labels["SEG"] for e in navs[:2]] == [0, 1]
    k, noise = kspace_per_adc(b.seq)
    nav_k = [kk for e, kk in zip(adc_events(b.seq), k, strict=True) if e.labels["NAV"]]
    n_s = 32
    r = (np.arange(n_s) - n_s // 2) / (2 * FOV)
    np.testing.assert_allclose(nav_k[0][:, 0], r, atol=1e-6 / FOV)  # x projection through k = 0
    np.testing.assert_allclose(nav_k[0][:, 1], 0, atol=1e-6 / FOV)
    np.testing.assert_allclose(nav_k[1][:, 1], r, atol=1e-6 / FOV)  # y projection
    np.testing.assert_allclose(nav_k[1][:, 0], 0, atol=1e-6 / FOV)
    strings = {u.name: u.value for u in b.header.userParameters.userParameterString}
    assert strings["unisono.navigator"] == "projection-xy"
    assert b.seq.check_timing()[0]
    assert measure_tr(b.seq) == pytest.approx(b.params["TR"], abs=1e-9)  # imaging TR unchanged


@pytest.mark.parametrize("system", SYSTEMS)
def test_orbital_navigator_reads_one_circle_around_the_centre(system):
    """One NAV readout per navigator, on the circle of radius 60 /m, angle 2 pi (j + 1/2) / N."""
    ov = {"matrix": 16, "navigator_every": 4, "navigator_type": "orbital", "dummy_scans": 0}
    b = sequences.build_protocol("gre2d", system, ov)
    assert b.seq.check_timing()[0]
    events = adc_events(b.seq)
    navs = [e for e in events[1:] if e.labels["NAV"]]
    assert len(navs) == 4 and all(e.labels["SEG"] == 0 for e in navs)
    k, _ = kspace_per_adc(b.seq)
    orbit = next(kk for e, kk in zip(events, k, strict=True) if e.labels["NAV"])
    doubles = {u.name: u.value for u in b.header.userParameters.userParameterDouble}
    radius = doubles["navigator_orbital_radius_per_m"]
    assert radius == pytest.approx(60.0)
    n = orbit.shape[0]
    phi = 2 * np.pi * (np.arange(n) + 0.5) / n
    # the piecewise-linear gradient keeps k within 0.2 % of the radius of the ideal orbit
    np.testing.assert_allclose(orbit[:, 0], radius * np.cos(phi), atol=2e-3 * radius)
    np.testing.assert_allclose(orbit[:, 1], radius * np.sin(phi), atol=2e-3 * radius)
    np.testing.assert_allclose(orbit[:, 2], 0.0, atol=1e-6 / FOV)
    strings = {u.name: u.value for u in b.header.userParameters.userParameterString}
    assert strings["unisono.navigator"] == "orbital"
    assert measure_tr(b.seq) == pytest.approx(b.params["TR"], abs=1e-9)  # imaging TR unchanged


@pytest.mark.parametrize("system", SYSTEMS)
def test_three_plane_orbital_navigator_reads_circles_in_the_xy_yz_and_zx_planes(system):
    """SEG 0, 1, 2 of each navigator: circles turning x->y, y->z, z->x (radius 60 /m in the slice
    plane, ``navigator_through_plane_radius`` for the two others, both in the header), after one
    non-selective pulse; the dummy TRs play the navigator without ADC."""
    ov = {"matrix": 16, "navigator_every": 4, "navigator_type": "orbital3", "dummy_scans": 2,
          "navigator_through_plane_radius": 25.0}  # fmt: skip
    b = sequences.build_protocol("gre2d", system, ov)
    assert b.seq.check_timing()[0]
    events = adc_events(b.seq)
    navs = [e for e in events[1:] if e.labels["NAV"]]
    assert [e.labels["SEG"] for e in navs] == [0, 1, 2] * 4  # none from the dummies
    k, _ = kspace_per_adc(b.seq)
    orbits = [kk for e, kk in zip(events, k, strict=True) if e.labels["NAV"]][:3]
    n = orbits[0].shape[0]
    phi = 2 * np.pi * (np.arange(n) + 0.5) / n
    for (a, b_axis), orbit, r in zip(((0, 1), (1, 2), (2, 0)), orbits, (60.0, 25.0, 25.0), strict=True):
        np.testing.assert_allclose(orbit[:, a], r * np.cos(phi), atol=2e-3 * r)
        np.testing.assert_allclose(orbit[:, b_axis], r * np.sin(phi), atol=2e-3 * r)
        np.testing.assert_allclose(orbit[:, 3 - a - b_axis], 0.0, atol=1e-6 / FOV)
    doubles = {u.name: u.value for u in b.header.userParameters.userParameterDouble}
    assert doubles["navigator_orbital_radius_per_m"] == pytest.approx(60.0)
    assert doubles["navigator_orbital_through_plane_radius_per_m"] == pytest.approx(25.0)
    strings = {u.name: u.value for u in b.header.userParameters.userParameterString}
    assert strings["unisono.navigator"] == "orbital-3plane"
    assert int(b.header.encoding[0].encodingLimits.segment.maximum) == 2
    # the excitation before SEG 0 has no gradient (non-selective); dummies carry the navigator
    rf_blocks = [i for i in b.seq.block_events if b.seq.get_block(i).rf is not None]
    hard = [i for i in rf_blocks if b.seq.get_block(i).gz is None]
    assert len(hard) == 4 + 1  # one per navigator, and one in the dummy TRs (every 4th of 2)
    assert measure_tr(b.seq) == pytest.approx(b.params["TR"], abs=1e-9)  # imaging TR unchanged


def test_navigator_type_is_checked():
    with pytest.raises(sequences.ProtocolError, match="navigator_type"):
        sequences.build_protocol("gre2d", "generic", {"navigator_every": 4, "navigator_type": "cloverleaf"})


@pytest.mark.parametrize("protocol", sequences.list_protocols())
def test_defaults_build_on_every_profile(protocol):
    for system in SYSTEMS:
        b = sequences.build_protocol(protocol, system)
        assert b.seq.check_timing()[0], (protocol, system)


def test_inversion_recovery_ti_identical_on_every_profile():
    tis = []
    for system in SYSTEMS:
        b = sequences.build_protocol("tse2d", system, {"matrix": 16, "TI": 150, "TR": 1000, "n_slices": 2})
        assert b.seq.check_timing()[0]
        ti = measure_ti(b.seq)
        assert abs(ti - 0.150) <= b.system.block_duration_raster / 2 + 1e-9
        assert b.header.sequenceParameters.TI == [pytest.approx(150.0, abs=MAX_RASTER * 1e3)]
        assert {r.use for r in rf_events(b.seq)} == {"inversion", "excitation", "refocusing"}
        tis.append(ti)
    assert max(tis) - min(tis) <= MAX_RASTER / 2


@pytest.mark.parametrize("protocol", list(SMALL))
def test_pns_and_gradient_use_reported_within_limits(protocol):
    """On the strongest profile every protocol stays below the SAFE example PNS threshold and the
    profile's gradient and slew limits (aux_gradient_slew caps the non-readout ramps)."""
    b = sequences.build_protocol(protocol, "vendor_a_3t", SMALL[protocol])
    r = b.report(pns=True)
    assert 10 < r["pns"]["peak_percent"] < 100 and r["pns"]["ok"]
    assert r["gradients"]["grad_use_percent"] <= 100 + 1e-6
    assert r["gradients"]["slew_use_percent"] <= 100 + 1e-6
    assert r["timing"]["ok"]


def test_aux_gradient_slew_controls_pns():
    soft = sequences.build_protocol("gre2d", "vendor_a_3t", {"matrix": 16, "aux_gradient_slew": 80})
    hard = sequences.build_protocol("gre2d", "vendor_a_3t", {"matrix": 16, "aux_gradient_slew": 200})
    p_soft = soft.report()["pns"]["peak_percent"]
    p_hard = hard.report()["pns"]["peak_percent"]
    assert p_hard > 1.3 * p_soft
