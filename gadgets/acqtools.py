"""Small helpers on ``ismrmrd.Acquisition`` objects shared by several gadgets."""

from __future__ import annotations

import ismrmrd
import numpy as np

__all__ = ["copy_with_data"]


def copy_with_data(acq: ismrmrd.Acquisition, data: np.ndarray) -> ismrmrd.Acquisition:
    """A new acquisition with ``acq``'s header and trajectory and new (coil, sample) data.

    The input is never modified: offline replay hands the caller's objects to
    the chain, and they must come back untouched.
    """
    head = ismrmrd.AcquisitionHeader.from_buffer_copy(acq.getHead())
    head.number_of_samples = data.shape[1]
    head.active_channels = data.shape[0]
    traj = acq.traj
    if traj.shape[0] != data.shape[1]:
        traj = np.zeros((data.shape[1], 0), dtype=np.float32)
        head.trajectory_dimensions = 0
    return ismrmrd.Acquisition(head, np.ascontiguousarray(data, dtype=np.complex64), traj)
