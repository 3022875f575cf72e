"""Echo-planar imaging: epi2d (single-shot GRE-EPI) and dwi_epi (Stejskal-Tanner spin-echo EPI).

The EPI train (:class:`EpiTrain`) samples on the flat top only, one block per
line, with the phase blip in its own block between lines. Each readout
trapezoid is symmetric about the middle of its ADC window, so a forward line
samples kx = (i - N/2) dk and a reversed line (label REV) kx = (N/2 - 1 - i) dk:
flipping a reversed line puts it on the forward grid exactly. Line j samples
ky = (j - Ny/2) dky (LIN = j), bottom-up; line Ny/2 crosses the k-space centre
at TE.

Before the imaging lines, ``n_ref_lines`` lines at ky = 0 with alternating
polarity and no blips are the ghost-correction reference ("phase correction
navigators"): labelled NAV = 1, LIN = Ny/2, SEG = reference index, REV on the
reversed ones. The MRD header says ``unisono.navigator = "epi-phase-correction"``
so recon can tell them from motion navigators.

dwi_epi puts diffusion gradients of equal area on both sides of the
refocusing pulse; their amplitude is scaled per b-value with fixed timing, so
b = (2 pi)^2 g^2 [delta^2 (Delta - delta/3) + eps^3/30 - delta eps^2/6] for
trapezoids with ramp eps, delta = flat + eps, leading edges Delta apart
(Stejskal-Tanner with ramps, g in Hz/m). SET = diffusion encoding index.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pypulseq as pp

from sequences.blocks import (
    cartesian_readout_samples,
    ceil_to,
    delay_block,
    is_multiple,
    labels,
    min_trap_duration,
    noise_prescan,
    place_rf,
    quantised_dwell,
    rf_spoil_phase,
    round_to,
    scaled_trap,
    set_definitions,
    slice_excitation,
    trap_with_duration,
)
from sequences.built import BuiltSequence, achieved_params
from sequences.gre import slice_positions
from sequences.header import planar_encoding, protocol_header
from sequences.protocol import ProtocolError
from sequences.se import interleaved_order
from sequences.systems import SystemProfile

_EPS = 1e-9


@dataclass(frozen=True)
class EpiTrain:
    """Timing and events of one EPI readout train (times in s, areas in 1/m, gradients in Hz/m)."""

    grad: Any  # forward readout trapezoid (x)
    adc: Any
    blip: Any  # ky blip (y), area dky
    d_line: float
    d_blip: float
    n_lines: int
    n_ref: int
    pre_area: float  # x area that puts kx at the start of a forward line
    line_area: float  # full area of one readout trapezoid
    t_center_fwd: float  # block start -> k = 0 sample of a forward line
    t_center_rev: float  # block start -> k = 0 sample of a reversed line
    dky: float

    @property
    def echo_spacing(self) -> float:
        return self.d_line + self.d_blip

    def centre_time(self) -> float:
        """Time from the start of the first imaging line to the k-space centre sample."""
        j = self.n_lines // 2
        t_c = self.t_center_fwd if j % 2 == 0 else self.t_center_rev
        return j * self.echo_spacing + t_c

    def ref_duration(self) -> float:
        """Duration of the reference lines including the gaps between them."""
        return self.n_ref * self.d_line + max(self.n_ref - 1, 0) * self.d_blip

    def post_ref_x_area(self) -> float:
        """x area that returns kx to the start of a forward line after the reference lines."""
        return -self.line_area if self.n_ref % 2 else 0.0

    def add_ref_lines(self, seq: pp.Sequence, counters: dict[str, int], adc_phase: float = 0.0) -> None:
        for r in range(self.n_ref):
            rev = r % 2 == 1
            g = scaled_trap(self.grad, -1.0 if rev else 1.0)
            adc = _adc_with_phase(self.adc, adc_phase)
            lab = labels(lin=self.n_lines // 2, seg=r, nav=True, rev=rev, **counters)
            seq.add_block(g, adc, pp.make_delay(self.d_line), *lab)
            if r < self.n_ref - 1:
                seq.add_block(pp.make_delay(self.d_blip))

    def add_lines(self, seq: pp.Sequence, counters: dict[str, int] | None, adc_phase: float = 0.0) -> None:
        for j in range(self.n_lines):
            rev = j % 2 == 1
            g = scaled_trap(self.grad, -1.0 if rev else 1.0)
            if counters is None:
                seq.add_block(g, pp.make_delay(self.d_line))
            else:
                lab = labels(lin=j, rev=rev, **counters)
                seq.add_block(g, _adc_with_phase(self.adc, adc_phase), pp.make_delay(self.d_line), *lab)
            if j < self.n_lines - 1:
                seq.add_block(self.blip, pp.make_delay(self.d_blip))


def _adc_with_phase(adc, phase: float):
    a = copy.copy(adc)
    a.phase_offset = phase
    return a


def make_epi_train(
    system: SystemProfile, n_samples: int, dwell: float, dkx: float, n_lines: int, dky: float, n_ref: int
) -> EpiTrain:
    """Flat-top-sampled EPI train; raises ProtocolError naming the limit it breaks."""
    opts = system.to_opts()
    amp = dkx / dwell
    if amp > system.max_grad_hz:
        raise ProtocolError(
            f"readout_bandwidth: the EPI readout needs {amp / system.gamma * 1e3:.1f} mT/m but system "
            f"{system.name} allows {system.max_grad * 1e3:g} mT/m; lower the bandwidth or enlarge the FOV."
        )
    gr, rr, rb = system.grad_raster_time, system.rf_raster_time, system.block_duration_raster
    rise = max(gr, ceil_to(amp / system.max_slew_hz, gr))
    window = n_samples * dwell
    centre_reversed = (n_lines // 2) % 2 == 1
    flat = None
    fallback = None
    for k in range(200):
        f = ceil_to(window, gr) + k * gr
        # ADC start on the RF raster and after the ADC dead time
        if not is_multiple((f - window) / 2, rr) or rise + (f - window) / 2 < system.adc_dead_time - _EPS:
            continue
        fallback = fallback or f
        t_c = rise + (f - dwell) / 2 if centre_reversed else rise + (f + dwell) / 2
        if is_multiple(t_c, rb):  # k-space centre on the block raster: TE exact
            flat = f
            break
    flat = flat or fallback
    if flat is None:
        raise ProtocolError(
            f"dwell_raster: an EPI dwell of {dwell * 1e6:g} us cannot be centred on the gradient and RF "
            f"rasters "
            f"of system {system.name}."
        )
    grad = pp.make_trapezoid("x", amplitude=amp, flat_time=flat, rise_time=rise, system=opts)
    adc_delay = max(rise + (flat - window) / 2, system.adc_dead_time)
    if adc_delay > rise + (flat - window) / 2 + _EPS:
        raise ProtocolError(
            f"readout_bandwidth: the ADC dead time of system {system.name} "
            f"({system.adc_dead_time * 1e6:g} us) "
            f"does not fit before the EPI readout window."
        )
    adc = pp.make_adc(num_samples=n_samples, dwell=dwell, delay=adc_delay, system=opts)
    d_line = ceil_to(max(pp.calc_duration(grad), adc_delay + window + system.adc_dead_time), rb)
    blip = pp.make_trapezoid("y", area=dky, system=opts)
    d_blip = ceil_to(pp.calc_duration(blip), rb)
    f_mid_plus = amp * (rise / 2 + flat / 2 + dwell / 2)  # area from ramp start to the forward k = 0 sample
    return EpiTrain(
        grad=grad,
        adc=adc,
        blip=blip,
        d_line=d_line,
        d_blip=d_blip,
        n_lines=n_lines,
        n_ref=n_ref,
        pre_area=-f_mid_plus,
        line_area=grad.area,
        t_center_fwd=rise + (flat + dwell) / 2,
        t_center_rev=rise + (flat - dwell) / 2,
        dky=dky,
    )


def trapezoid_b_value(g: float, delta: float, Delta: float, eps: float) -> float:
    """b [s/m^2] of a Stejskal-Tanner pair of trapezoids (g in Hz/m, times in s; see module doc)."""
    return (2 * math.pi * g) ** 2 * (delta**2 * (Delta - delta / 3) + eps**3 / 30 - delta * eps**2 / 6)


def _directions(p: dict[str, Any]) -> list[tuple[float, float, float]]:
    out = []
    for d in p["diffusion_directions"]:
        v = np.asarray(d, dtype=float)
        if v.shape != (3,) or np.linalg.norm(v) < 1e-6:
            raise ProtocolError(
                f"diffusion_directions = {p['diffusion_directions']!r} must be a list of non-zero "
                "[x, y, z] vectors."
            )
        out.append(tuple(float(x) for x in v / np.linalg.norm(v)))
    return out


def build(p: dict[str, Any], system: SystemProfile, protocol: str, kind: str) -> BuiltSequence:
    """Build ``kind`` ('epi2d' or 'dwi_epi') from resolved SI parameters ``p`` for ``system``."""
    fov, n, os = p["fov"], p["matrix"], p["readout_oversampling"]
    soft = system.with_slew(p["aux_gradient_slew"])  # prephasers, spoilers, crushers: lower PNS
    n_samples = cartesian_readout_samples(n, os, system)
    thk = p["slice_thickness"]
    rb = system.block_duration_raster
    dwell = quantised_dwell(p["readout_bandwidth"], n_samples, p["dwell_raster"], system)
    train = make_epi_train(system, n_samples, dwell, 1.0 / (fov * os), n, 1.0 / fov, p["n_ref_lines"])
    rf_args = (p["rf_time_bandwidth"], p["rf_apodization"], p["rf_dwell"], thk)
    exc = slice_excitation(system, p["flip_angle"], p["rf_duration"], *rf_args)
    dwi = kind == "dwi_epi"

    d_xpre = ceil_to(min_trap_duration(train.pre_area, soft), rb)  # x prephase before the references
    post_x = train.post_ref_x_area()
    y_pre = -(n // 2) * train.dky
    d_ypre = ceil_to(max(min_trap_duration(post_x, soft), min_trap_duration(y_pre, soft), rb), rb)
    readout_to_centre = d_xpre + train.ref_duration() + d_ypre + train.centre_time()
    spoil_z = 4.0 / thk
    tail_y = (n - 1 - n // 2) * train.dky  # ky after the last line
    d_spoil = ceil_to(max(min_trap_duration(spoil_z, soft), min_trap_duration(tail_y, soft), rb), rb)

    encodings: list[tuple[float, tuple[float, float, float]]] = [(0.0, (0.0, 0.0, 0.0))]
    if not dwi:
        d_reph = ceil_to(min_trap_duration(exc.rephase_area, soft), rb)
        te_min = (exc.duration - exc.t_center) + d_reph + readout_to_centre
        # the EPI centre sample may sit between block-raster points: play the pulse a little later so
        # that TE is exact (a shift on the RF raster, within one gradient raster step)
        frac = (p["TE"] - te_min) % rb
        shift = (rb - frac) % rb
        if shift > _EPS and is_multiple(shift, system.rf_raster_time) and not is_multiple(frac, rb):
            exc = slice_excitation(system, p["flip_angle"], p["rf_duration"], *rf_args, center_shift=shift)
            d_reph = ceil_to(min_trap_duration(exc.rephase_area, soft), rb)
            te_min = (exc.duration - exc.t_center) + d_reph + readout_to_centre
        te_fill = p["TE"] - te_min
        te_delay = delay_block(te_fill, system, "TE", p["TE"], te_min)
        te_actual = te_min + (round_to(te_fill, rb) if te_delay else 0.0)
        module = exc.duration + d_reph + (te_actual - te_min) + (readout_to_centre - train.centre_time())
        module += train.n_lines * train.d_line + (train.n_lines - 1) * train.d_blip + d_spoil
    else:
        ref = slice_excitation(
            system, p["refocusing_flip_angle"], p["refocusing_rf_duration"], *rf_args, use="refocusing"
        )
        crush = p["crusher_cycles"] / thk
        d_crush = ceil_to(
            max(min_trap_duration(crush, soft), min_trap_duration(exc.rephase_area + crush, soft)), rb
        )
        dirs = _directions(p)
        b_values = [float(b) for b in p["b_values"]]
        if min(b_values) < 0:
            raise ProtocolError(f"b_values = {p['b_values']!r} must not be negative.")
        # diffusion gradient vector amplitude: every axis component within max_grad for any unit direction
        g_max = system.max_grad_hz * p["diffusion_gradient_fraction"]
        eps = max(system.grad_raster_time, ceil_to(g_max / soft.max_slew_hz, system.grad_raster_time))
        b_max = max(b_values)
        flat = 0.0
        while True:
            d_diff = ceil_to(2 * eps + flat, rb)
            delta = flat + eps
            Delta = d_diff + d_crush + ref.duration + d_crush
            if b_max == 0 or trapezoid_b_value(g_max, delta, Delta, eps) >= b_max:
                break
            flat += system.grad_raster_time
            if flat > 0.2:
                raise ProtocolError(
                    f"b_values: b = {b_max * 1e-6:g} s/mm^2 needs diffusion lobes over 200 ms."
                )
        d_diff = ceil_to(2 * eps + flat, rb) if b_max > 0 else 0.0
        first_min = (exc.duration - exc.t_center) + d_diff + d_crush + ref.t_center
        second_min = (ref.duration - ref.t_center) + d_crush + d_diff + readout_to_centre
        half = round_to(p["TE"] / 2, rb)
        need = max(first_min, second_min)
        if half < need - _EPS:
            raise ProtocolError(
                f"TE = {p['TE'] * 1e3:.3f} ms is below the minimum of {2 * need * 1e3:.3f} ms that system "
                f"{system.name} allows for b = {b_max * 1e-6:g} s/mm^2 with these settings."
            )
        # delays on the block raster; the k-space centre may then sit a fraction of a raster off the
        # spin echo (EPI centre sample not on the raster), which TE reports exactly
        c, e = round_to(half - first_min, rb), round_to(half - second_min, rb)
        te_actual = half + second_min + e
        module = exc.duration + c + 2 * d_diff + 2 * d_crush + ref.duration + e + readout_to_centre
        module += (
            -train.centre_time() + train.n_lines * train.d_line + (train.n_lines - 1) * train.d_blip + d_spoil
        )
        encodings = []
        for b in b_values:
            if b == 0:
                encodings.append((0.0, (0.0, 0.0, 0.0)))
            else:
                encodings.extend((b, d) for d in dirs)
    slices = interleaved_order(p["n_slices"])
    z_pos = slice_positions(p["n_slices"], thk, p["slice_gap"])
    tr_used = module * len(slices)
    tr_delay = delay_block(p["TR"] - tr_used, system, "TR", p["TR"], tr_used)
    tr_actual = tr_used + (round_to(p["TR"] - tr_used, rb) if tr_delay else 0.0)

    seq = pp.Sequence(system=system.to_opts())
    seq.add_block(*noise_prescan(system, n_samples, dwell))
    n_exc = 0

    def delay(d: float):
        return [pp.make_delay(round_to(d, rb))] if d > _EPS else []

    def diffusion_block(b: float, direction: tuple[float, float, float]):
        if d_diff == 0:
            return []
        if b == 0:
            return [pp.make_delay(d_diff)]
        g = g_max * math.sqrt(b / b_max)
        grads = []
        for axis, comp in zip("xyz", direction, strict=True):
            if abs(comp) > 1e-9:
                grads.append(
                    pp.make_trapezoid(
                        axis, amplitude=g * comp, flat_time=flat, rise_time=eps, system=system.to_opts()
                    )
                )
        return [*grads, pp.make_delay(d_diff)]

    def module_blocks(slc: int, counters: dict[str, int] | None, b: float, direction) -> None:
        nonlocal n_exc
        freq = exc.grad.amplitude * z_pos[slc]
        phase = rf_spoil_phase(n_exc, p["rf_spoiling_increment"]) if not dwi else 0.0
        n_exc += 1
        seq.add_block(place_rf(exc, freq, phase), exc.grad, pp.make_delay(exc.duration))
        if not dwi:
            seq.add_block(trap_with_duration("z", exc.rephase_area, d_reph, soft))
            if te_delay is not None:
                seq.add_block(te_delay)
        else:
            for d in delay(c):
                seq.add_block(d)
            seq.add_block(*diffusion_block(b, direction))
            seq.add_block(trap_with_duration("z", exc.rephase_area + crush, d_crush, soft))
            seq.add_block(
                place_rf(ref, ref.grad.amplitude * z_pos[slc], math.pi / 2),
                ref.grad,
                pp.make_delay(ref.duration),
            )
            seq.add_block(trap_with_duration("z", crush, d_crush, soft))
            seq.add_block(*diffusion_block(b, direction))
            for d in delay(e):
                seq.add_block(d)
        seq.add_block(trap_with_duration("x", train.pre_area, d_xpre, soft))
        if counters is not None:
            train.add_ref_lines(seq, counters, adc_phase=phase)
        else:
            for r in range(train.n_ref):
                seq.add_block(scaled_trap(train.grad, -1.0 if r % 2 else 1.0), pp.make_delay(train.d_line))
                if r < train.n_ref - 1:
                    seq.add_block(pp.make_delay(train.d_blip))
        pre = [trap_with_duration("y", y_pre, d_ypre, soft)]
        if abs(post_x) > _EPS:
            pre.append(trap_with_duration("x", post_x, d_ypre, soft))
        seq.add_block(*pre)
        train.add_lines(seq, counters, adc_phase=phase)
        seq.add_block(
            trap_with_duration("z", spoil_z, d_spoil, soft),
            trap_with_duration("y", -tail_y, d_spoil, soft),
        )

    for rep in range(p["n_repetitions"]):
        for avg in range(p["n_averages"]):
            for _ in range(p["dummy_scans"]):
                for slc in slices:
                    module_blocks(slc, None, *encodings[0])
                if tr_delay is not None:
                    seq.add_block(tr_delay)
            for set_idx, (b, direction) in enumerate(encodings):
                for slc in slices:
                    module_blocks(slc, {"slc": slc, "avg": avg, "rep": rep, "set_": set_idx}, b, direction)
                if tr_delay is not None:
                    seq.add_block(tr_delay)

    esp = train.echo_spacing
    set_definitions(
        seq, protocol=protocol, system=system, fov_m=(fov, fov, thk), matrix=(n, n, 1),
        readout_oversampling=os, te=te_actual, tr=tr_actual, flip_angle=p["flip_angle"],
        slice_thickness=thk, slice_positions=z_pos, trajectory="epi", EchoSpacing=esp,
    )  # fmt: skip
    if dwi:
        seq.set_definition("BValues", [b * 1e-6 for b, _ in encodings])

    enc = planar_encoding(
        "epi",
        n_samples,
        n,
        fov,
        thk,
        os,
        p,
        {
            "kspace_encoding_step_0": (0, n_samples - 1, n_samples // 2),
            "kspace_encoding_step_1": (0, n - 1, n // 2),
            "set": (0, len(encodings) - 1, 0),
            "segment": (0, max(train.n_ref - 1, 0), 0),
        },
        trajectory_id="unisono.epi_flat_top",
        trajectory_long={"n_ref_lines": train.n_ref, "n_lines": n, "n_samples": n_samples},
        trajectory_double={"dwell_us": dwell * 1e6, "echo_spacing_us": esp * 1e6},
        trajectory_comment=(
            "flat-top sampling, no ramp sampling; REV lines sample kx=(N/2-1-i)dk: flip them onto the "
            "forward "
            "grid; NAV lines at ky=0 before the train are the ghost-correction reference"
        ),
        echo_train_length=n,
    )
    user_double = {"readout_bandwidth_Hz_per_px": 1.0 / (n_samples * dwell)}
    if dwi:
        for i, (b, d) in enumerate(encodings):
            user_double[f"diffusion_bvalue_s_per_mm2_{i}"] = b * 1e-6
            for axis, comp in zip("xyz", d, strict=True):
                user_double[f"diffusion_direction_{i}_{axis}"] = comp
    header = protocol_header(
        protocol, system, [enc], TR=tr_actual, TE=te_actual, flip_angle=p["flip_angle"],
        slice_positions=z_pos, readout_dwell=dwell, echo_spacing=[esp], sequence_type="EPI",
        user_double=user_double,
        user_long={
            "readout_oversampling": os,
            "dummy_scans": p["dummy_scans"],
            "n_diffusion_encodings": len(encodings),
        },
        user_string={"unisono.navigator": "epi-phase-correction"},
    )  # fmt: skip
    params = achieved_params(
        p, te=te_actual, tr=tr_actual, min_tr=tr_used, dwell=dwell, z_pos=z_pos, echo_spacing=esp,
        actual_readout_bandwidth=1.0 / (n_samples * dwell),
        diffusion_encodings=[(b, list(d)) for b, d in encodings],
    )  # fmt: skip
    if dwi:
        params.update(
            diffusion_lobe_flat=flat,
            diffusion_lobe_ramp=eps,
            diffusion_g_max=g_max,
            diffusion_Delta=d_diff + 2 * d_crush + ref.duration,
        )
    return BuiltSequence(seq=seq, header=header, params=params, system=system, protocol=protocol)


def build_epi2d(p: dict[str, Any], system: SystemProfile, protocol: str = "epi2d") -> BuiltSequence:
    """epi2d: single-shot gradient-echo EPI with ghost-correction reference lines."""
    return build(p, system, protocol, "epi2d")


def build_dwi_epi(p: dict[str, Any], system: SystemProfile, protocol: str = "dwi_epi") -> BuiltSequence:
    """dwi_epi: Stejskal-Tanner spin-echo EPI, b-values and directions from the protocol."""
    return build(p, system, protocol, "dwi_epi")
