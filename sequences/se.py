"""Spin-echo family: se2d (one echo per excitation) and tse2d (turbo spin echo, echo train).

One slice module (one excitation, ``echo_train_length`` echoes)::

    [RF90 + Gz] [Gx prephase, Gz rephase] [delay c]
    repeat per echo:
        [Gz crusher, Gy rewind, Gx fix] [RF180 + Gz] [Gz crusher, Gy phase encode] [delay a]
        [Gx readout + ADC + labels] [delay b]
    [spoil: Gx, Gz; Gy rewind]

Delays a, b, c make excitation -> first refocusing = ESP/2, refocusing ->
echo = ESP/2 and echo -> next refocusing = ESP/2, so echo e (0-based) is at
(e + 1) * ESP after the excitation centre; ESP = TE for se2d. Refocusing
pulses are 90 deg out of phase with the excitation (CPMG), the crushers around
each refocusing pulse are equal so only the spin-echo path survives, and the
readout moment is reset before each refocusing pulse so every echo is centred.

With ``TI`` > 0 (tse2d) each slice module starts with a slice-selective
inversion (``inversion_thickness_factor`` times the slice, so the slice
profile is fully inverted), a spoiler and the delay that puts the excitation
centre TI after the inversion centre (FLAIR/STIR-like).

Multi-slice is interleaved within TR (even slices first, then odd), so TR is
the time between excitations of the same slice.

tse2d ordering: with N lines, ETL echoes and S = N / ETL shots, shot s echo
e acquires line ((e - e_TE + ETL//2) mod ETL) * S + s, where e_TE = TE/ESP - 1
is the echo that crosses the k-space centre: the centre band (line N/2) is
acquired at the effective TE. LIN = line, SEG = echo index in the train.
"""

from __future__ import annotations

import math
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
    round_to,
    set_definitions,
    slice_excitation,
    trap_with_duration,
)
from sequences.built import BuiltSequence, achieved_params
from sequences.gre import slice_positions
from sequences.header import planar_encoding, protocol_header
from sequences.protocol import ProtocolError
from sequences.systems import SystemProfile

_EPS = 1e-9


