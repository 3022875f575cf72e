"""Bloch engine against closed forms: FID, spin echo, Ernst, bSSFP, inversion recovery, slice profile.

Sequences are built here with pypulseq directly, so these tests depend on nothing but simulator/.
"""

from __future__ import annotations

import math

import numpy as np
import pypulseq as pp
import pytest
import torch

from simulator import Phantom, Site, simulate
from simulator.bloch import BlochEngine
from simulator.events import Free, Pulse, Readout, compile_block
from simulator.scanner import spin_fields
from simulator.spins import build_spins

SYS = pp.Opts(
    max_grad=40,
    grad_unit="mT/m",
    max_slew=150,
    slew_unit="T/m/s",
    rf_ringdown_time=0,
    rf_dead_time=0,
    adc_dead_time=0,
)


def ideal_site(field_T: float = 3.0) -> Site:
    """One uniform receive channel, no noise, perfect B0/B1, no gradient delay."""
    return Site(name="ideal", field_T=field_T, n_coils=1, coil_model="uniform", noise_sigma=0.0)


def voxel_phantom(t1: float, t2: float, t2prime: float = 1e3, size_m: float = 0.002) -> Phantom:
    """A single cubic voxel at isocentre with PD 1."""

    def full(v: float) -> torch.Tensor:
        return torch.full((1, 1, 1), v)

    return Phantom(
        pd=full(1.0),
        t1=full(t1),
        t2=full(t2),
        t2prime=full(t2prime),
        b0_hz=full(0.0),
        b1=full(1.0),
        voxel_size_m=(size_m, size_m, size_m),
        brain_mask=torch.ones(1, 1, 1, dtype=torch.bool),
    )


def m0_total(phantom: Phantom, site: Site) -> float:
    """Equilibrium signal of the whole phantom in raw-data units (PD x B0 x volume in mm^3)."""
    vol = math.prod(phantom.voxel_size_m) * 1e9
    return float(phantom.pd.sum()) * site.field_T * vol


def run(seq: pp.Sequence, phantom: Phantom, site: Site, n_iso: int) -> list[np.ndarray]:
    return [a.data[0].copy() for a in simulate(seq, phantom, site, isochromats_per_voxel=n_iso)]


# ---------------------------------------------------------------------------------------------


def _play(seq, engine: BlochEngine, site, on_readout=None) -> None:
    """Run every block of ``seq`` through ``engine`` (no labels, gradient delays or rotation);
    readouts go to ``on_readout``."""
    for i in seq.block_events:
        info = compile_block(seq.get_block(i), int(i), {}, 1e-6, (0.0, 0.0, 0.0), site.larmor_hz)
        for ev in info.events:
            if isinstance(ev, Free):
                engine.free(ev.duration, ev.moment)
            elif isinstance(ev, Pulse):
                engine.rf(ev)
            elif isinstance(ev, Readout) and on_readout is not None:
                on_readout(ev)


def test_fid_decays_with_t2star():
    t2, t2p = 0.08, 0.02
    seq = pp.Sequence(SYS)
    pulse = pp.make_block_pulse(math.pi / 2, duration=1e-4, system=SYS)
    seq.add_block(pulse)
    dwell = 2e-4
    seq.add_block(pp.make_adc(num_samples=200, dwell=dwell, system=SYS))
    ph, site = voxel_phantom(1.0, t2, t2p), ideal_site()
    sig = run(seq, ph, site, n_iso=4000)[0]
    t = 0.5e-4 + (np.arange(200) + 0.5) * dwell
    expected = m0_total(ph, site) * np.exp(-t / t2 - t / t2p)
    assert np.abs(np.abs(sig) - expected).max() < 0.01 * expected[0]
    # and it is T2*, not T2: at 20 ms the T2-only curve is far above
    assert np.abs(sig[100]) < 0.5 * m0_total(ph, site) * math.exp(-t[100] / t2)


@pytest.mark.parametrize("t2", [0.03, 0.08, 0.2])
def test_spin_echo_amplitude_follows_t2(t2):
    ph, site = voxel_phantom(1.5, t2, t2prime=0.01), ideal_site()
    p90 = pp.make_block_pulse(math.pi / 2, duration=1e-4, system=SYS)
    p180 = pp.make_block_pulse(math.pi, duration=2e-4, phase_offset=math.pi / 2, system=SYS)
    dwell = 1e-5
    for te in (0.02, 0.06):
        seq = pp.Sequence(SYS)
        seq.add_block(p90)
        seq.add_block(pp.make_delay(te / 2 - 0.5e-4 - 1e-4))
        seq.add_block(p180)
        seq.add_block(pp.make_adc(num_samples=1, dwell=dwell, delay=te / 2 - 1e-4 - dwell / 2, system=SYS))
        sig = run(seq, ph, site, n_iso=2000)[0]
        expected = m0_total(ph, site) * math.exp(-te / t2)
        assert abs(abs(sig[0]) - expected) < 0.01 * m0_total(ph, site), (te, abs(sig[0]), expected)
        # without the refocusing the T2' spread would have killed the signal
        assert abs(sig[0]) > 5 * m0_total(ph, site) * math.exp(-te / t2 - te / 0.01)


