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
"""

from __future__ import annotations

from dataclasses import dataclass

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
