"""Accumulate gadget: sort Cartesian readouts into k-space buffers and trigger per slice.

Readouts are grouped by (encoding, slice, contrast, phase, repetition, set);
repeated averages of the same line are averaged.  A group is emitted as a
:class:`~gadgets.buffers.KSpaceBuffer` when a readout flagged last-in-slice
(or last-in-repetition / last-in-measurement) arrives, and whatever remains is
emitted when the stream ends, so data without trigger flags still
reconstruct.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import ismrmrd
import numpy as np
import torch

from gadgets.acqtools import header_copy, header_fields
from gadgets.buffers import KSpaceBuffer
from gadgets.encoding import encoding_info

__all__ = ["accumulate", "group_key"]

log = logging.getLogger(__name__)

_SKIP_FLAGS = (
    ismrmrd.ACQ_IS_NOISE_MEASUREMENT,
    ismrmrd.ACQ_IS_NAVIGATION_DATA,
    ismrmrd.ACQ_IS_PHASECORR_DATA,
    ismrmrd.ACQ_IS_HPFEEDBACK_DATA,
    ismrmrd.ACQ_IS_RTFEEDBACK_DATA,
    ismrmrd.ACQ_IS_DUMMYSCAN_DATA,
)


def group_key(acq: ismrmrd.Acquisition) -> tuple[int, ...]:
    """(encoding, slice, contrast, phase, repetition, set) of a readout."""
    h = header_fields(acq)
    i = h.idx
    return (int(h.encoding_space_ref), i.slice, i.contrast, i.phase, i.repetition, i.set)


def _bits(*flags: int) -> int:
    """The bit mask of ISMRMRD acquisition flags (numbered from 1)."""
    return sum(1 << (f - 1) for f in flags)


_SKIP = _bits(*_SKIP_FLAGS)
_CAL = _bits(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION)
_CAL_OR_CAL_IMG = _bits(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION, ismrmrd.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING)
_LAST_IN_SLICE = _bits(ismrmrd.ACQ_LAST_IN_SLICE)
_END_OF_REPETITION = _bits(ismrmrd.ACQ_LAST_IN_REPETITION, ismrmrd.ACQ_LAST_IN_MEASUREMENT)


@dataclass
class _Group:
    """k-space of one group, filled line by line as readouts arrive (numpy: cheap per-line copies).

    Copying each readout into place on arrival keeps the trigger (the last
    readout of a slice) cheap: the image latency does not grow with the number
    of lines.
    """

    ny: int
    nz: int
    off_y: int
    off_z: int
    data: np.ndarray | None = None  # (coil, nz, ny, nx) sums
    count: np.ndarray | None = None  # (nz, ny) how many readouts each line got
    calib: np.ndarray | None = None
    calib_count: np.ndarray | None = None
    reference: ismrmrd.AcquisitionHeader | None = None
    reference_distance: int = 1 << 30

    def _fit(self, ncoil: int, n: int, c: int, nx_min: int) -> None:
        """Make sure a line of n samples with centre c fits (allocate or grow along kx)."""
        need = max(nx_min, n, 2 * max(c, n - c))
        if self.data is None:
            self.data = np.zeros((ncoil, self.nz, self.ny, need), dtype=np.complex64)
            self.count = np.zeros((self.nz, self.ny), dtype=np.int32)
            return
        if self.data.shape[0] != ncoil:
            raise ValueError(f"readouts of one slice have {ncoil} and {self.data.shape[0]} channels")
        nx = self.data.shape[-1]
        if need > nx:
            pad = (need - nx) // 2 + (need - nx) % 2
            new = need if (need - nx) % 2 == 0 else need + 1
            grown = np.zeros(self.data.shape[:-1] + (new,), dtype=np.complex64)
            grown[..., pad : pad + nx] = self.data
            self.data = grown
            if self.calib is not None:
                g2 = np.zeros_like(grown)
                g2[..., pad : pad + nx] = self.calib
                self.calib = g2

    def add(self, ky: int, kz: int, c: int, d: np.ndarray, is_img: bool, is_cal: bool, nx_min: int) -> None:
        y, z = ky + self.off_y, kz + self.off_z
        if not (0 <= y < self.ny and 0 <= z < self.nz):
            raise ValueError(
                f"readout at encoding step ({ky}, {kz}) falls outside the encoded matrix {self.ny}x{self.nz}"
            )
        self._fit(d.shape[0], d.shape[1], c, nx_min)
        assert self.data is not None and self.count is not None
        x0 = self.data.shape[-1] // 2 - c
        if is_img:
            if self.count[z, y]:
                self.data[:, z, y, x0 : x0 + d.shape[1]] += d
            else:
                self.data[:, z, y, x0 : x0 + d.shape[1]] = d
            self.count[z, y] += 1
        if is_cal:
            if self.calib is None:
                self.calib = np.zeros_like(self.data)
                self.calib_count = np.zeros_like(self.count)
            assert self.calib_count is not None
            self.calib[:, z, y, x0 : x0 + d.shape[1]] += d
            self.calib_count[z, y] += 1

    def build(self, device: torch.device, enc_index: int) -> KSpaceBuffer:
        assert self.data is not None and self.count is not None and self.reference is not None
        # average repeated acquisitions of a line (averages); most lines have count 1
        many = self.count > 1
        if many.any():
            self.data[:, many] /= self.count[many].astype(np.float32)[:, None]
        cal = cal_mask = None
        if self.calib is not None and self.calib_count is not None:
            many = self.calib_count > 1
            if many.any():
                self.calib[:, many] /= self.calib_count[many].astype(np.float32)[:, None]
            cal = torch.from_numpy(self.calib).to(device)
            cal_mask = torch.from_numpy(self.calib_count > 0).to(device)
        return KSpaceBuffer(
            data=torch.from_numpy(self.data).to(device),
            sampled=torch.from_numpy(self.count > 0).to(device),
            reference=self.reference,
            calibration=cal,
            calibration_sampled=cal_mask,
            encoding_index=enc_index,
        )


def accumulate(connection: Any, *, readout_length: int = 0) -> None:
    """Collect Cartesian imaging readouts into k-space buffers and emit them on the trigger flags.

    Params:
        readout_length: minimum kx size of the buffer (0: the longest centred readout).

    Readouts are placed so that ``center_sample`` lands on ``kx // 2`` and the
    header's k-space centre line on ``ky // 2``; asymmetric echoes get zeros
    on the short side.  Non-imaging readouts (noise, navigators, phase
    correction, feedback, dummies) and non-Cartesian readouts (a trajectory in
    an encoding that is not ``cartesian``/``epi``) pass on untouched for the
    gadgets downstream that want them.
    """
    if readout_length < 0:
        raise ValueError(f"readout_length must be >= 0, got {readout_length}")
    groups: dict[tuple[int, ...], _Group] = {}
    infos: dict[int, Any] = {}
    device = getattr(connection, "device", torch.device("cpu"))

    def emit(key: tuple[int, ...]) -> None:
        g = groups.pop(key)
        if g.data is not None:
            connection.send(g.build(device, key[0]))

    for item in connection:
        # header fields and flag bits read from the header structure: this runs once per readout
        h = header_fields(item) if isinstance(item, ismrmrd.Acquisition) else None
        flags = int(h.flags) if h is not None else 0
        if h is None or flags & _SKIP:
            connection.send(item)
            continue
        key = group_key(item)
        info = infos.get(key[0]) or infos.setdefault(key[0], encoding_info(connection.header, key[0]))
        if h.trajectory_dimensions > 0 and not info.cartesian_like:
            connection.send(item)  # radial/spiral readouts: AccumulateTrajectory's business
            continue
        g = groups.get(key)
        if g is None:
            ny, nz = info.encoded_matrix[1], max(1, info.encoded_matrix[2])
            g = groups[key] = _Group(
                ny=ny,
                nz=nz,
                off_y=ny // 2 - info.center_step1,
                off_z=nz // 2 - info.center_step2 if nz > 1 else 0,
            )
        is_cal = bool(flags & _CAL_OR_CAL_IMG)
        is_img = not flags & _CAL
        ky, kz = h.idx.kspace_encode_step_1, h.idx.kspace_encode_step_2
        g.add(ky, kz, int(h.center_sample), np.asarray(item.data), is_img, is_cal, readout_length)
        if is_img:
            dist = abs(ky - info.center_step1) + abs(kz - info.center_step2)
            if dist < g.reference_distance:
                g.reference = header_copy(item)
                g.reference_distance = dist
        elif g.reference is None:
            g.reference = header_copy(item)
        if flags & _LAST_IN_SLICE:
            emit(key)
        elif flags & _END_OF_REPETITION:
            for k in [k for k in groups if k[0] == key[0] and k[4] == key[4]]:
                emit(k)
    for key in list(groups):
        emit(key)
