"""RemoveReadoutOversampling gadget: halve (or 1/f) the readout in image space, line by line."""

from __future__ import annotations

from itertools import groupby
from typing import Any

import ismrmrd
import numpy as np
import torch

from gadgets.acqtools import copy_with_data, header_fields, is_flag_set, with_waiting
from gadgets.encoding import encoding_info
from recon.oversampling import remove_readout_oversampling

__all__ = ["remove_oversampling"]


#: most readouts transformed in one batched FFT (only those already waiting are taken)
BATCH = 64


def remove_oversampling(connection: Any, *, factor: int = 0) -> None:
    """Remove readout oversampling from every Cartesian imaging readout.

    Params:
        factor: oversampling factor; 0 takes it from the header (encoded x
            matrix over recon x matrix of the readout's encoding).

    Non-Cartesian readouts (radial, spiral) and noise readouts pass
    unchanged; EPI readouts are treated as Cartesian even when they carry a
    trajectory (which is dropped). ``center_sample`` is divided by the factor.
    Readouts that are already waiting are transformed together (one batched
    FFT); the order of the stream is kept.
    """
    if factor < 0:
        raise ValueError(f"factor must be >= 0 (0 = from the header), got {factor}")
    infos: dict[int, Any] = {}

    def oversampling_of(item: Any) -> int:
        """The factor to remove from ``item``; 1 = pass it on unchanged."""
        if not isinstance(item, ismrmrd.Acquisition):
            return 1
        h = header_fields(item)
        if is_flag_set(h, ismrmrd.ACQ_IS_NOISE_MEASUREMENT):
            return 1
        ref = int(h.encoding_space_ref)
        info = infos.get(ref) or infos.setdefault(ref, encoding_info(connection.header, ref))
        if h.trajectory_dimensions > 0 and not info.cartesian_like:
            return 1  # radial/spiral: the NUFFT handles the readout FOV
        f = factor or info.readout_oversampling
        if f > 1 and h.number_of_samples % f:
            raise ValueError(
                f"readout of {h.number_of_samples} samples is not divisible by the oversampling factor {f}"
            )
        return f

    def flush(group: list[Any], f: int) -> None:
        data = torch.from_numpy(np.stack([np.asarray(a.data) for a in group]))
        out = remove_readout_oversampling(data, f).numpy()
        for item, lines in zip(group, out, strict=True):
            acq = copy_with_data(item, lines)
            h = header_fields(acq)
            h.center_sample //= f
            h.discard_pre //= f
            h.discard_post //= f
            connection.send(acq)

    def batch_key(item: Any) -> tuple[int, int, int] | None:
        """Readouts transformed together share this key; None passes the item on unchanged."""
        f = oversampling_of(item)
        if f == 1:
            return None
        h = header_fields(item)
        return (f, h.active_channels, h.number_of_samples)

    for first in connection:
        # runs of readouts with one key go through one FFT; the stream's order is kept
        for key, run in groupby(with_waiting(connection, first, BATCH), key=batch_key):
            if key is None:
                for item in run:
                    connection.send(item)
            else:
                flush(list(run), key[0])
