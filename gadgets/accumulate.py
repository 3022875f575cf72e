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
from dataclasses import dataclass, field
from typing import Any

import ismrmrd
import numpy as np
import torch

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
    i = acq.idx
    return (int(acq.encoding_space_ref), i.slice, i.contrast, i.phase, i.repetition, i.set)


@dataclass
class _Group:
    """Readouts of one group, kept as (coil, sample) lines until the trigger."""

    lines: list[tuple[int, int, int, np.ndarray, bool, bool]] = field(default_factory=list)
    reference: ismrmrd.AcquisitionHeader | None = None
    reference_distance: int = 1 << 30


def _build(
    group: _Group, header: Any, enc_index: int, device: torch.device, readout_length: int | None
) -> KSpaceBuffer:
    info = encoding_info(header, enc_index)
    ny, nz = info.encoded_matrix[1], info.encoded_matrix[2]
    ncoil = group.lines[0][3].shape[0]
    # Readout length: lines are centred so that center_sample lands on kx//2 (asymmetric echoes
    # get zeros on the short side), which is what the centred FFT expects.
    nx = readout_length or 0
    for _, _, c, d, _, _ in group.lines:
        n = d.shape[1]
        nx = max(nx, n, 2 * max(c, n - c))
    off_y = ny // 2 - info.center_step1
    off_z = nz // 2 - info.center_step2 if nz > 1 else 0
    data = torch.zeros((ncoil, nz, ny, nx), dtype=torch.complex64)
    count = torch.zeros((nz, ny), dtype=torch.int32)
    calib = None
    calib_count = None
    for ky, kz, c, d, is_img, is_cal in group.lines:
        y, z = ky + off_y, kz + off_z
        if not (0 <= y < ny and 0 <= z < nz):
            raise ValueError(
                f"readout at encoding step ({ky}, {kz}) falls outside the encoded matrix "
                f"{ny}x{nz} (centre {info.center_step1}, {info.center_step2})"
            )
        if d.shape[0] != ncoil:
            raise ValueError(f"readouts of one slice have {d.shape[0]} and {ncoil} channels")
        x0 = nx // 2 - c
        line = torch.from_numpy(d)
        if is_img:
            data[:, z, y, x0 : x0 + d.shape[1]] += line
            count[z, y] += 1
        if is_cal:
            if calib is None:
                calib = torch.zeros_like(data)
                calib_count = torch.zeros_like(count)
            calib[:, z, y, x0 : x0 + d.shape[1]] += line
            calib_count[z, y] += 1
    sampled = count > 0
    # Average repeated acquisitions of the same line (averages): divide by the count.
    data = data / torch.clamp(count, min=1).to(torch.float32)[None, :, :, None]
    cal_mask = None
    if calib is not None:
        cal_mask = calib_count > 0
        calib = (calib / torch.clamp(calib_count, min=1).to(torch.float32)[None, :, :, None]).to(device)
    return KSpaceBuffer(
        data=data.to(device),
        sampled=sampled.to(device),
        reference=group.reference,
        calibration=calib,
        calibration_sampled=cal_mask.to(device) if cal_mask is not None else None,
        encoding_index=enc_index,
    )


def accumulate(connection: Any, *, readout_length: int = 0) -> None:
    """Collect Cartesian imaging readouts into k-space buffers and emit them on the trigger flags.

    Params:
        readout_length: force the buffer's kx size (0: the longest centred readout).

    Non-imaging readouts (noise, navigators, phase correction, feedback,
    dummies) are passed on untouched for gadgets downstream that want them.
    """
    groups: dict[tuple[int, ...], _Group] = {}
    infos: dict[int, Any] = {}
    device = getattr(connection, "device", torch.device("cpu"))

    def emit(key: tuple[int, ...]) -> None:
        g = groups.pop(key)
        if g.lines:
            connection.send(_build(g, connection.header, key[0], device, readout_length or None))

    for item in connection:
        if not isinstance(item, ismrmrd.Acquisition) or any(item.is_flag_set(f) for f in _SKIP_FLAGS):
            connection.send(item)
            continue
        key = group_key(item)
        g = groups.setdefault(key, _Group())
        is_cal = item.is_flag_set(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION) or item.is_flag_set(
            ismrmrd.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING
        )
        is_img = not item.is_flag_set(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION)
        ky, kz = item.idx.kspace_encode_step_1, item.idx.kspace_encode_step_2
        g.lines.append((ky, kz, int(item.center_sample), np.asarray(item.data), is_img, is_cal))
        if is_img:
            info = infos.get(key[0]) or infos.setdefault(key[0], encoding_info(connection.header, key[0]))
            dist = abs(ky - info.center_step1) + abs(kz - info.center_step2)
            if dist < g.reference_distance:
                g.reference = ismrmrd.AcquisitionHeader.from_buffer_copy(item.getHead())
                g.reference_distance = dist
        elif g.reference is None:
            g.reference = ismrmrd.AcquisitionHeader.from_buffer_copy(item.getHead())
        if item.is_flag_set(ismrmrd.ACQ_LAST_IN_SLICE):
            emit(key)
        elif item.is_flag_set(ismrmrd.ACQ_LAST_IN_REPETITION) or item.is_flag_set(
            ismrmrd.ACQ_LAST_IN_MEASUREMENT
        ):
            for k in [k for k in groups if k[0] == key[0] and k[4] == key[4]]:
                emit(k)
    for key in list(groups):
        emit(key)