def spoiled_gre(flip_deg: float, tr: float, n_tr: int, spoil_cycles_per_m: float) -> pp.Sequence:
    seq = pp.Sequence(SYS)
    rf_dur = 1e-4
    adc = pp.make_adc(num_samples=1, dwell=1e-5, system=SYS)
    spoil = pp.make_trapezoid("x", area=spoil_cycles_per_m, system=SYS)
    phase = 0.0
    inc = 0.0
    for _ in range(n_tr):
        rf = pp.make_block_pulse(math.radians(flip_deg), duration=rf_dur, phase_offset=phase, system=SYS)
        adc.phase_offset = phase
        seq.add_block(rf)
        seq.add_block(adc)
        seq.add_block(spoil)
        used = rf_dur + 1e-5 + pp.calc_duration(spoil)
        seq.add_block(pp.make_delay(round((tr - used) / 1e-5) * 1e-5))
        # quadratic RF spoiling with the classic 117 degree increment
        inc = (inc + math.radians(117.0)) % (2 * math.pi)
        phase = (phase + inc) % (2 * math.pi)
    return seq


@pytest.mark.parametrize("flip_deg", [8.0, 25.0])
def test_spoiled_gre_steady_state_matches_ernst(flip_deg):
    t1, t2, tr = 0.4, 0.04, 0.01
    ph, site = voxel_phantom(t1, t2, size_m=0.004), ideal_site()
    # 4 cycles across the voxel along x: the isochromats span the spoiler's phase range
    seq = spoiled_gre(flip_deg, tr, n_tr=220, spoil_cycles_per_m=4 / 0.004)
    sig = np.array([s[0] for s in run(seq, ph, site, n_iso=600)])
    te = 0.5e-4 + 0.5e-5
    e1 = math.exp(-tr / t1)
    a = math.radians(flip_deg)
    ernst = m0_total(ph, site) * math.sin(a) * (1 - e1) / (1 - math.cos(a) * e1) * math.exp(-te / t2)
    measured = np.abs(sig[-20:]).mean()
    assert abs(measured - ernst) < 0.03 * ernst, (measured, ernst)
    # the first echo is the full sin(flip) of the equilibrium magnetisation
    assert abs(abs(sig[0]) - m0_total(ph, site) * math.sin(a) * math.exp(-te / t2)) < 0.01 * m0_total(
        ph, site
    )


def test_bssfp_on_resonance_steady_state():
    t1, t2, tr, flip = 0.8, 0.08, 0.005, math.radians(50)
    ph, site = voxel_phantom(t1, t2), ideal_site()
    rf_dur = 1e-4
    seq = pp.Sequence(SYS)
    # alpha/2 preparation half a TR before the train shortens the approach to steady state
    seq.add_block(pp.make_block_pulse(flip / 2, duration=rf_dur, phase_offset=math.pi, system=SYS))
    seq.add_block(pp.make_delay(tr / 2 - rf_dur))
    adc_delay = tr / 2 - rf_dur / 2 - 0.5e-5
    for n in range(600):
        ph_n = math.pi * (n % 2)
        seq.add_block(pp.make_block_pulse(flip, duration=rf_dur, phase_offset=ph_n, system=SYS))
        adc = pp.make_adc(num_samples=1, dwell=1e-5, delay=adc_delay, phase_offset=ph_n, system=SYS)
        seq.add_block(adc, pp.make_delay(tr - rf_dur))
    sig = np.array([s[0] for s in run(seq, ph, site, n_iso=1)])
    e1, e2 = math.exp(-tr / t1), math.exp(-tr / t2)
    mss = (1 - e1) * math.sin(flip) / (1 - (e1 - e2) * math.cos(flip) - e1 * e2)
    expected = m0_total(ph, site) * mss * math.exp(-tr / 2 / t2)
    assert abs(np.abs(sig[-10:]).mean() - expected) < 0.01 * expected
    # balanced: the phase alternation is removed by the receiver, the echo phase is constant
    assert np.ptp(np.angle(sig[-10:])) < 1e-3


