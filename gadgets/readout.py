"""RemoveReadoutOversampling gadget: halve (or 1/f) the readout in image space, line by line."""

from __future__ import annotations

from typing import Any

import ismrmrd
import numpy as np
import torch

from gadgets.acqtools import copy_with_data
from gadgets.encoding import encoding_info
from recon.oversampling import remove_readout_oversampling

__all__ = ["remove_oversampling"]


def remove_oversampling(connection: Any, *, factor: int = 0) -> None:
    """Remove readout oversampling from every Cartesian imaging readout.

    Params:
        factor: oversampling factor; 0 takes it from the header (encoded x
            matrix over recon x matrix of the readout's encoding).

    Non-Cartesian readouts (radial, spiral) and noise readouts pass
    unchanged; EPI readouts are treated as Cartesian even when they carry a
    trajectory (which is dropped). ``center_sample`` is divided by the factor.
    """
    if factor < 0:
        raise ValueError(f"factor must be >= 0 (0 = from the header), got {factor}")
    infos: dict[int, Any] = {}
    for item in connection:
        if not isinstance(item, ismrmrd.Acquisition) or item.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT):
            connection.send(item)
            continue
        ref = int(item.encoding_space_ref)
        info = infos.get(ref) or infos.setdefault(ref, encoding_info(connection.header, ref))
        if item.trajectory_dimensions > 0 and not info.cartesian_like:
            connection.send(item)  # radial/spiral: the NUFFT handles the readout FOV
            continue
        f = factor or info.readout_oversampling
        if f == 1:
            connection.send(item)
            continue
        n = item.number_of_samples
        if n % f:
            raise ValueError(f"readout of {n} samples is not divisible by the oversampling factor {f}")
        out = remove_readout_oversampling(torch.from_numpy(np.asarray(item.data)), f).numpy()
        acq = copy_with_data(item, out)
        acq.center_sample = item.center_sample // f
        acq.discard_pre = item.discard_pre // f
        acq.discard_post = item.discard_post // f
        connection.send(acq)
