"""Building blocks shared by the protocol builders.

Everything here works in SI (s, Hz/m for pypulseq gradients, rad) and on the
rasters of one :class:`~sequences.systems.SystemProfile`. The helpers exist so
that every builder times its readouts the same way: the k-space centre sample
lands on the block raster, so TE can be hit exactly on every profile.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace

import pypulseq as pp

from sequences.protocol import ProtocolError
from sequences.systems import SystemProfile

#: counters recon sorts by; every imaging ADC sets all of them explicitly
COUNTERS = ("LIN", "PAR", "SLC", "AVG", "REP", "SET", "ECO", "SEG")
#: flags; every ADC sets them explicitly so that a flag never leaks into the next ADC
FLAGS = ("NAV", "NOISE", "REF", "REV")

_EPS = 1e-9


def ceil_to(x: float, raster: float) -> float:
    """Smallest multiple of ``raster`` >= ``x`` (tolerant to float noise)."""
    return math.ceil(x / raster - 1e-6) * raster


def round_to(x: float, raster: float) -> float:
    """Nearest multiple of ``raster``."""
    return round(x / raster) * raster


def is_multiple(x: float, raster: float) -> bool:
    """Whether ``x`` is an integer multiple of ``raster`` to 1e-6 of a raster step."""
    r = x / raster
    return abs(r - round(r)) < 1e-6


def labels(
    lin: int = 0,
    par: int = 0,
    slc: int = 0,
    avg: int = 0,
    rep: int = 0,
    set_: int = 0,
    eco: int = 0,
    seg: int = 0,
    nav: bool = False,
    noise: bool = False,
    ref: bool = False,
    rev: bool = False,
) -> list[SimpleNamespace]:
    """Label events that set every counter and flag recon sorts by.

    They go into the same block as the ADC: Pulseq applies a block's labels
    before its ADC, so each readout carries its own complete set.
    """
    values = {"LIN": lin, "PAR": par, "SLC": slc, "AVG": avg, "REP": rep, "SET": set_, "ECO": eco, "SEG": seg}
    flags = {"NAV": nav, "NOISE": noise, "REF": ref, "REV": rev}
    out = [pp.make_label(label=k, type="SET", value=int(v)) for k, v in values.items()]
    out += [pp.make_label(label=k, type="SET", value=bool(v)) for k, v in flags.items()]
    return out


def rf_spoil_phase(n: int, increment: float) -> float:
    """RF phase [rad] of the ``n``-th excitation for quadratic RF spoiling.

    phi_n = increment * n (n + 1) / 2: the phase increment itself grows by
    ``increment`` each TR (117 deg gives the classic Zur et al. spoiling).
    """
    return (increment * n * (n + 1) / 2.0) % (2 * math.pi)


def quantised_dwell(
    bandwidth_per_pixel: float,
    n_samples: int,
    dwell_raster: float,
    system: SystemProfile,
) -> float:
    """ADC dwell [s] for a readout of ``n_samples`` (oversampled) samples.

    The readout lasts 1/BW_px whatever the oversampling, so the nominal dwell
    is 1/(BW_px * n_samples). It is rounded to ``dwell_raster`` (a
    protocol parameter, the same on every profile, so every scanner samples at
    the same times). The system must be able to play it: the dwell on its ADC
    raster and half a dwell on its RF raster (the ADC start time is on the RF
    raster and the k-space centre sample sits half a dwell into its interval).
    """
    nominal = 1.0 / (bandwidth_per_pixel * n_samples)
    dwell = max(dwell_raster, round_to(nominal, dwell_raster))
    if not is_multiple(dwell, system.adc_raster_time) or not is_multiple(dwell / 2, system.rf_raster_time):
        raise ProtocolError(
            f"dwell_raster = {dwell_raster * 1e6:g} us gives a dwell of {dwell * 1e6:g} us that system "
            f"{system.name} cannot centre (its ADC raster is {system.adc_raster_time * 1e6:g} us and half a "
            f"dwell must be a multiple of its {system.rf_raster_time * 1e6:g} us RF raster)."
        )
    return dwell


@dataclass(frozen=True)
class Readout:
    """A constant-gradient readout with its ADC, timed so the k-centre sample is on the block raster.

    ``t_center`` [s] is the time from block start to the centre sample (index
    ``n_samples // 2``), ``area_to_center`` [1/m] the gradient area from the
    start of the trapezoid to that sample (the prephaser must cancel it), and
    ``duration`` [s] the block duration including the ADC dead time.
    """

    grad: SimpleNamespace
    adc: SimpleNamespace
    t_center: float
    area_to_center: float
    duration: float
    amplitude: float  # Hz/m
    dwell: float
    n_samples: int


def make_readout(
    system: SystemProfile,
    n_samples: int,
    dwell: float,
    delta_k: float,
    channel: str = "x",
    *,
    field: str = "readout_bandwidth",
) -> Readout:
    """Readout trapezoid + ADC sampling k = (i - n/2) * delta_k, i = 0..n-1.

    ``delta_k`` [1/m] is the sample spacing (1/oversampled FOV). Raises
    :class:`ProtocolError` naming ``field`` when the gradient needed exceeds
    the system's maximum.
    """
    opts = system.to_opts()
    amplitude = delta_k / dwell  # Hz/m
    if amplitude > opts.max_grad * (1 + 1e-9):
        need = amplitude / system.gamma * 1e3
        raise ProtocolError(
            f"{field}: the readout needs {need:.1f} mT/m but system {system.name} allows "
            f"{system.max_grad * 1e3:g} mT/m; lower the bandwidth or enlarge the FOV."
        )
    rise = max(system.grad_raster_time, ceil_to(amplitude / opts.max_slew, system.grad_raster_time))
    half = (n_samples // 2 + 0.5) * dwell  # ADC start -> centre sample (pypulseq samples mid-dwell)
    t_center = ceil_to(max(rise, system.adc_dead_time) + half, system.block_duration_raster)
    adc_delay = max(t_center - half, system.adc_dead_time)  # equal up to float noise; keeps pypulseq quiet
    flat = ceil_to(adc_delay + n_samples * dwell - rise, system.grad_raster_time)
    grad = pp.make_trapezoid(
        channel=channel, amplitude=amplitude, flat_time=flat, rise_time=rise, system=opts
    )
    adc = pp.make_adc(num_samples=n_samples, dwell=dwell, delay=adc_delay, system=opts)
    area_to_center = amplitude * rise / 2 + amplitude * (t_center - rise)
    duration = ceil_to(
        max(pp.calc_duration(grad), adc_delay + n_samples * dwell + system.adc_dead_time),
        system.block_duration_raster,
    )
    return Readout(grad, adc, t_center, area_to_center, duration, amplitude, dwell, n_samples)


def cartesian_readout_samples(n: int, oversampling: int, system: SystemProfile) -> int:
    """ADC samples of a Cartesian readout of ``n`` pixels at ``oversampling``; checks both fit.

    Raises :class:`ProtocolError` naming ``matrix`` when ``n`` is odd (sample and line N/2 must
    be the k-space centre) or when the sample count is not a multiple of the system's ADC divisor.
    """
    if n % 2:
        raise ProtocolError(f"matrix = {n} must be even so that sample and line N/2 are the k-space centre.")
    n_samples = n * oversampling
    if n_samples % system.adc_samples_divisor:
        raise ProtocolError(
            f"matrix = {n} with readout_oversampling = {oversampling} gives {n_samples} samples; "
            f"system {system.name} needs a multiple of {system.adc_samples_divisor}."
        )
    return n_samples


def slice_passes(
    p: dict, z_pos: list[float], slice_gradient_hz_per_m: float
) -> Iterator[tuple[dict[str, int], float]]:
    """Every pass over the slices, repetitions outermost, then averages, then slices.

    Yields the MRD counters ``{"slc", "avg", "rep"}`` of the pass and the RF frequency offset
    (Hz) that moves the excitation to slice position ``z_pos[slc]`` (m).
    """
    for rep in range(p["n_repetitions"]):
        for avg in range(p["n_averages"]):
            for slc, z in enumerate(z_pos):
                yield {"slc": slc, "avg": avg, "rep": rep}, slice_gradient_hz_per_m * z


def min_trap_duration(area: float, system: SystemProfile) -> float:
    """Shortest trapezoid duration [s] that achieves ``area`` [1/m] on this system."""
    if abs(area) < _EPS:
        return 0.0
    opts = system.to_opts()
    d = ceil_to(
        pp.calc_duration(pp.make_trapezoid(channel="x", area=area, system=opts)), system.grad_raster_time
    )
    # make_trapezoid(area, duration) rounds its ramps differently from make_trapezoid(area): return a
    # duration that the fixed-duration form (trap_with_duration) accepts too
    for _ in range(1000):
        try:
            pp.make_trapezoid(channel="x", area=area, duration=d, system=opts)
            return d
        except AssertionError:
            d += system.grad_raster_time
    raise ProtocolError(f"a gradient of area {area:.4g} 1/m does not fit the limits of system {system.name}.")


def trap_with_duration(channel: str, area: float, duration: float, system: SystemProfile) -> SimpleNamespace:
    """Trapezoid of ``area`` [1/m] stretched to exactly ``duration`` [s] (shared-timing blocks)."""
    return pp.make_trapezoid(channel=channel, area=area, duration=duration, system=system.to_opts())


#: fewest samples in the noise prescan: the coil noise covariance estimated from N samples has
#: a relative error of about 1/sqrt(N) per coil, which prewhitening turns into a smooth gain
#: of the root-sum-of-squares image that differs from scan to scan (128 samples: p5-p95 of
#: the rescan ratio 0.89-1.09 in the simulator; 2048: 0.95-1.05); 2048 x 32 us is 66 ms
NOISE_PRESCAN_MIN_SAMPLES = 2048


def noise_prescan(system: SystemProfile, n_samples: int, dwell: float) -> list[SimpleNamespace]:
    """Events of the noise prescan block: an ADC with no RF and no gradients, labelled NOISE.

    Recon estimates the receiver noise covariance from it (prewhitening). It samples at the
    imaging ``dwell`` (no bandwidth correction needed) and at least
    :data:`NOISE_PRESCAN_MIN_SAMPLES` samples (``n_samples`` rounded up to a multiple of the
    system's ADC sample divisor otherwise).
    """
    div = system.adc_samples_divisor
    n_samples = -(-max(n_samples, NOISE_PRESCAN_MIN_SAMPLES) // div) * div
    opts = system.to_opts()
    delay = max(ceil_to(system.adc_dead_time, system.rf_raster_time), system.adc_dead_time)
    adc = pp.make_adc(num_samples=n_samples, dwell=dwell, delay=delay, system=opts)
    duration = ceil_to(delay + n_samples * dwell + system.adc_dead_time, system.block_duration_raster)
    return [adc, pp.make_delay(duration), *labels(noise=True)]


def rf_center_time(rf: SimpleNamespace) -> float:
    """Time [s] from the start of the RF's block to the pulse's effective centre."""
    center, _ = pp.calc_rf_center(rf)
    return rf.delay + center


def delay_block(duration: float, system: SystemProfile, field: str, value: float, minimum: float):
    """A delay event of ``duration`` [s], or a ProtocolError if it is negative.

    ``field``/``value``/``minimum`` name the protocol parameter that pays for
    the delay, its requested value and the minimum the hardware allows [s].
    """
    if duration < -_EPS:
        raise ProtocolError(
            f"{field} = {value * 1e3:.3f} ms is below the minimum of {minimum * 1e3:.3f} ms that system "
            f"{system.name} allows with these settings."
        )
    return (
        pp.make_delay(round_to(max(duration, 0.0), system.block_duration_raster)) if duration > _EPS else None
    )


@dataclass(frozen=True)
class SliceExcitation:
    """A slice-selective sinc pulse with its gradient, timed within one block.

    ``t_center`` [s]: block start to the pulse centre; ``duration`` [s]: block
    duration including RF dead/ringdown time; ``rephase_area`` [1/m]: the
    slice-axis area still to apply after the block to refocus the slice.
    """

    rf: SimpleNamespace
    grad: SimpleNamespace
    t_center: float
    duration: float
    rephase_area: float


def slice_excitation(
    system: SystemProfile,
    flip_angle: float,
    duration: float,
    time_bw: float,
    apodization: float,
    dwell: float,
    thickness: float,
    use: str = "excitation",
    phase_offset: float = 0.0,
    center_shift: float = 0.0,
) -> SliceExcitation:
    """Sinc pulse (``flip_angle`` rad, ``duration`` s, RF sample ``dwell`` s) selecting ``thickness`` m.

    ``center_shift`` [s, a multiple of the RF raster] plays the pulse that much
    later within a flat top lengthened to the next gradient raster step.

    Raises :class:`ProtocolError` naming ``rf_dwell``, ``rf_duration`` or
    ``slice_thickness`` when the hardware cannot play it.
    """
    if not is_multiple(dwell, system.rf_raster_time):
        raise ProtocolError(
            f"rf_dwell = {dwell * 1e6:g} us is not a multiple of the {system.rf_raster_time * 1e6:g} us RF "
            f"raster of system {system.name}."
        )
    if not is_multiple(duration, dwell) or not is_multiple(duration / 2, system.block_duration_raster):
        raise ProtocolError(
            f"rf_duration = {duration * 1e3:g} ms must be a multiple of rf_dwell ({dwell * 1e6:g} us) "
            f"and twice "
            f"the {system.block_duration_raster * 1e6:g} us block raster of system {system.name}."
        )
    bandwidth = time_bw / duration
    g_needed = bandwidth / thickness
    if g_needed > system.max_grad_hz:
        min_thk = bandwidth / system.max_grad_hz
        raise ProtocolError(
            f"slice_thickness = {thickness * 1e3:g} mm needs {g_needed / system.gamma * 1e3:.1f} mT/m; "
            f"system "
            f"{system.name} allows {system.max_grad * 1e3:g} mT/m, i.e. at least {min_thk * 1e3:.2f} mm with "
            f"this pulse (or lengthen rf_duration)."
        )
    opts = system.to_opts()
    rf, gz, gzr = pp.make_sinc_pulse(
        flip_angle=flip_angle,
        duration=duration,
        slice_thickness=thickness,
        apodization=apodization,
        time_bw_product=time_bw,
        dwell=dwell,
        phase_offset=phase_offset,
        system=opts,
        return_gz=True,
        use=use,
        delay=system.rf_dead_time,
    )
    rephase = gzr.area
    if center_shift > 0:
        # play the pulse ``center_shift`` later on a flat top lengthened to match: moves the pulse centre
        # by less than a gradient raster step (used to put an EPI echo exactly at TE)
        extra = ceil_to(center_shift, system.grad_raster_time)
        gz.flat_time += extra
        gz.flat_area = gz.amplitude * gz.flat_time
        gz.area = gz.amplitude * (gz.flat_time + (gz.rise_time + gz.fall_time) / 2)
        rf.delay += center_shift
        t_c = rf_center_time(rf)
        rephase = -(
            gz.amplitude * (gz.delay + gz.rise_time + gz.flat_time - t_c) + gz.amplitude * gz.fall_time / 2
        )
    block = ceil_to(pp.calc_duration(rf, gz), system.block_duration_raster)
    return SliceExcitation(rf, gz, rf_center_time(rf), block, rephase)


def place_rf(exc: SliceExcitation, freq_offset: float, phase: float) -> SimpleNamespace:
    """A copy of ``exc.rf`` moved to a slice (``freq_offset`` Hz) with phase ``phase`` rad at its centre.

    A frequency offset winds the phase along the pulse; subtracting
    2 pi f t_centre keeps the phase at the pulse centre equal to ``phase``,
    which is what RF spoiling and the ADC phase assume.
    """
    rf = copy.copy(exc.rf)
    rf.freq_offset = freq_offset
    center, _ = pp.calc_rf_center(exc.rf)
    rf.phase_offset = (phase - 2 * math.pi * freq_offset * center) % (2 * math.pi)
    return rf


def scaled_trap(grad: SimpleNamespace, scale: float, channel: str | None = None) -> SimpleNamespace:
    """Copy of a trapezoid scaled by ``scale`` (areas too), optionally moved to another ``channel``.

    pypulseq's ``scale_grad`` leaves ``area`` unscaled; builders that rotate
    readouts (radial, navigators) need consistent areas.
    """
    g = copy.copy(grad)
    g.amplitude = grad.amplitude * scale
    g.area = grad.area * scale
    g.flat_area = grad.flat_area * scale
    if channel is not None:
        g.channel = channel
    return g


def set_definitions(
    seq: pp.Sequence,
    *,
    protocol: str,
    system: SystemProfile,
    fov_m: tuple[float, float, float],
    matrix: tuple[int, int, int],
    readout_oversampling: int,
    te: float,
    tr: float,
    flip_angle: float,
    slice_thickness: float,
    slice_positions,
    trajectory: str,
    **extra: object,
) -> None:
    """Write the Pulseq definitions every unisono sequence carries (SI units, angles in degrees).

    Readers (``unisono sequence info``, the simulator's header fallback, other Pulseq tools)
    rely on them. ``extra`` adds protocol-specific ones (``TI``, ``EchoSpacing``, ...).
    """
    seq.set_definition("Name", protocol)
    seq.set_definition("FOV", list(fov_m))
    seq.set_definition("Matrix", list(matrix))
    seq.set_definition("ReadoutOversamplingFactor", readout_oversampling)
    seq.set_definition("TE", te)
    seq.set_definition("TR", tr)
    seq.set_definition("FlipAngle", math.degrees(flip_angle))
    seq.set_definition("SliceThickness", slice_thickness)
    seq.set_definition("SlicePositions", [float(z) for z in slice_positions])
    seq.set_definition("TrajectoryType", trajectory)
    seq.set_definition("B0", system.B0)
    seq.set_definition("System", system.name)
    for key, value in extra.items():
        seq.set_definition(key, value)
