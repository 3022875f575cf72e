"""Non-Cartesian gadgets: collect readouts with trajectories per slice, reconstruct by NUFFT."""

from __future__ import annotations

import logging
from typing import Any

import ismrmrd
import numpy as np
import torch

from gadgets.accumulate import group_key
from gadgets.buffers import ImageBuffer, KSpaceBuffer
from gadgets.encoding import encoding_info
from recon import noncartesian, nufft
from recon.cartesian import resample_to_fov
from recon.espirit import espirit_maps
from recon.fft import fftnc

__all__ = ["accumulate_trajectory", "nufft_recon", "TRAJECTORY_UNITS"]

log = logging.getLogger(__name__)

#: accepted ``trajectory_units`` and what they mean
TRAJECTORY_UNITS = {
    "normalized": "k relative to the encoded space, |k| <= 0.5 at the encoded resolution (ISMRMRD/Gadgetron "
    "convention; what unisono's simulator writes)",
    "cycles_per_fov": "k in cycles per encoded FOV, -N/2 <= k < N/2 (BART's convention)",
    "per_m": "k in 1/m (Pulseq's calculate_kspace); converted with the encoded FOV",
}


def accumulate_trajectory(connection: Any) -> None:
    """Collect readouts that carry a trajectory into one buffer per slice group.

    Emits :class:`KSpaceBuffer` with ``data`` complex (coil, 1, readouts, samples)
    and ``trajectory`` float32 (readouts, samples, dims) as stored in MRD, on
    last-in-slice (or at the end of the stream).  Readouts without a
    trajectory, readouts of Cartesian-like encodings (``cartesian``, ``epi``)
    and non-imaging readouts pass unchanged.
    """
    groups: dict[tuple[int, ...], list[ismrmrd.Acquisition]] = {}
    device = getattr(connection, "device", torch.device("cpu"))

    def emit(key: tuple[int, ...]) -> None:
        acqs = groups.pop(key)
        ns = {a.number_of_samples for a in acqs}
        if len(ns) != 1:
            raise ValueError(f"readouts of one slice have different sample counts {sorted(ns)}")
        data = torch.from_numpy(np.stack([a.data for a in acqs], axis=1))[:, None]
        traj = torch.from_numpy(np.stack([a.traj for a in acqs]))
        ref = ismrmrd.AcquisitionHeader.from_buffer_copy(acqs[0].getHead())
        sampled = torch.ones(1, len(acqs), dtype=torch.bool)
        connection.send(
            KSpaceBuffer(
                data.to(device), sampled.to(device), ref, trajectory=traj.to(device), encoding_index=key[0]
            )
        )

    cartesian_like: dict[int, bool] = {}
    for item in connection:
        if (
            not isinstance(item, ismrmrd.Acquisition)
            or item.trajectory_dimensions == 0
            or item.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
            or item.is_flag_set(ismrmrd.ACQ_IS_NAVIGATION_DATA)
        ):
            connection.send(item)
            continue
        ref = int(item.encoding_space_ref)
        if ref not in cartesian_like:
            cartesian_like[ref] = encoding_info(connection.header, ref).cartesian_like
        if cartesian_like[ref]:
            connection.send(item)  # EPI readouts carry a trajectory but are gridded by Accumulate
            continue
        key = group_key(item)
        groups.setdefault(key, []).append(item)
        if item.is_flag_set(ismrmrd.ACQ_LAST_IN_SLICE):
            emit(key)
    for key in list(groups):
        emit(key)


def _coords(traj: torch.Tensor, units: str, info: Any) -> torch.Tensor:
    """(M, 2) k-space positions in cycles per *encoded* FOV, (kx, ky) order."""
    c = traj[..., :2].reshape(-1, 2).to(torch.float32)
    ex, ey = float(info.encoded_matrix[0]), float(info.encoded_matrix[1])
    fx, fy = info.encoded_fov_mm[0] * 1e-3, info.encoded_fov_mm[1] * 1e-3
    if units == "cycles_per_fov":
        return c
    if units == "normalized":
        return c * torch.tensor([ex, ey], device=c.device)
    if units == "per_m":
        return c * torch.tensor([fx, fy], device=c.device)
    raise ValueError(f"trajectory_units must be one of {', '.join(TRAJECTORY_UNITS)}, got '{units}'")


def nufft_recon(
    connection: Any,
    *,
    method: str = "gridding",
    trajectory_units: str = "normalized",
    oversampling: float = 2.0,
    kernel_width: int = 6,
    dcf_iterations: int = 10,
    cg_iterations: int = 10,
    lamda: float = 0.0,
) -> None:
    """Reconstruct 2D non-Cartesian buffers into coil images (gridding) or one image (CG-SENSE).

    Params:
        method: ``gridding`` (density-compensated adjoint NUFFT per coil) or
            ``cg-sense`` (ESPIRiT maps from the gridded k-space centre, then
            density-weighted CG-SENSE).
        trajectory_units: see :data:`TRAJECTORY_UNITS`.
        oversampling, kernel_width: NUFFT grid oversampling and Kaiser–Bessel width.
        dcf_iterations: Pipe–Menon iterations.
        cg_iterations, lamda: CG-SENSE controls.

    The NUFFT grid is the header's *encoded* matrix and FOV (radial readouts
    are usually oversampled: encoded FOV twice the recon FOV), and the image
    is then cropped/interpolated to the recon space; emits ImageBuffer
    (coil or 1, 1, y, x).
    """
    if method not in ("gridding", "cg-sense"):
        raise ValueError(f"method must be gridding or cg-sense, got '{method}'")
    if trajectory_units not in TRAJECTORY_UNITS:
        raise ValueError(
            f"trajectory_units must be one of {', '.join(TRAJECTORY_UNITS)}, got '{trajectory_units}'"
        )
    for item in connection:
        if not isinstance(item, KSpaceBuffer) or item.trajectory is None:
            connection.send(item)
            continue
        info = encoding_info(connection.header, item.encoding_index)
        nx, ny = info.encoded_matrix[0], info.encoded_matrix[1]
        coords = _coords(item.trajectory, trajectory_units, info)
        y = item.data.reshape(item.data.shape[0], -1)
        p = nufft.plan(coords, (ny, nx), os=oversampling, width=kernel_width)
        dcf = noncartesian.density_compensation(p, dcf_iterations)
        coil_images = noncartesian.gridding(y, p, dcf)  # (coil, ny, nx)
        if method == "gridding":
            img = coil_images[:, None]
        else:
            kgrid = fftnc(coil_images, (-2, -1))
            maps, _ = espirit_maps(kgrid, calib_size=min(24, ny, nx))
            res = noncartesian.cg_sense(y, p, maps, dcf, lamda=lamda, max_iter=cg_iterations)
            img = res.x[None, None]
        fov_in = (info.encoded_fov_mm[1], info.encoded_fov_mm[0])
        fov_out = (info.recon_fov_mm[1], info.recon_fov_mm[0])
        img = resample_to_fov(img, fov_in, fov_out, (info.recon_matrix[1], info.recon_matrix[0]))
        connection.send(ImageBuffer(img, item.reference, item.encoding_index))
