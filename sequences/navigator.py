"""Motion navigator module that gradient-echo protocols can interleave.

Every ``navigator_every`` imaging TRs the protocol plays one navigator: for
each in-plane axis (x, then y) a small-flip excitation of the current slice and
a fully sampled readout through the k-space centre along that axis, with no
phase encoding. The Fourier transform of each readout is a projection of the
slice onto that axis, whose shift gives the translation along it; recon
estimates motion from them and the scanner corrects the next TRs.

Labels: every navigator ADC carries ``NAV = 1`` and ``SEG`` = axis index
(0 = readout/x, 1 = phase/y), with LIN/PAR = 0 and the current SLC/AVG/REP;
the MRD header says ``unisono.navigator = "projection-xy"`` and how often.

The **orbital** navigator (``navigator_type = "orbital"``; Fu et al., MRM 1995) reads one
circle of radius ``k_r`` (:data:`ORBIT_RADIUS`) around the k-space centre after a small-flip excitation of the
slice: an in-plane rotation of the head turns the circle's magnitude profile by the same
angle, and a translation t adds the phase -2 pi k.t, so one readout gives tx, ty *and* rz.
Its ADC carries ``NAV = 1``, ``SEG = 0``; the header says
``unisono.navigator = "orbital"`` with the radius in ``navigator_orbital_radius_per_m``;
sample j of N sits at angle 2 pi (j + 1/2) / N from +kx.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pypulseq as pp

from sequences.blocks import (
    Readout,
    SliceExcitation,
    ceil_to,
    labels,
    min_trap_duration,
    place_rf,
    scaled_trap,
    slice_excitation,
    trap_with_duration,
)
from sequences.protocol import ProtocolError
from sequences.systems import SystemProfile

AXES = ("x", "y")


@dataclass(frozen=True)
class Navigator:
    """A built navigator: excitation, readout, shared pre/spoil timing. Durations in s."""

    exc: SliceExcitation
    readout: Readout
    pre_duration: float
    spoil_duration: float
    spoil_z: float
    system: SystemProfile

    #: readouts per navigator, labelled SEG 0.. (projection axis: 0 = x, 1 = y)
    n_segments = len(AXES)
    #: the navigator's name in the MRD header (userParameterString "unisono.navigator")
    header_tag = "projection-xy"

    def header_doubles(self) -> dict[str, float]:
        """What the MRD header's userParameterDouble records about this navigator."""
        return {}

    @property
    def duration(self) -> float:
        """Total time one navigator (both axes) adds to the sequence [s]."""
        per_axis = self.exc.duration + self.pre_duration + self.readout.duration + self.spoil_duration
        return len(AXES) * per_axis

    def add_to(self, seq: pp.Sequence, freq_offset: float, counters: dict[str, int]) -> None:
        """Append the navigator blocks for the slice at ``freq_offset`` [Hz] with SLC/AVG/REP ``counters``."""
        ro = self.readout
        for axis_index, axis in enumerate(AXES):
            seq.add_block(
                place_rf(self.exc, freq_offset, 0.0), self.exc.grad, pp.make_delay(self.exc.duration)
            )
            pre = trap_with_duration(axis, -ro.area_to_center, self.pre_duration, self.system)
            reph = trap_with_duration("z", self.exc.rephase_area, self.pre_duration, self.system)
            seq.add_block(pre, reph)
            grad = scaled_trap(ro.grad, 1.0, channel=axis)
            lab = labels(nav=True, seg=axis_index, **counters)
            seq.add_block(grad, ro.adc, pp.make_delay(ro.duration), *lab)
            tail = ro.grad.area - ro.area_to_center
            rew = trap_with_duration(axis, -tail, self.spoil_duration, self.system)
            spoil = trap_with_duration("z", self.spoil_z, self.spoil_duration, self.system)
            seq.add_block(rew, spoil)


def make_navigator(
    system: SystemProfile,
    readout: Readout,
    flip_angle: float,
    rf_duration: float,
    rf_time_bw: float,
    rf_dwell: float,
    thickness: float,
) -> Navigator:
    """Navigator sharing the imaging ``readout`` (same samples, dwell, k-space spacing) on ``system``.

    ``flip_angle`` [rad] is kept small (a few degrees) so the navigator
    barely disturbs the imaging steady state; the in-plane k-space moment is
    rewound after each projection and the slice axis spoiled.
    """
    exc = slice_excitation(system, flip_angle, rf_duration, rf_time_bw, 0.5, rf_dwell, thickness)
    pre = ceil_to(
        max(min_trap_duration(readout.area_to_center, system), min_trap_duration(exc.rephase_area, system)),
        system.block_duration_raster,
    )
    tail = readout.grad.area - readout.area_to_center
    spoil_z = 4.0 / thickness
    spoil = ceil_to(
        max(min_trap_duration(tail, system), min_trap_duration(spoil_z, system)),
        system.block_duration_raster,
    )
    return Navigator(exc, readout, pre, spoil, spoil_z, system)


#: k radius of the orbit (1/m): a 16.7 mm wavelength, the same for every imaging matrix. The
#: receive coils do not turn with the head, and their sensitivity blurs k-space over a few
#: 1/m, which pulls the estimated turn towards zero on small orbits: a 3 deg turn read as
#: 2.5 deg at 40 /m, 3.07 at 60 and 3.2 at 80 (noisier) in the simulator.
ORBIT_RADIUS = 60.0
#: samples on the orbit and their dwell: 128 x 10 us, one full turn in 1.28 ms
ORBIT_SAMPLES = 128
ORBIT_DWELL = 10e-6


