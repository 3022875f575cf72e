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

    def add_to(
        self, seq: pp.Sequence, freq_offset: float, counters: dict[str, int], acquire: bool = True
    ) -> None:
        """Append the navigator blocks for the slice at ``freq_offset`` [Hz] with SLC/AVG/REP ``counters``;
        ``acquire=False`` plays it without ADC (during the dummy TRs)."""
        ro = self.readout
        for axis_index, axis in enumerate(AXES):
            seq.add_block(
                place_rf(self.exc, freq_offset, 0.0), self.exc.grad, pp.make_delay(self.exc.duration)
            )
            pre = trap_with_duration(axis, -ro.area_to_center, self.pre_duration, self.system)
            reph = trap_with_duration("z", self.exc.rephase_area, self.pre_duration, self.system)
            seq.add_block(pre, reph)
            grad = scaled_trap(ro.grad, 1.0, channel=axis)
            if acquire:
                lab = labels(nav=True, seg=axis_index, **counters)
                seq.add_block(grad, ro.adc, pp.make_delay(ro.duration), *lab)
            else:
                seq.add_block(grad, pp.make_delay(ro.duration))
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
#: the in-plane orbit: (first, second) gradient axis; the orbit turns from the first towards the
#: second, so its magnitude profile turns with a rotation about the third axis
IN_PLANE = (("x", "y"),)
#: the three-plane navigator's orbits, SEG 0, 1, 2 (Ward et al., MRM 2000): x->y sees rz,
#: y->z sees rx, z->x sees ry (right-handed), and each plane two of the translations
THREE_PLANES = (("x", "y"), ("y", "z"), ("z", "x"))
#: default k radius (1/m) of the three-plane navigator's yz and zx orbits (protocol parameter
#: ``navigator_through_plane_radius``). Along z these orbits see the head's profile together with
#: the imaged slice's band, which the imaging pulses keep saturated in the scanner's frame and
#: which does not move with the head. A band of width w and contrast d adds ~ w d sinc(k w) to the
#: orbit's signal, the head (extent L) ~ L sinc(k L): the lower k, the smaller the band's share,
#: and once k L nears 1 the band dominates and the through-plane estimate takes the band's sign
#: (on the simulator's 15 mm phantom, band fixed: tz -1.27 mm for +1 at 60 /m, +1.46 at 30 /m).
THROUGH_PLANE_RADIUS = 30.0
#: the three-plane navigator's non-selective hard pulse (s): 10 deg needs ~3.3 uT
HARD_PULSE_DURATION = 0.2e-3


@dataclass(frozen=True)
class Orbit:
    """One circular readout in the plane of ``axes``: prephaser (k from the centre to the orbit's
    angle 0), the turning gradients with the ADC, and the rewinder back to the centre (with the
    navigator's slice-axis spoiler after the last orbit). Durations in s."""

    axes: tuple[str, str]
    prephaser: tuple[SimpleNamespace, ...]
    orbit: tuple[SimpleNamespace, ...]  # the two turning gradients and the ADC
    rewinder: tuple[SimpleNamespace, ...]
    pre_duration: float
    readout_duration: float
    rewind_duration: float

    @property
    def duration(self) -> float:
        return self.pre_duration + self.readout_duration + self.rewind_duration


@dataclass(frozen=True)
class OrbitalNavigator:
    """A built orbital navigator: one excitation, then one :class:`Orbit` per plane (SEG 0, 1, ...).

    In-plane (``planes`` = :data:`IN_PLANE`): a small-flip excitation of the current slice and
    one orbit in the slice plane (tx, ty, rz). Three-plane (:data:`THREE_PLANES`): a
    non-selective hard pulse, so that the orbits outside the slice plane see the head's extent
    along z, then three orthogonal orbits (all six rigid parameters). The events are built once
    (:func:`make_orbital_navigator`) and played by every :meth:`add_to`; ``radii`` are the
    orbits' k radii (1/m, one per orbit), durations in s.
    """

    exc: SliceExcitation | None  # the slice-selective excitation, or
    hard_pulse: SimpleNamespace | None  # the non-selective one
    exc_duration: float
    orbits: tuple[Orbit, ...]
    radii: tuple[float, ...]

    @property
    def n_segments(self) -> int:
        """Readouts per navigator, labelled SEG 0.. in the order of the planes."""
        return len(self.orbits)

    @property
    def header_tag(self) -> str:
        """The navigator's name in the MRD header (userParameterString "unisono.navigator")."""
        return "orbital" if len(self.orbits) == 1 else "orbital-3plane"

    def header_doubles(self) -> dict[str, float]:
        """What the MRD header's userParameterDouble records about this navigator."""
        doubles = {"navigator_orbital_radius_per_m": self.radii[0]}
        if len(self.radii) > 1:
            doubles["navigator_orbital_through_plane_radius_per_m"] = self.radii[1]
        return doubles

    @property
    def duration(self) -> float:
        """Total time one navigator adds to the sequence [s]."""
        return self.exc_duration + sum(o.duration for o in self.orbits)

    def add_to(
        self, seq: pp.Sequence, freq_offset: float, counters: dict[str, int], acquire: bool = True
    ) -> None:
        """Append the navigator blocks for the slice at ``freq_offset`` [Hz] with SLC/AVG/REP ``counters``
        (a non-selective excitation ignores the slice's frequency offset); ``acquire=False`` plays
        it without ADC (during the dummy TRs)."""
        if self.exc is not None:
            seq.add_block(
                place_rf(self.exc, freq_offset, 0.0), self.exc.grad, pp.make_delay(self.exc_duration)
            )
        else:
            seq.add_block(self.hard_pulse, pp.make_delay(self.exc_duration))
        for seg, o in enumerate(self.orbits):
            seq.add_block(*o.prephaser, pp.make_delay(o.pre_duration))
            if acquire:
                seq.add_block(
                    *o.orbit, pp.make_delay(o.readout_duration), *labels(nav=True, seg=seg, **counters)
                )
            else:
                seq.add_block(*o.orbit[:2], pp.make_delay(o.readout_duration))
            seq.add_block(*o.rewinder, pp.make_delay(o.rewind_duration))


