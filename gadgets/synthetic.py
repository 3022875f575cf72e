"""Build MRD headers and acquisition streams from k-space arrays (tests, benchmarks, demos).

Geometry defaults to a transverse slice at the isocentre: read along +x,
phase along +y, slice along +z (patient LPS coordinates, mm).
"""

from __future__ import annotations

from collections.abc import Sequence

import ismrmrd
import numpy as np
from ismrmrd import xsd

__all__ = ["make_header", "cartesian_acquisitions", "trajectory_acquisitions", "noise_acquisition"]


def make_header(
    matrix: tuple[int, int],
    fov_mm: tuple[float, float, float] = (220.0, 220.0, 5.0),
    n_coils: int = 1,
    readout_oversampling: int = 1,
    trajectory: str = "cartesian",
    encoded_ky: int | None = None,
    center_ky: int | None = None,
) -> xsd.ismrmrdHeader:
    """A one-encoding MRD header.

    Args:
        matrix: recon (nx, ny).
        fov_mm: recon (x, y, slice thickness) field of view.
        n_coils: receiver channels.
        readout_oversampling: encoded x = recon x × this (FOV likewise).
        trajectory: ``cartesian``, ``radial``, ``spiral``, ``epi`` ...
        encoded_ky: encoded ky lines (default ny); ``center_ky`` their centre (default encoded_ky // 2).
    """
    nx, ny = matrix
    eky = encoded_ky or ny
    cky = eky // 2 if center_ky is None else center_ky
    traj = {t.value: t for t in xsd.trajectoryType}.get(trajectory)
    if traj is None:
        raise ValueError(
            f"trajectory must be one of {[t.value for t in xsd.trajectoryType]}, got '{trajectory}'"
        )
    enc = xsd.encodingType(
        encodedSpace=xsd.encodingSpaceType(
            matrixSize=xsd.matrixSizeType(x=nx * readout_oversampling, y=eky, z=1),
            fieldOfView_mm=xsd.fieldOfViewMm(x=fov_mm[0] * readout_oversampling, y=fov_mm[1], z=fov_mm[2]),
        ),
        reconSpace=xsd.encodingSpaceType(
            matrixSize=xsd.matrixSizeType(x=nx, y=ny, z=1),
            fieldOfView_mm=xsd.fieldOfViewMm(x=fov_mm[0], y=fov_mm[1], z=fov_mm[2]),
        ),
        encodingLimits=xsd.encodingLimitsType(
            kspace_encoding_step_1=xsd.limitType(minimum=0, maximum=eky - 1, center=cky),
        ),
        trajectory=traj,
    )
    return xsd.ismrmrdHeader(
        experimentalConditions=xsd.experimentalConditionsType(H1resonanceFrequency_Hz=127_728_000),
        acquisitionSystemInformation=xsd.acquisitionSystemInformationType(receiverChannels=n_coils),
        encoding=[enc],
    )


def _geometry(acq: ismrmrd.Acquisition, position: Sequence[float]) -> None:
    acq.position = tuple(position)
    acq.read_dir = (1.0, 0.0, 0.0)
    acq.phase_dir = (0.0, 1.0, 0.0)
    acq.slice_dir = (0.0, 0.0, 1.0)


def cartesian_acquisitions(
    k: np.ndarray,
    lines: Sequence[int] | None = None,
    dwell_us: float = 5.0,
    slice_index: int = 0,
    position: Sequence[float] = (0.0, 0.0, 0.0),
    reverse_odd: bool = False,
    flags: dict[int, Sequence[int]] | None = None,
) -> list[ismrmrd.Acquisition]:
    """One acquisition per ky line of ``k`` (coil, ky, kx); centre sample kx // 2.

    Args:
        lines: which ky lines to emit, in order (default all).
        reverse_odd: store odd lines in reversed sample order with ``ACQ_IS_REVERSE`` (EPI).
        flags: extra flags per line index.

    The last emitted line is flagged last-in-slice.
    """
    nc, ny, nx = k.shape
    order = list(range(ny)) if lines is None else list(lines)
    out = []
    for i, ky in enumerate(order):
        d = np.ascontiguousarray(k[:, ky, :], dtype=np.complex64)
        rev = reverse_odd and ky % 2 == 1
        a = ismrmrd.Acquisition.from_array(np.ascontiguousarray(d[:, ::-1]) if rev else d)
        a.idx.kspace_encode_step_1 = ky
        a.idx.slice = slice_index
        # k = 0 sits at nx//2 in k-space order; a reversed line stores the samples backwards
        a.center_sample = nx - 1 - nx // 2 if rev else nx // 2
        a.sample_time_us = dwell_us
        a.scan_counter = i
        _geometry(a, position)
        if rev:
            a.set_flag(ismrmrd.ACQ_IS_REVERSE)
        for f in (flags or {}).get(ky, ()):
            a.set_flag(f)
        if i == len(order) - 1:
            a.set_flag(ismrmrd.ACQ_LAST_IN_SLICE)
        out.append(a)
    return out


def trajectory_acquisitions(
    data: np.ndarray, traj: np.ndarray, dwell_us: float = 5.0, slice_index: int = 0
) -> list[ismrmrd.Acquisition]:
    """One acquisition per readout: ``data`` (coil, readouts, samples), ``traj`` (readouts, samples, dims)."""
    nc, nr, ns = data.shape
    out = []
    for r in range(nr):
        a = ismrmrd.Acquisition.from_array(
            np.ascontiguousarray(data[:, r], dtype=np.complex64),
            np.ascontiguousarray(traj[r], dtype=np.float32),
        )
        a.idx.kspace_encode_step_1 = r
        a.idx.slice = slice_index
        a.sample_time_us = dwell_us
        a.scan_counter = r
        _geometry(a, (0.0, 0.0, 0.0))
        if r == nr - 1:
            a.set_flag(ismrmrd.ACQ_LAST_IN_SLICE)
        out.append(a)
    return out


def noise_acquisition(noise: np.ndarray, dwell_us: float = 5.0) -> ismrmrd.Acquisition:
    """A noise-scan readout (coil, samples) flagged ``ACQ_IS_NOISE_MEASUREMENT``."""
    a = ismrmrd.Acquisition.from_array(np.ascontiguousarray(noise, dtype=np.complex64))
    a.sample_time_us = dwell_us
    a.set_flag(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
    return a
