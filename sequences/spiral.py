"""spiral2d: 2D spiral-out spoiled gradient echo with rotated interleaves (non-Cartesian).

The Archimedean spiral k(theta) = k_max (theta / theta_max) exp(i theta)
with theta_max = 2 pi N / (2 n_interleaves) turns satisfies Nyquist along the
radius (turns are n_interleaves / FOV apart once the interleaves are
combined). It is traversed as fast as the *protocol's* design limits allow
(``design_max_grad``, ``design_max_slew``, knots every ``design_raster``): each
knot takes the largest angular step within them, found by bisection. The
gradient is piecewise linear between knots (a Pulseq extended trapezoid), and
knot times are multiples of the design raster, which every profile's gradient
raster divides, so every profile plays exactly the same waveform and samples
exactly the same k-space; a profile whose limits are below the design limits
refuses. The waveform ramps down at the design slew; a trapezoid rewinder
returns k to 0 and a slice spoiler follows.

Interleave i is the base spiral rotated by 2 pi i / n_interleaves (LIN = i).
The ADC starts half a dwell before the gradient, so sample 0 sits exactly at
k = 0 at TE after the excitation centre. The trajectory the sequence actually
plays (pypulseq ``calculate_kspace``) is what :meth:`BuiltSequence.trajectory`
returns, one (n_samples, 3) array per imaging ADC, in 1/m.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pypulseq as pp

from sequences.blocks import (
    ceil_to,
    delay_block,
    is_multiple,
    labels,
    min_trap_duration,
    noise_prescan,
    place_rf,
    rf_spoil_phase,
    round_to,
    set_definitions,
    slice_excitation,
    slice_passes,
    trap_with_duration,
)
from sequences.built import BuiltSequence, achieved_params
from sequences.gre import slice_positions
from sequences.header import planar_encoding, protocol_header
from sequences.protocol import ProtocolError
from sequences.systems import SystemProfile


def design_spiral(k_max: float, turns: float, g_max: float, s_max: float, dt: float) -> np.ndarray:
    """Complex k [1/m] at gradient-raster edges of an Archimedean spiral from 0 to ``k_max``.

    ``g_max`` [Hz/m] and ``s_max`` [Hz/m/s] bound the gradient (k' ) and the
    vector slew (k''); ``dt`` [s] is the gradient raster. Gradient samples are
    (k[i+1] - k[i]) / dt at raster centres, as pypulseq's arbitrary gradients hold them.
    """
    theta_max = 2 * math.pi * turns
    a = k_max / theta_max

    def k_of(th: float) -> complex:
        return a * th * complex(math.cos(th), math.sin(th))

    ks = [0j]
    th, g_prev = 0.0, 0j
    step = s_max * dt * dt / 2 / max(a, 1e-12)  # first step: slew-limited start from rest
    for _ in range(2_000_000):
        if th >= theta_max:
            break

        # |g| below sqrt(s r_c) (r_c = radius of curvature, which only grows along an Archimedean spiral)
        # keeps the centripetal slew to half the limit, so the greedy step never has to brake later
        r_c = a * (1 + th * th) ** 1.5 / (2 + th * th)
        g_cap = min(g_max, math.sqrt(0.5 * s_max * r_c))
        t_slew = dt if len(ks) > 1 else dt / 2  # the first sample ramps from 0 over half a raster

        def ok(dth: float, th=th, g_prev=g_prev, g_cap=g_cap, t_slew=t_slew) -> bool:
            g = (k_of(th + dth) - k_of(th)) / dt
            return abs(g) <= g_cap and abs(g - g_prev) / t_slew <= s_max

        # the feasible steps form an interval around the previous step (the gradient cannot jump):
        # scan a grid around it for the largest feasible step, then refine by bisection
        grid = step * np.linspace(0.25, 2.0, 64)
        feasible = [x for x in grid if ok(x)]
        if not feasible:
            raise ProtocolError("spiral design stalled: the gradient limits are too low for this trajectory.")
        lo = max(feasible)
        hi = lo + step * (1.75 / 63)
        for _ in range(20):
            mid = 0.5 * (lo + hi)
            if ok(mid):
                lo = mid
            else:
                hi = mid
        th_next = th + lo  # the last step may pass theta_max slightly: truncating it would jump the gradient
        g_prev = (k_of(th_next) - k_of(th)) / dt
        step = lo
        th = th_next
        ks.append(k_of(th))
    return np.asarray(ks)


def ramp_down(g_last: complex, s_max: float, dt: float) -> np.ndarray:
    """Gradient samples [Hz/m] that bring ``g_last`` linearly to 0 at the slew limit (vector)."""
    n = max(1, math.ceil(abs(g_last) / (s_max * dt)))
    return g_last * (1 - np.arange(1, n + 1) / n)


def build_spiral2d(p: dict[str, Any], system: SystemProfile, protocol: str = "spiral2d") -> BuiltSequence:
    """Build spiral2d from resolved SI parameters ``p`` for ``system``."""
    fov, n, n_int = p["fov"], p["matrix"], p["n_interleaves"]
    soft = system.with_slew(p["aux_gradient_slew"])  # prephasers, spoilers, crushers: lower PNS
    thk = p["slice_thickness"]
    rb, gr = system.block_duration_raster, system.grad_raster_time
    dwell = p["adc_dwell"]
    if (
        abs(dwell / system.adc_raster_time - round(dwell / system.adc_raster_time)) > 1e-6
        or abs(dwell / 2 / system.rf_raster_time - round(dwell / 2 / system.rf_raster_time)) > 1e-6
    ):
        raise ProtocolError(
            f"adc_dwell = {dwell * 1e6:g} us must be a multiple of the {system.adc_raster_time * 1e6:g} us "
            f"ADC raster of system {system.name} with half of it on its {system.rf_raster_time * 1e6:g} us "
            f"RF raster."
        )
    T = p["design_raster"]
    if not (is_multiple(T, gr) and is_multiple(T, rb)):
        raise ProtocolError(
            f"design_raster = {T * 1e6:g} us is not a multiple of the {gr * 1e6:g} us gradient raster of "
            f"system {system.name}."
        )
    G = p["design_max_grad"] * system.gamma  # Hz/m
    S = p["design_max_slew"] * system.gamma  # Hz/m/s
    if G > system.max_grad_hz * (1 + 1e-9):
        raise ProtocolError(
            f"design_max_grad = {p['design_max_grad'] * 1e3:g} mT/m exceeds the "
            f"{system.max_grad * 1e3:g} mT/m of system {system.name}."
        )
    if S > system.max_slew_hz * (1 + 1e-9):
        raise ProtocolError(
            f"design_max_slew = {p['design_max_slew']:g} T/m/s exceeds the {system.max_slew:g} T/m/s of "
            f"system {system.name}."
        )
    k_max = n / (2 * fov)
    turns = n / (2 * n_int)
    k = design_spiral(k_max, turns, G, S, T)
    g = np.zeros(len(k), dtype=complex)  # gradient at the knots j*T, piecewise linear in between
    g[1:-1] = (k[2:] - k[:-2]) / (2 * T)
    g[-1] = (k[-1] - k[-2]) / T
    g = np.concatenate([g, ramp_down(g[-1], S, T)])
    t_spiral = (len(k) - 1) * T
    knots = np.arange(len(g)) * T
    n_samples = int(t_spiral / dwell + 1e-9) // system.adc_samples_divisor * system.adc_samples_divisor
    if n_samples < 16:
        raise ProtocolError(f"adc_dwell = {dwell * 1e6:g} us leaves fewer than 16 samples on the spiral.")
    # k after the ramp-down (base orientation): trapezoidal integral of the piecewise-linear gradient
    k_end = np.sum((g[1:] + g[:-1]) / 2) * T

    exc = slice_excitation(
        system,
        p["flip_angle"],
        p["rf_duration"],
        p["rf_time_bandwidth"],
        p["rf_apodization"],
        p["rf_dwell"],
        thk,
    )
    d_reph = ceil_to(min_trap_duration(exc.rephase_area, soft), rb)
    g_delay = ceil_to(max(system.adc_dead_time + dwell / 2, T), T)  # same on every profile
    d_spiral = ceil_to(g_delay + knots[-1] + system.adc_dead_time, rb)
    spoil_z = p["spoiler_cycles"] / thk
    d_rew = ceil_to(max(min_trap_duration(abs(k_end), soft), min_trap_duration(spoil_z, soft), rb), rb)

    te_min = (exc.duration - exc.t_center) + d_reph + g_delay
    te_fill = p["TE"] - te_min
    te_delay = delay_block(te_fill, system, "TE", p["TE"], te_min)
    te_actual = te_min + (round_to(te_fill, rb) if te_delay else 0.0)
    tr_used = exc.duration + d_reph + (te_actual - te_min) + d_spiral + d_rew
    tr_delay = delay_block(p["TR"] - tr_used, system, "TR", p["TR"], tr_used)
    tr_actual = tr_used + (round_to(p["TR"] - tr_used, rb) if tr_delay else 0.0)

    opts = system.to_opts()
    seq = pp.Sequence(system=opts)
    seq.add_block(*noise_prescan(system, n_samples, dwell))
    z_pos = slice_positions(p["n_slices"], thk, p["slice_gap"])
    n_exc = 0

    def one_tr(freq: float, i: int, lab: dict[str, int] | None) -> None:
        nonlocal n_exc
        phase = rf_spoil_phase(n_exc, p["rf_spoiling_increment"])
        n_exc += 1
        rot = complex(math.cos(2 * math.pi * i / n_int), math.sin(2 * math.pi * i / n_int))
        seq.add_block(place_rf(exc, freq, phase), exc.grad, pp.make_delay(exc.duration))
        seq.add_block(trap_with_duration("z", exc.rephase_area, d_reph, soft))
        if te_delay is not None:
            seq.add_block(te_delay)
        gw = g * rot
        gx = pp.make_extended_trapezoid("x", amplitudes=gw.real, times=knots + g_delay, system=opts)
        gy = pp.make_extended_trapezoid("y", amplitudes=gw.imag, times=knots + g_delay, system=opts)
        events = [gx, gy, pp.make_delay(d_spiral)]
        if lab is not None:
            adc = pp.make_adc(
                num_samples=n_samples, dwell=dwell, delay=g_delay - dwell / 2, phase_offset=phase, system=opts
            )
            events += [adc, *labels(**lab)]
        seq.add_block(*events)
        ke = k_end * rot
        rew = [trap_with_duration("z", spoil_z, d_rew, soft)]
        for axis, area in (("x", -ke.real), ("y", -ke.imag)):
            if abs(area) > 1e-9:
                rew.append(trap_with_duration(axis, area, d_rew, soft))
        seq.add_block(*rew, pp.make_delay(d_rew))
        if tr_delay is not None:
            seq.add_block(tr_delay)

    for counters, freq in slice_passes(p, z_pos, exc.grad.amplitude):
        for _ in range(p["dummy_scans"]):
            one_tr(freq, 0, None)
        for i in range(n_int):
            one_tr(freq, i, {"lin": i, **counters})

    set_definitions(
        seq, protocol=protocol, system=system, fov_m=(fov, fov, thk), matrix=(n, n, 1),
        readout_oversampling=1, te=te_actual, tr=tr_actual, flip_angle=p["flip_angle"],
        slice_thickness=thk, slice_positions=z_pos, trajectory="spiral",
    )  # fmt: skip

    enc = planar_encoding(
        "spiral",
        n,
        n,
        fov,
        thk,
        1,
        p,
        {"kspace_encoding_step_0": (0, n_samples - 1, 0), "kspace_encoding_step_1": (0, n_int - 1, 0)},
        trajectory_id="unisono.spiral_archimedean",
        trajectory_long={"n_interleaves": n_int, "n_samples": n_samples},
        trajectory_double={"k_max_per_m": k_max, "dwell_us": dwell * 1e6, "fov_m": fov},
        trajectory_comment="spiral-out, interleave i rotated by 2 pi i / n_interleaves; traj in the data",
    )
    header = protocol_header(
        protocol, system, [enc], TR=tr_actual, TE=te_actual, flip_angle=p["flip_angle"],
        slice_positions=z_pos, readout_dwell=dwell, sequence_type="Flash",
        user_double={"spiral_readout_ms": n_samples * dwell * 1e3},
        user_long={"dummy_scans": p["dummy_scans"]},
    )  # fmt: skip
    params = achieved_params(
        p, te=te_actual, tr=tr_actual, min_tr=tr_used - (te_actual - te_min), dwell=dwell, z_pos=z_pos,
        min_TE=te_min, n_samples=n_samples, spiral_duration=t_spiral, spiral_k_design=k,
    )  # fmt: skip
    return BuiltSequence(seq=seq, header=header, params=params, system=system, protocol=protocol)