def _traps(areas: dict[str, float], duration: float, system: SystemProfile) -> tuple:
    """Trapezoids of the given areas (1/m) per axis, all ``duration`` long; empty ones left out."""
    return tuple(trap_with_duration(axis, a, duration, system) for axis, a in areas.items() if abs(a) > 1e-9)


def _shortest(areas: dict[str, float], system: SystemProfile) -> float:
    """Shortest common duration (block raster) of trapezoids with these areas."""
    return ceil_to(
        max([min_trap_duration(abs(a), system) for a in areas.values()] + [system.block_duration_raster]),
        system.block_duration_raster,
    )


def _orbit_waveform(system: SystemProfile, radius: float) -> tuple[np.ndarray, np.ndarray, float]:
    """(``knots`` (s) on the gradient raster, the turning gradient there (first + i second axis,
    Hz/m), its ramp time (s), where the ADC starts)."""
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
    return knots, g, ramp


def _orbit(
    system: SystemProfile,
    radius: float,
    axes: tuple[str, str],
    before: dict[str, float],
    after: dict[str, float],
) -> Orbit:
    """One orbit in the plane of ``axes``; ``before``/``after``: extra areas (1/m) per axis played
    with the prephaser (slice rephasing) and the rewinder (spoiling)."""
    knots, g, ramp = _orbit_waveform(system, radius)
    raster = system.grad_raster_time
    # k along the piecewise-linear waveform (trapezoidal rule is exact for it)
    k = np.concatenate([[0.0], np.cumsum((g[1:] + g[:-1]) / 2 * raster)])
    pre_area = radius - k[int(round(ramp / raster))]
    rewind_area = -(pre_area + k[-1])
    a, b = axes

    def areas(extra: dict[str, float], area: complex) -> dict[str, float]:
        out = dict(extra)
        out[a] = out.get(a, 0.0) + float(area.real)
        out[b] = out.get(b, 0.0) + float(area.imag)
        return out

    pre, rew = areas(before, complex(pre_area)), areas(after, complex(rewind_area))
    pre_d, rew_d = _shortest(pre, system), _shortest(rew, system)
    opts = system.to_opts()
    orbit = (
        pp.make_extended_trapezoid(a, amplitudes=g.real, times=knots, system=opts),
        pp.make_extended_trapezoid(b, amplitudes=g.imag, times=knots, system=opts),
        pp.make_adc(num_samples=ORBIT_SAMPLES, dwell=ORBIT_DWELL, delay=ramp, system=opts),
    )
    readout = ceil_to(float(knots[-1]) + system.adc_dead_time, system.block_duration_raster)
    return Orbit(axes, _traps(pre, pre_d, system), orbit, _traps(rew, rew_d, system), pre_d, readout, rew_d)


def make_orbital_navigator(
    system: SystemProfile,
    radius: float,
    flip_angle: float,
    rf_duration: float,
    rf_time_bw: float,
    rf_dwell: float,
    thickness: float,
    planes: tuple[tuple[str, str], ...] = IN_PLANE,
    through_plane_radius: float = THROUGH_PLANE_RADIUS,
) -> OrbitalNavigator:
    """Orbital navigator of k radius ``radius`` [1/m] on ``system`` (see the module docstring).

    ``planes``: :data:`IN_PLANE` (slice-selective excitation with the imaging pulse's shape) or
    :data:`THREE_PLANES` (non-selective hard pulse of :data:`HARD_PULSE_DURATION`; the yz and zx
    orbits at ``through_plane_radius`` [1/m], see :data:`THROUGH_PLANE_RADIUS`). Each orbit's
    gradient turns at the constant rate of one orbit per ``ORBIT_SAMPLES * ORBIT_DWELL``; its
    amplitude ramps in and out linearly (at most half the system's slew) while it keeps turning,
    and the prephaser puts k on the orbit's angle 0 when the ADC starts. The slice axis is
    spoiled (4 cycles across ``thickness``) after the last orbit.
    """
    if planes not in (IN_PLANE, THREE_PLANES):
        raise ValueError(f"orbital navigator planes must be {IN_PLANE} or {THREE_PLANES}, got {planes!r}")
    exc, hard = None, None
    if planes == IN_PLANE:
        exc = slice_excitation(system, flip_angle, rf_duration, rf_time_bw, 0.5, rf_dwell, thickness)
        duration, rephase = exc.duration, exc.rephase_area
    else:
        n = max(1, int(round(HARD_PULSE_DURATION / rf_dwell)))
        hard = pp.make_arbitrary_rf(
            signal=np.ones(n), flip_angle=flip_angle, dwell=rf_dwell, delay=system.rf_dead_time,
            system=system.to_opts(), use="excitation",
        )  # fmt: skip
        duration = ceil_to(pp.calc_duration(hard) + system.rf_ringdown_time, system.block_duration_raster)
        rephase = 0.0
    spoil = {"z": 4.0 / thickness}
    radii = tuple(radius if "z" not in axes else through_plane_radius for axes in planes)
    orbits = tuple(
        _orbit(system, r, axes, {"z": rephase} if i == 0 else {}, spoil if i == len(planes) - 1 else {})
        for i, (axes, r) in enumerate(zip(planes, radii, strict=True))
    )
    return OrbitalNavigator(exc, hard, duration, orbits, radii)