def echo_order(n: int, etl: int, echo_at_centre: int) -> np.ndarray:
    """Line index [shot, echo] for ``n`` lines, train length ``etl``, centre band at ``echo_at_centre``."""
    shots = n // etl
    e = np.arange(etl)
    band = (e - echo_at_centre + etl // 2) % etl
    return band[None, :] * shots + np.arange(shots)[:, None]


def interleaved_order(n_slices: int) -> list[int]:
    """Even slices first, then odd: neighbours are never excited back to back (less cross-talk)."""
    return list(range(0, n_slices, 2)) + list(range(1, n_slices, 2))


def build(p: dict[str, Any], system: SystemProfile, protocol: str, kind: str) -> BuiltSequence:
    """Build ``kind`` ('se2d' or 'tse2d') from resolved SI parameters ``p`` for ``system``."""
    fov, n, os = p["fov"], p["matrix"], p["readout_oversampling"]
    soft = system.with_slew(p["aux_gradient_slew"])  # prephasers, spoilers, crushers: lower PNS
    n_samples = cartesian_readout_samples(n, os, system)
    etl = p["echo_train_length"] if kind == "tse2d" else 1
    if n % etl:
        raise ProtocolError(
            f"echo_train_length = {etl} must divide matrix = {n} so that every shot has a full train."
        )
    thk = p["slice_thickness"]
    rb = system.block_duration_raster
    dwell = quantised_dwell(p["readout_bandwidth"], n_samples, p["dwell_raster"], system)
    ro = make_readout(system, n_samples, dwell, 1.0 / (fov * os))
    rf_args = (p["rf_time_bandwidth"], p["rf_apodization"], p["rf_dwell"], thk)
    exc = slice_excitation(system, p["flip_angle"], p["rf_duration"], *rf_args)
    ref = slice_excitation(
        system, p["refocusing_flip_angle"], p["refocusing_rf_duration"], *rf_args, use="refocusing"
    )

    ky = (np.arange(n) - n // 2) / fov
    crush = p["crusher_cycles"] / thk
    tail = ro.grad.area - ro.area_to_center
    x_fix = ro.area_to_center - tail  # resets kx so the next echo is centred after the refocusing flip
    spoil_z = 4.0 / thk
    d_pre = ceil_to(
        max(min_trap_duration(ro.area_to_center, soft), min_trap_duration(exc.rephase_area, soft)), rb
    )
    d_post = ceil_to(max(min_trap_duration(crush, soft), min_trap_duration(np.max(np.abs(ky)), soft)), rb)
    d_prer = ceil_to(
        max(
            min_trap_duration(crush, soft),
            min_trap_duration(np.max(np.abs(ky)), soft),
            min_trap_duration(abs(x_fix), soft),
        ),
        rb,
    )
    d_spoil = ceil_to(
        max(min_trap_duration(spoil_z, soft), min_trap_duration(np.max(np.abs(ky)), soft), rb), rb
    )

    first_min = (exc.duration - exc.t_center) + d_pre + d_prer + ref.t_center
    a_min = (ref.duration - ref.t_center) + d_post + ro.t_center
    b_min = (ro.duration - ro.t_center) + d_prer + ref.t_center
    need = max(first_min, a_min, b_min)
    if kind == "se2d":
        field, requested = "TE", p["TE"]
    else:
        field, requested = "echo_spacing", p["echo_spacing"]
    half = round_to(requested / 2, rb)
    if half < need - _EPS:
        raise ProtocolError(
            f"{field} = {requested * 1e3:.3f} ms is below the minimum of {2 * need * 1e3:.3f} ms that system "
            f"{system.name} allows with these settings."
        )
    esp = 2 * half
    if kind == "tse2d":
        e_te = round(p["TE"] / esp) - 1
        if abs(p["TE"] - (e_te + 1) * esp) > rb / 2 + _EPS or not 0 <= e_te < etl:
            raise ProtocolError(
                f"TE = {p['TE'] * 1e3:.3f} ms must be a multiple of echo_spacing ({esp * 1e3:.3f} ms) "
                f"between {esp * 1e3:.3f} and {etl * esp * 1e3:.3f} ms for echo_train_length = {etl}."
            )
    else:
        e_te = 0
    te_actual = (e_te + 1) * esp
    c, a, b = half - first_min, half - a_min, half - b_min
    per_echo = d_prer + ref.duration + d_post + a + ro.duration + b
    module = exc.duration + d_pre + c + etl * per_echo + d_spoil
    # optional inversion recovery (FLAIR/STIR-like): slice-selective inversion, spoiler, then TI delay
    ti = p.get("TI", 0.0)
    inv = None
    ti_actual = 0.0
    if ti > 0:
        inv = slice_excitation(
            system,
            math.pi,
            p["refocusing_rf_duration"],
            *rf_args[:3],
            p["inversion_thickness_factor"] * thk,
            use="inversion",
        )
        d_inv_spoil = ceil_to(min_trap_duration(spoil_z, soft), rb)
        ti_min = (inv.duration - inv.t_center) + d_inv_spoil + exc.t_center
        ti_delay = delay_block(ti - ti_min, system, "TI", ti, ti_min)
        ti_fill = round_to(ti - ti_min, rb) if ti_delay is not None else 0.0
        ti_actual = ti_min + ti_fill
        module += inv.duration + d_inv_spoil + ti_fill
    slices = interleaved_order(p["n_slices"])
    z_pos = slice_positions(p["n_slices"], thk, p["slice_gap"])
    tr_used = module * len(slices)
    tr_delay = delay_block(p["TR"] - tr_used, system, "TR", p["TR"], tr_used)
    tr_actual = tr_used + (round_to(p["TR"] - tr_used, rb) if tr_delay else 0.0)
    order = echo_order(n, etl, e_te)
    opts = system.to_opts()

    seq = pp.Sequence(system=opts)
    seq.add_block(*noise_prescan(system, n_samples, dwell))

    def delay(d: float):
        return [pp.make_delay(round_to(d, rb))] if d > _EPS else []

    def module_blocks(slc: int, shot: int, counters: dict[str, int] | None) -> None:
        freq_exc = exc.grad.amplitude * z_pos[slc]
        freq_ref = ref.grad.amplitude * z_pos[slc]
        if inv is not None:
            seq.add_block(
                place_rf(inv, inv.grad.amplitude * z_pos[slc], 0.0), inv.grad, pp.make_delay(inv.duration)
            )
            seq.add_block(trap_with_duration("z", spoil_z, d_inv_spoil, soft))
            if ti_delay is not None:
                seq.add_block(ti_delay)
        seq.add_block(place_rf(exc, freq_exc, 0.0), exc.grad, pp.make_delay(exc.duration))
        seq.add_block(
            trap_with_duration("x", ro.area_to_center, d_pre, soft),
            trap_with_duration("z", exc.rephase_area, d_pre, soft),
        )
        for d in delay(c):
            seq.add_block(d)
        prev_ky = 0.0
        for e in range(etl):
            line = int(order[shot, e])
            grads = [trap_with_duration("z", crush, d_prer, soft)]
            if e > 0:
                if abs(prev_ky) > _EPS:
                    grads.append(trap_with_duration("y", -prev_ky, d_prer, soft))
                if abs(x_fix) > _EPS:
                    grads.append(trap_with_duration("x", x_fix, d_prer, soft))
            seq.add_block(*grads, pp.make_delay(d_prer))
            seq.add_block(place_rf(ref, freq_ref, math.pi / 2), ref.grad, pp.make_delay(ref.duration))
            post = [trap_with_duration("z", crush, d_post, soft)]
            if abs(ky[line]) > _EPS:
                post.append(trap_with_duration("y", float(ky[line]), d_post, soft))
            seq.add_block(*post, pp.make_delay(d_post))
            for d in delay(a):
                seq.add_block(d)
            if counters is None:
                seq.add_block(ro.grad, pp.make_delay(ro.duration))
            else:
                lab = labels(lin=line, seg=e, **counters, slc=slc)
                seq.add_block(ro.grad, ro.adc, pp.make_delay(ro.duration), *lab)
            for d in delay(b):
                seq.add_block(d)
            prev_ky = float(ky[line])
        spoil = [trap_with_duration("z", spoil_z, d_spoil, soft)]
        if abs(prev_ky) > _EPS:
            spoil.append(trap_with_duration("y", -prev_ky, d_spoil, soft))
        seq.add_block(*spoil, pp.make_delay(d_spoil))

    n_shots = n // etl
    for rep in range(p["n_repetitions"]):
        for avg in range(p["n_averages"]):
            for _ in range(p["dummy_scans"]):
                for slc in slices:
                    module_blocks(slc, 0, None)
                if tr_delay is not None:
                    seq.add_block(tr_delay)
            for shot in range(n_shots):
                for slc in slices:
                    module_blocks(slc, shot, {"avg": avg, "rep": rep})
                if tr_delay is not None:
                    seq.add_block(tr_delay)

    set_definitions(
        seq, protocol=protocol, system=system, fov_m=(fov, fov, thk), matrix=(n, n, 1),
        readout_oversampling=os, te=te_actual, tr=tr_actual, flip_angle=p["flip_angle"],
        slice_thickness=thk, slice_positions=z_pos, trajectory="cartesian",
        RefocusingFlipAngle=math.degrees(p["refocusing_flip_angle"]), EchoSpacing=esp,
        EchoTrainLength=etl,
    )  # fmt: skip
    if inv is not None:
        seq.set_definition("TI", ti_actual)

    enc = planar_encoding(
        "cartesian",
        n_samples,
        n,
        fov,
        thk,
        os,
        p,
        {
            "kspace_encoding_step_0": (0, n_samples - 1, n_samples // 2),
            "kspace_encoding_step_1": (0, n - 1, n // 2),
            "segment": (0, etl - 1, e_te),
        },
        echo_train_length=etl if kind == "tse2d" else None,
    )
    header = protocol_header(
        protocol, system, [enc], TR=tr_actual, TE=te_actual, flip_angle=p["flip_angle"],
        slice_positions=z_pos, readout_dwell=dwell,
        TI=[ti_actual] if inv is not None else [],
        echo_spacing=[esp] if kind == "tse2d" else [],
        sequence_type="TSE" if kind == "tse2d" else "SpinEcho",
        user_double={
            "readout_bandwidth_Hz_per_px": 1.0 / (n_samples * dwell),
            "refocusing_flip_angle_deg": math.degrees(p["refocusing_flip_angle"]),
        },
        user_long={"readout_oversampling": os, "dummy_scans": p["dummy_scans"], "echo_at_centre": e_te},
    )  # fmt: skip
    params = achieved_params(
        p, te=te_actual, tr=tr_actual, min_tr=tr_used, dwell=dwell, z_pos=z_pos, actual_echo_spacing=esp,
        actual_TI=ti_actual, actual_readout_bandwidth=1.0 / (n_samples * dwell), echo_order=order.tolist(),
    )  # fmt: skip
    return BuiltSequence(seq=seq, header=header, params=params, system=system, protocol=protocol)


def build_se2d(p: dict[str, Any], system: SystemProfile, protocol: str = "se2d") -> BuiltSequence:
    """se2d: multi-slice 2D spin echo."""
    return build(p, system, protocol, "se2d")


def build_tse2d(p: dict[str, Any], system: SystemProfile, protocol: str = "tse2d") -> BuiltSequence:
    """tse2d: multi-slice 2D turbo spin echo."""
    return build(p, system, protocol, "tse2d")