def test_inversion_recovery_null_at_t1_ln2():
    t1 = 0.9
    ph, site = voxel_phantom(t1, 0.08), ideal_site()
    tis = np.linspace(0.4, 0.9, 11)
    values = []
    for ti in tis:
        seq = pp.Sequence(SYS)
        seq.add_block(pp.make_block_pulse(math.pi, duration=2e-4, system=SYS))
        seq.add_block(pp.make_delay(round((ti - 1e-4 - 0.5e-4) / 1e-5) * 1e-5))
        seq.add_block(pp.make_block_pulse(math.pi / 2, duration=1e-4, system=SYS))
        seq.add_block(pp.make_adc(num_samples=1, dwell=1e-5, system=SYS))
        s = run(seq, ph, site, n_iso=1)[0][0]
        # a 90 deg pulse of phase 0 puts +Mz on +y: the signed longitudinal value is Im(s)
        values.append(s.imag / m0_total(ph, site))
    values = np.array(values)
    ti_exact = tis - 1e-4 + 1e-4  # centre-to-centre times equal the requested TI by construction
    expected = 1 - 2 * np.exp(-ti_exact / t1)
    assert np.abs(values - expected * math.exp(-0.55e-4 / 0.08)).max() < 0.01
    k = int(np.nonzero(np.diff(np.sign(values)))[0][0])
    null = tis[k] - values[k] * (tis[k + 1] - tis[k]) / (values[k + 1] - values[k])
    assert abs(null - t1 * math.log(2)) < 0.01 * t1 * math.log(2)


def test_sinc_slice_profile_matches_small_tip_fourier_transform():
    thickness = 0.005
    rf, gz, _ = pp.make_sinc_pulse(
        math.radians(10), duration=3e-3, slice_thickness=thickness, apodization=0.5,
        time_bw_product=4, system=SYS, return_gz=True,
    )  # fmt: skip
    gzr = pp.make_trapezoid("z", area=-gz.area / 2, system=SYS)
    seq = pp.Sequence(SYS)
    seq.add_block(rf, gz)
    seq.add_block(gzr)
    # spins on a line along z, one per 0.1 mm voxel, over 4 slice thicknesses
    nz = 200
    shape = (nz, 1, 1)
    ph = Phantom(
        pd=torch.ones(shape), t1=torch.full(shape, 1e3), t2=torch.full(shape, 1e3),
        t2prime=torch.full(shape, 1e6), b0_hz=torch.zeros(shape), b1=torch.ones(shape),
        voxel_size_m=(4 * thickness / nz, 0.001, 0.001), brain_mask=torch.ones(shape, dtype=torch.bool),
    )  # fmt: skip
    site = ideal_site()
    spins = build_spins(ph, site, 1, spins_per_isochromat=1)
    engine = BlochEngine(spin_fields(spins, site))
    _play(seq, engine, site)
    engine.flush()
    z = spins.voxel_pos[:, 2].numpy()
    measured = engine.mxy.abs().double().numpy()
    # small-tip approximation: Mxy(z) = 2 pi | integral b1(t) exp(i 2 pi G z (t - t_c)) dt |
    t = np.asarray(rf.t)
    dt = t[1] - t[0]
    f = gz.amplitude * z
    ft = np.abs(
        (np.asarray(rf.signal)[None, :] * np.exp(2j * np.pi * f[:, None] * (t[None, :] - 1.5e-3))).sum(1)
    )
    expected = 2 * np.pi * ft * dt
    assert np.abs(measured - expected).max() < 0.01 * expected.max()
    # full width at half maximum is the slice thickness
    above = z[measured > measured.max() / 2]
    assert abs((above.max() - above.min()) - thickness) < 0.1 * thickness


def test_fast_readout_equals_direct_sum():
    """The geometric-series readout (constant gradient) equals the per-sample direct sum."""
    from dataclasses import replace

    from simulator import shepp_logan_phantom

    ph = shepp_logan_phantom(matrix=16)
    site = Site(name="s", field_T=3.0, n_coils=4, noise_sigma=0.0, b0_poly_hz={"x": 30.0, "y2": 20.0})
    spins = build_spins(ph, site, 4, spins_per_isochromat=2)
    seq = pp.Sequence(SYS)
    rf = pp.make_block_pulse(math.radians(40), duration=2e-4, system=SYS)
    gx = pp.make_trapezoid("x", flat_area=16 / 0.22, flat_time=2e-3, system=SYS)
    gy = pp.make_trapezoid("y", area=3 / 0.22, system=SYS)
    adc = pp.make_adc(num_samples=37, duration=gx.flat_time, delay=gx.rise_time, system=SYS)
    seq.add_block(rf)
    seq.add_block(gy, pp.make_trapezoid("x", area=-gx.area / 2, system=SYS))
    seq.add_block(gx, adc)
    outputs = []
    for force_direct in (False, True):
        engine = BlochEngine(spin_fields(spins, site))

        def read(ev: Readout, engine=engine, force_direct=force_direct) -> None:
            assert ev.linear
            outputs.append(engine.readout(replace(ev, linear=not force_direct)))

        _play(seq, engine, site, read)
    fast, direct = outputs
    assert fast.shape == (4, 37)
    torch.testing.assert_close(fast, direct, rtol=0, atol=2e-4 * float(direct.abs().max()))
