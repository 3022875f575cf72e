"""Spoiled gradient echo family: gre2d (multi-slice), gre3d (slab, two phase-encode axes), radial2d.

One TR is five blocks::

    [RF + Gz] [prephase: Gx, Gy, Gz] [TE delay] [readout + ADC + labels] [spoil/rewind] [TR delay]

The readout is timed so its k-space centre sample lands on the block raster
(:func:`sequences.blocks.make_readout`), hence TE and TR are exact on every
profile whose block raster divides them. RF spoiling follows the quadratic
phase schedule with the ADC phase following the RF phase; spoilers on the
readout and slice axes add ``spoiler_cycles`` of dephasing across a voxel per
TR, while phase encoding (and, for radial, the in-plane readout moment) is
rewound so that every TR leaves the same moment behind.

Cartesian lines are in linear order: LIN = j samples ky = (j - N/2)/FOV, so
line N/2 is the k-space centre (as the MRD limit centre says); for gre3d,
PAR = m samples kz = (m - Nz/2)/slab. radial2d spokes are rotated by the
golden angle (111.246 deg) each TR; LIN = spoke index.

An optional motion navigator (:mod:`sequences.navigator`) is played every
``navigator_every`` imaging TRs when that parameter is non-zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pypulseq as pp

from sequences.blocks import (
    cartesian_readout_samples,
    ceil_to,
    delay_block,
    labels,
    make_readout,
    min_trap_duration,
    noise_prescan,
    place_rf,
    quantised_dwell,
    rf_spoil_phase,
    round_to,
    scaled_trap,
    set_definitions,
    slice_excitation,
    slice_passes,
    trap_with_duration,
)
from sequences.built import BuiltSequence, achieved_params
from sequences.header import EncodingInfo, protocol_header
from sequences.navigator import (
    ORBIT_RADIUS,
    THREE_PLANES,
    THROUGH_PLANE_RADIUS,
    make_navigator,
    make_orbital_navigator,
)
from sequences.systems import SystemProfile

#: golden angle for 2D radial sampling [rad] (180 deg / golden ratio)
GOLDEN_ANGLE = math.pi * 2 / (1 + math.sqrt(5))


def slice_positions(n_slices: int, thickness: float, gap: float) -> np.ndarray:
    """Slice centres [m] along the slice axis, symmetric about isocentre."""
    return (np.arange(n_slices) - (n_slices - 1) / 2) * (thickness + gap)


@dataclass(frozen=True)
class Line:
    """One imaging readout: in-plane direction, phase-encode areas [1/m] and labels."""

    angle: float  # readout direction in the x-y plane [rad]; 0 = +x
    ky: float
    kz: float
    lin: int
    par: int


def _lines(kind: str, p: dict[str, Any], fov: float) -> list[Line]:
    n = p["matrix"]
    if kind == "radial2d":
        return [Line((i * GOLDEN_ANGLE) % (2 * math.pi), 0.0, 0.0, i, 0) for i in range(p["n_spokes"])]
    ky = (np.arange(n) - n // 2) / fov
    if kind == "gre3d":
        nz = p["n_partitions"]
        kz = (np.arange(nz) - nz // 2) / p["slab_thickness"]
        return [Line(0.0, float(ky[j]), float(kz[m]), j, m) for m in range(nz) for j in range(n)]
    return [Line(0.0, float(ky[j]), 0.0, j, 0) for j in range(n)]


def build(p: dict[str, Any], system: SystemProfile, protocol: str, kind: str) -> BuiltSequence:
    """Build a spoiled GRE of ``kind`` (gre2d, gre3d, radial2d) from SI parameters ``p``."""
    fov, n = p["fov"], p["matrix"]
    soft = system.with_slew(p["aux_gradient_slew"])  # prephasers, spoilers, crushers: lower PNS
    os = p["readout_oversampling"]
    n_samples = cartesian_readout_samples(n, os, system)
    is3d = kind == "gre3d"
    thickness = p["slab_thickness"] if is3d else p["slice_thickness"]
    dwell = quantised_dwell(p["readout_bandwidth"], n_samples, p["dwell_raster"], system)
    ro = make_readout(system, n_samples, dwell, 1.0 / (fov * os))
    exc = slice_excitation(
        system,
        p["flip_angle"],
        p["rf_duration"],
        p["rf_time_bandwidth"],
        p["rf_apodization"],
        p["rf_dwell"],
        thickness,
    )
    lines = _lines(kind, p, fov)
    tail = ro.grad.area - ro.area_to_center  # readout moment left after the centre sample
    max_ky = max(abs(ln.ky) for ln in lines)
    max_kz = max(abs(ln.kz) for ln in lines)

    d_pre = ceil_to(
        max(
            min_trap_duration(ro.area_to_center, soft),
            min_trap_duration(max_ky, soft),
            min_trap_duration(abs(exc.rephase_area) + max_kz, soft),
        ),
        system.block_duration_raster,
    )
    spoil_x = p["spoiler_cycles"] * n / fov  # cycles per voxel / voxel size
    spoil_z = p["spoiler_cycles"] * (p["n_partitions"] if is3d else 1) / thickness
    radial = kind == "radial2d"
    d_spoil = ceil_to(
        max(
            min_trap_duration(spoil_x + (tail if radial else 0.0), soft),
            min_trap_duration(max_ky + (tail if radial else 0.0), soft),
            min_trap_duration(spoil_z + max_kz, soft),
            system.block_duration_raster,
        ),
        system.block_duration_raster,
    )

    te_min = (exc.duration - exc.t_center) + d_pre + ro.t_center
    te_fill = p["TE"] - te_min
    te_delay = delay_block(te_fill, system, "TE", p["TE"], te_min)
    te_actual = te_min + (round_to(te_fill, system.block_duration_raster) if te_delay else 0.0)
    tr_used = exc.duration + d_pre + (te_actual - te_min) + ro.duration + d_spoil
    tr_delay = delay_block(p["TR"] - tr_used, system, "TR", p["TR"], tr_used)
    tr_actual = tr_used + (round_to(p["TR"] - tr_used, system.block_duration_raster) if tr_delay else 0.0)

    nav_every = p.get("navigator_every", 0)
    nav = None
    if nav_every:
        rf = (p["navigator_flip_angle"], p["rf_duration"], p["rf_time_bandwidth"], p["rf_dwell"], thickness)
        kind_nav = p.get("navigator_type", "projection")
        if kind_nav == "orbital":
            nav = make_orbital_navigator(system, ORBIT_RADIUS, *rf)
        elif kind_nav == "orbital3":
            nav = make_orbital_navigator(
                system, ORBIT_RADIUS, *rf, planes=THREE_PLANES,
                through_plane_radius=p.get("navigator_through_plane_radius", THROUGH_PLANE_RADIUS),
            )  # fmt: skip
        else:
            nav = make_navigator(system, ro, *rf)

    seq = pp.Sequence(system=system.to_opts())
    seq.add_block(*noise_prescan(system, n_samples, dwell))
    z_pos = slice_positions(p.get("n_slices", 1), thickness, p.get("slice_gap", 0.0))
    n_exc = 0  # RF spoiling counter runs over every excitation, dummies included

    def one_tr(freq: float, line: Line, lab: dict[str, int] | None) -> None:
        nonlocal n_exc
        phase = rf_spoil_phase(n_exc, p["rf_spoiling_increment"])
        n_exc += 1
        c, s = math.cos(line.angle), math.sin(line.angle)
        seq.add_block(place_rf(exc, freq, phase), exc.grad, pp.make_delay(exc.duration))
        pre_x = trap_with_duration("x", -ro.area_to_center * c, d_pre, soft)
        pre_y = trap_with_duration("y", line.ky - ro.area_to_center * s, d_pre, soft)
        pre_z = trap_with_duration("z", exc.rephase_area + line.kz, d_pre, soft)
        seq.add_block(*[g for g in (pre_x, pre_y, pre_z) if abs(g.area) > 1e-9], pp.make_delay(d_pre))
        if te_delay is not None:
            seq.add_block(te_delay)
        ro_grads = [scaled_trap(ro.grad, c, "x")]
        if abs(s) > 1e-12:
            ro_grads.append(scaled_trap(ro.grad, s, "y"))
        if lab is None:
            seq.add_block(*ro_grads, pp.make_delay(ro.duration))
        else:
            adc = pp.make_adc(
                num_samples=ro.n_samples,
                dwell=dwell,
                delay=ro.adc.delay,
                phase_offset=phase,
                system=system.to_opts(),
            )
            seq.add_block(*ro_grads, adc, pp.make_delay(ro.duration), *labels(**lab))
        # radial: rewind the in-plane tail so every spoke leaves the same moment; Cartesian: spoil along x
        sx = spoil_x - (tail * c if radial else 0.0)
        sy = -line.ky - (tail * s if radial else 0.0)
        spoil = [
            trap_with_duration("x", sx, d_spoil, soft),
            trap_with_duration("y", sy, d_spoil, soft),
            trap_with_duration("z", spoil_z - line.kz, d_spoil, soft),
        ]
        seq.add_block(*[g for g in spoil if abs(g.area) > 1e-9], pp.make_delay(d_spoil))
        if tr_delay is not None:
            seq.add_block(tr_delay)

    for counters, freq in slice_passes(p, z_pos, exc.grad.amplitude):
        for d in range(p["dummy_scans"]):
            # the navigator plays in the dummy TRs too (no ADC): the steady state its reference
            # sees must include its own excitations
            if nav is not None and d % nav_every == 0:
                nav.add_to(seq, freq, counters, acquire=False)
            one_tr(freq, lines[0], None)
        for i, line in enumerate(lines):
            if nav is not None and i % nav_every == 0:
                nav.add_to(seq, freq, counters)
            one_tr(freq, line, {"lin": line.lin, "par": line.par, **counters})

    return _finish(
        p, system, protocol, kind, seq, lines, z_pos, ro, te_actual, tr_actual, te_min, tr_used, nav
    )


def _finish(p, system, protocol, kind, seq, lines, z_pos, ro, te_actual, tr_actual, te_min, tr_used, nav):
    fov, n, os = p["fov"], p["matrix"], p["readout_oversampling"]
    n_samples, dwell = ro.n_samples, ro.dwell
    is3d = kind == "gre3d"
    thickness = p["slab_thickness"] if is3d else p["slice_thickness"]
    nz = p["n_partitions"] if is3d else 1
    traj = {"gre2d": "cartesian", "gre3d": "cartesian", "radial2d": "goldenangle"}[kind]
    set_definitions(
        seq, protocol=protocol, system=system, fov_m=(fov, fov, thickness), matrix=(n, n, nz),
        readout_oversampling=os, te=te_actual, tr=tr_actual, flip_angle=p["flip_angle"],
        slice_thickness=thickness, slice_positions=z_pos, trajectory=traj,
    )  # fmt: skip

    n_lines = len(lines) if kind == "radial2d" else n
    enc = EncodingInfo(
        trajectory=traj,
        encoded_matrix=(n_samples, n_samples if kind == "radial2d" else n, nz),
        encoded_fov_m=(fov * os, fov * os if kind == "radial2d" else fov, thickness),
        recon_matrix=(n, n, nz),
        recon_fov_m=(fov, fov, thickness),
        limits={
            "kspace_encoding_step_0": (0, n_samples - 1, n_samples // 2),
            "kspace_encoding_step_1": (0, n_lines - 1, 0 if kind == "radial2d" else n // 2),
            "kspace_encoding_step_2": (0, nz - 1, nz // 2),
            "slice": (0, len(z_pos) - 1, 0),
            "average": (0, p["n_averages"] - 1, 0),
            "repetition": (0, p["n_repetitions"] - 1, 0),
            # navigator readouts carry SEG (a projection navigator's axis: 0 = x, 1 = y)
            **({"segment": (0, nav.n_segments - 1, 0)} if nav is not None else {}),
        },
    )
    if kind == "radial2d":
        enc.trajectory_id = "unisono.radial_golden_angle"
        enc.trajectory_double = {"golden_angle_deg": math.degrees(GOLDEN_ANGLE), "dk_per_m": 1.0 / (fov * os)}
        enc.trajectory_long = {"n_spokes": len(lines), "n_samples": n_samples}
        enc.trajectory_comment = "spoke i at angle i*golden_angle from +x; sample j at k=(j-n/2)*dk"
    user_string = {"unisono.protocol": protocol, "unisono.system": system.name}
    user_long = {"readout_oversampling": os, "dummy_scans": p["dummy_scans"]}
    user_double = {"readout_bandwidth_Hz_per_px": 1.0 / (n_samples * dwell)}
    if nav is not None:
        user_string["unisono.navigator"] = nav.header_tag
        user_double.update(nav.header_doubles())
        user_long["navigator_every"] = p["navigator_every"]
    header = protocol_header(
        protocol, system, [enc], TR=tr_actual, TE=te_actual, flip_angle=p["flip_angle"],
        slice_positions=z_pos, readout_dwell=dwell, sequence_type="Flash",
        user_double=user_double, user_long=user_long, user_string=user_string,
    )  # fmt: skip
    params = achieved_params(
        p, te=te_actual, tr=tr_actual, min_tr=tr_used - (te_actual - te_min), dwell=dwell, z_pos=z_pos,
        min_TE=te_min, actual_readout_bandwidth=1.0 / (n_samples * dwell),
    )  # fmt: skip
    traj_fn = None
    if kind == "radial2d":
        dk = 1.0 / (fov * os)

        n_rep = p["n_repetitions"] * p["n_averages"] * len(z_pos)

        def traj_fn(lines=lines, n_rep=n_rep):
            r = (np.arange(n_samples) - n_samples // 2) * dk
            spokes = [
                np.stack([r * math.cos(ln.angle), r * math.sin(ln.angle), 0 * r], axis=1) for ln in lines
            ]
            return spokes * n_rep

    return BuiltSequence(
        seq=seq, header=header, params=params, system=system, protocol=protocol, trajectory_fn=traj_fn
    )


def build_gre2d(p: dict[str, Any], system: SystemProfile, protocol: str = "gre2d") -> BuiltSequence:
    """gre2d: multi-slice 2D spoiled GRE."""
    return build(p, system, protocol, "gre2d")


def build_gre3d(p: dict[str, Any], system: SystemProfile, protocol: str = "gre3d") -> BuiltSequence:
    """gre3d: slab-selective 3D spoiled GRE (ky inner loop, kz outer)."""
    return build(p, system, protocol, "gre3d")


def build_radial2d(p: dict[str, Any], system: SystemProfile, protocol: str = "radial2d") -> BuiltSequence:
    """radial2d: golden-angle radial 2D spoiled GRE."""
    return build(p, system, protocol, "radial2d")