@dataclass(frozen=True)
class OrbitalNavigator:
    """A built orbital navigator: excitation, prephaser, circular readout and rewinder.

    The gradient and ADC events are built once (:func:`make_orbital_navigator`) and played
    by every :meth:`add_to`; ``radius`` is the orbit's k radius (1/m), durations in s.
    """

    exc: SliceExcitation
    prephaser: tuple[SimpleNamespace, ...]
    orbit: tuple[SimpleNamespace, ...]  # gx, gy and the ADC
    rewinder: tuple[SimpleNamespace, ...]
    radius: float
    pre_duration: float
    readout_duration: float
    spoil_duration: float

    n_segments = 1
    header_tag = "orbital"

    def header_doubles(self) -> dict[str, float]:
        """What the MRD header's userParameterDouble records about this navigator."""
        return {"navigator_orbital_radius_per_m": self.radius}

    @property
    def duration(self) -> float:
        """Total time one navigator adds to the sequence [s]."""
        return self.exc.duration + self.pre_duration + self.readout_duration + self.spoil_duration

    def add_to(self, seq: pp.Sequence, freq_offset: float, counters: dict[str, int]) -> None:
        """Append the navigator blocks for the slice at ``freq_offset`` [Hz] with SLC/AVG/REP ``counters``."""
        seq.add_block(place_rf(self.exc, freq_offset, 0.0), self.exc.grad, pp.make_delay(self.exc.duration))
        seq.add_block(*self.prephaser, pp.make_delay(self.pre_duration))
        lab = labels(nav=True, seg=0, **counters)
        seq.add_block(*self.orbit, pp.make_delay(self.readout_duration), *lab)
        seq.add_block(*self.rewinder, pp.make_delay(self.spoil_duration))


def _in_plane_traps(z_area: float, area: complex, duration: float, system: SystemProfile) -> tuple:
    """A z trapezoid and the x, y trapezoids of ``area`` (x + i y, 1/m) that are not empty."""
    traps = [trap_with_duration("z", z_area, duration, system)]
    for axis, a in (("x", area.real), ("y", area.imag)):
        if abs(a) > 1e-9:
            traps.append(trap_with_duration(axis, a, duration, system))
    return tuple(traps)


def make_orbital_navigator(
    system: SystemProfile,
    radius: float,
    flip_angle: float,
    rf_duration: float,
    rf_time_bw: float,
    rf_dwell: float,
    thickness: float,
) -> OrbitalNavigator:
    """Orbital navigator of k radius ``radius`` [1/m] on ``system`` (see the module docstring).

    The gradient turns at the constant rate of one orbit per ``ORBIT_SAMPLES * ORBIT_DWELL``;
    its amplitude ramps in and out linearly (at most half the system's slew) while it keeps
    turning, and the prephaser puts k on the orbit's angle 0 when the ADC starts.
    """
    exc = slice_excitation(system, flip_angle, rf_duration, rf_time_bw, 0.5, rf_dwell, thickness)
    raster = system.grad_raster_time
    period = ORBIT_SAMPLES * ORBIT_DWELL
    omega = 2 * math.pi / period
    amp = radius * omega  # Hz/m on the orbit
    turn_slew = amp * omega  # Hz/m/s spent on turning at full amplitude
    if amp > system.max_grad_hz or turn_slew > 0.5 * system.max_slew_hz:
        raise ProtocolError(
            f"the orbital navigator (radius {radius:.4g} 1/m in {period * 1e3:g} ms) needs "
            f"{amp / system.gamma * 1e3:.3g} mT/m and {turn_slew / system.gamma:.3g} T/m/s; "
            f"system {system.name} allows {system.max_grad * 1e3:g} mT/m and, for turning (half the "
            f"slew rate), {0.5 * system.max_slew:g} T/m/s"
        )
    ramp = ceil_to(max(amp / (0.5 * system.max_slew_hz), system.adc_dead_time, 2 * raster), raster)
    total = ramp + period + ramp
    knots = np.round(np.arange(0.0, total + raster / 2, raster) / raster) * raster
    envelope = np.clip(np.minimum(knots / ramp, (total - knots) / ramp), 0.0, 1.0)
    g = 1j * amp * np.exp(1j * omega * (knots - ramp)) * envelope
    g[0] = g[-1] = 0.0
    # k along the piecewise-linear waveform (trapezoidal rule is exact for it)
    k = np.concatenate([[0.0], np.cumsum((g[1:] + g[:-1]) / 2 * raster)])
    i_start = int(round(ramp / raster))
    pre_area = radius - k[i_start]
    rewind_area = -(pre_area + k[-1])
    pre = ceil_to(
        max(
            min_trap_duration(abs(pre_area.real), system),
            min_trap_duration(abs(pre_area.imag), system),
            min_trap_duration(exc.rephase_area, system),
        ),
        system.block_duration_raster,
    )
    spoil_z = 4.0 / thickness
    spoil = ceil_to(
        max(
            min_trap_duration(abs(rewind_area.real), system),
            min_trap_duration(abs(rewind_area.imag), system),
            min_trap_duration(spoil_z, system),
        ),
        system.block_duration_raster,
    )
    readout = ceil_to(total + system.adc_dead_time, system.block_duration_raster)
    opts = system.to_opts()
    orbit = (
        pp.make_extended_trapezoid("x", amplitudes=g.real, times=knots, system=opts),
        pp.make_extended_trapezoid("y", amplitudes=g.imag, times=knots, system=opts),
        pp.make_adc(num_samples=ORBIT_SAMPLES, dwell=ORBIT_DWELL, delay=ramp, system=opts),
    )
    return OrbitalNavigator(
        exc,
        _in_plane_traps(exc.rephase_area, complex(pre_area), pre, system),
        orbit,
        _in_plane_traps(spoil_z, complex(rewind_area), spoil, system),
        radius,
        pre,
        readout,
        spoil,
    )
