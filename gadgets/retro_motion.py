"""RetrospectiveMotion gadget: per-readout rigid correction of Cartesian k-space from the poses in the stream.

Offline replay (``unisono recon RAW --chain cartesian-retro``): the ``MotionEstimation``
gadget earlier in the chain turns the recorded navigators into pose messages
(:mod:`gadgets.feedback`); this gadget collects them and, per slice, the imaging readouts.
When a slice is complete every readout gets the pose interpolated linearly in time between
the estimates around it (held before the first and after the last), and the correction of
:mod:`recon.motion_correction` is applied:

* translation: the phase ramp exp(+2 pi i k.t), with t projected on the readout and
  phase-encoding directions of the acquisition;
* in-plane rotation (about the slice normal): the samples are moved to R^T k and the coil
  images solved from them by conjugate gradients on the NUFFT normal equations.

It emits one :class:`gadgets.buffers.ImageBuffer` of coil images per slice (recon space),
so it takes the place of ``Accumulate`` + ``CartesianFFT``; readout oversampling must be
removed before it. Through-plane motion cannot be undone from one slice and is left as is.
"""

from __future__ import annotations

import logging
from typing import Any

import ismrmrd
import numpy as np
import torch

from gadgets.accumulate import group_key
from gadgets.acqtools import header_copy
from gadgets.buffers import ImageBuffer
from gadgets.encoding import encoding_info
from gadgets.feedback import decode, is_feedback
from gadgets.fft_recon import to_recon_space
from gadgets.motion import TIME_TICK_S
from recon.fft import ifftnc
from recon.motion_correction import reconstruct_rotated, rotated_coordinates, undo_translation_line

__all__ = ["retrospective_motion"]

log = logging.getLogger(__name__)


def retrospective_motion(connection: Any, *, min_rotation_deg: float = 0.05, iterations: int = 20) -> None:
    """Correct each slice's readouts with the poses estimated in the stream; emit coil images.

    Params:
        min_rotation_deg: below this in-plane rotation (every readout) the slice is
            reconstructed by FFT after the translation ramps; above it by CG-NUFFT.
        iterations: CG iterations of the rotation correction at most.
    """
    if not min_rotation_deg >= 0:
        raise ValueError(
            f"RetrospectiveMotion parameter 'min_rotation_deg' must be >= 0, got {min_rotation_deg!r}"
        )
    if not isinstance(iterations, int) or iterations < 1:
        raise ValueError(
            f"RetrospectiveMotion parameter 'iterations' must be an integer >= 1, got {iterations!r}"
        )
    poses: list[tuple[float, float, float, float, float]] = []  # time s, tx, ty, tz mm, rz deg
    groups: dict[tuple[int, ...], list[ismrmrd.Acquisition]] = {}
    for item in connection:
        if is_feedback(item):
            fb = decode(item)
            poses.append((fb.time_s, *fb.translation_mm, fb.rotation_deg[2]))
            connection.send(item)
            continue
        imaging = isinstance(item, ismrmrd.Acquisition) and not any(
            item.is_flag_set(f)
            for f in (ismrmrd.ACQ_IS_NOISE_MEASUREMENT, ismrmrd.ACQ_IS_NAVIGATION_DATA,
                      ismrmrd.ACQ_IS_PHASECORR_DATA, ismrmrd.ACQ_IS_PARALLEL_CALIBRATION)
        )  # fmt: skip
        if not imaging:
            connection.send(item)
            continue
        key = group_key(item)
        groups.setdefault(key, []).append(item)
        if item.is_flag_set(ismrmrd.ACQ_LAST_IN_SLICE) or item.is_flag_set(ismrmrd.ACQ_LAST_IN_MEASUREMENT):
            connection.send(_correct(groups.pop(key), poses, connection.header, min_rotation_deg, iterations))
    for acqs in groups.values():  # a stream cut short: what arrived is still reconstructed
        connection.send(_correct(acqs, poses, connection.header, min_rotation_deg, iterations))


def _pose_at(times_s: np.ndarray, poses: list[tuple[float, ...]]) -> np.ndarray:
    """(n, 4) tx, ty, tz (mm), rz (deg) at ``times_s``, linear between estimates, held outside."""
    if not poses:
        return np.zeros((times_s.size, 4))
    p = np.asarray(sorted(poses), dtype=np.float64)
    return np.stack([np.interp(times_s, p[:, 0], p[:, 1 + i]) for i in range(4)], 1)


def _correct(
    acqs: list[ismrmrd.Acquisition],
    poses: list[tuple[float, ...]],
    header: Any,
    min_rotation_deg: float,
    iterations: int,
) -> ImageBuffer:
    info = encoding_info(header, int(acqs[0].encoding_space_ref))
    ex, ey, _ = info.encoded_matrix
    fx, fy, _ = info.encoded_fov_mm
    ncoil, nx = np.asarray(acqs[0].data).shape
    if any(np.asarray(a.data).shape != (ncoil, nx) for a in acqs):
        raise ValueError(
            "RetrospectiveMotion needs readouts of one length per slice (remove oversampling first)"
        )
    fov_x = fx * nx / ex  # the readout's FOV after oversampling removal (mm)
    times = np.array([int(a.acquisition_time_stamp) * TIME_TICK_S for a in acqs])
    pose = _pose_at(times, poses)
    kspace = torch.zeros(ncoil, ey, nx, dtype=torch.complex64)
    sampled = torch.zeros(ey, dtype=torch.bool)
    rz = torch.zeros(ey, dtype=torch.float64)
    for acq, (tx, ty, tz, angle) in zip(acqs, pose, strict=True):
        line = int(acq.idx.kspace_encode_step_1) - info.center_step1 + ey // 2
        if not 0 <= line < ey:
            raise ValueError(
                f"readout line {int(acq.idx.kspace_encode_step_1)} lies outside the {ey} encoded lines"
            )
        t = np.array([tx, ty, tz])
        # the ramp needs t along the readout and phase-encoding axes of this acquisition
        t_read, t_phase = float(t @ np.asarray(acq.read_dir)), float(t @ np.asarray(acq.phase_dir))
        kx = (torch.arange(nx, dtype=torch.float64) - int(acq.center_sample)) / (fov_x * 1e-3)
        ky = (line - ey // 2) / (fy * 1e-3)
        kspace[:, line] = undo_translation_line(
            torch.from_numpy(np.asarray(acq.data)), kx, ky, (t_read, t_phase)
        )
        sampled[line] = True
        # an in-plane rotation is a turn about the slice normal (z for the axial slices here)
        rz[line] = float(angle) * float(np.sign(np.asarray(acq.slice_dir)[2]) or 1.0)
    if float(rz.abs().max()) > min_rotation_deg:
        coords = rotated_coordinates(ey, nx, rz)
        img = reconstruct_rotated(kspace, coords, iterations=iterations, sampled=sampled)
    else:
        img = ifftnc(kspace, (-2, -1))
    reference = min(acqs, key=lambda a: abs(int(a.idx.kspace_encode_step_1) - info.center_step1))
    image = to_recon_space(img[:, None], info)
    log.info(
        "retrospective correction of %d readouts: |t| up to %.2f mm, |rz| up to %.2f deg",
        len(acqs),
        float(np.abs(pose[:, :3]).max()) if len(pose) else 0.0,
        float(rz.abs().max()),
    )
    return ImageBuffer(
        data=image, reference=header_copy(reference), encoding_index=int(acqs[0].encoding_space_ref)
    )
