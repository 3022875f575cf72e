"""Small helpers on ``ismrmrd.Acquisition`` objects shared by several gadgets."""

from __future__ import annotations

from typing import Any

import ismrmrd
import numpy as np

__all__ = ["copy_with_data", "header_copy", "header_fields", "is_flag_set", "with_waiting"]


def header_fields(acq: ismrmrd.Acquisition) -> ismrmrd.AcquisitionHeader:
    """The acquisition's own header structure (not a copy): reads and writes go straight to it.

    ``Acquisition``'s header properties are Python functions generated per field (~0.5 µs a
    read); the ctypes structure behind them has the same field names at a fraction of the
    cost, which counts in per-readout gadgets at hundreds of MB/s.
    """
    head = getattr(acq, "_head", None)
    return head if isinstance(head, ismrmrd.AcquisitionHeader) else acq  # type: ignore[return-value]


def is_flag_set(head: ismrmrd.AcquisitionHeader | ismrmrd.Acquisition, flag: int) -> bool:
    """``Acquisition.is_flag_set`` on a header structure (flags are numbered from 1)."""
    return bool((int(head.flags) >> (flag - 1)) & 1)


def with_waiting(connection: Any, first: Any, max_items: int) -> list[Any]:
    """``first`` and up to ``max_items - 1`` items already waiting behind it on ``connection``.

    Lets a per-readout gadget transform a batch at once when data arrive faster than it
    works, and go item by item otherwise. ``ready`` is unisono's; a plain gadgetron-python
    connection has none, and the gadget then sees one item at a time.
    """
    ready = getattr(connection, "ready", None)
    return [first, *(ready(max_items - 1) if ready is not None else [])]


def header_copy(acq: ismrmrd.Acquisition) -> ismrmrd.AcquisitionHeader:
    """An independent copy of an acquisition's header.

    ``Acquisition.getHead()`` goes through ``copy.deepcopy`` of the ctypes
    structure (~30 µs); copying the 340 header bytes directly takes ~1 µs,
    which matters once per readout at hundreds of MB/s.
    """
    head = getattr(acq, "_head", None)
    if isinstance(head, ismrmrd.AcquisitionHeader):
        return ismrmrd.AcquisitionHeader.from_buffer_copy(head)
    return ismrmrd.AcquisitionHeader.from_buffer_copy(acq.getHead())


def copy_with_data(acq: ismrmrd.Acquisition, data: np.ndarray) -> ismrmrd.Acquisition:
    """A new acquisition with ``acq``'s header and trajectory and new (coil, sample) data.

    The input is never modified: offline replay hands the caller's objects to
    the chain, and they must come back untouched.
    """
    head = header_copy(acq)
    head.number_of_samples = data.shape[1]
    head.active_channels = data.shape[0]
    traj = acq.traj
    if traj.shape[0] != data.shape[1]:
        traj = np.zeros((data.shape[1], 0), dtype=np.float32)
        head.trajectory_dimensions = 0
    return ismrmrd.Acquisition(head, np.ascontiguousarray(data, dtype=np.complex64), traj)
