"""EPICorrection gadget: flip reversed echoes and remove the odd/even phase with reference echoes."""

from __future__ import annotations

import logging
from typing import Any

import ismrmrd
import numpy as np
import torch

from gadgets.acqtools import copy_with_data
from recon.epi import LinearPhase, correct_lines, estimate_correction

__all__ = ["epi_correction"]

log = logging.getLogger(__name__)


def epi_correction(connection: Any, *, keep_reference: bool = False) -> None:
    """EPI ghost correction, line by line.

    Reference echoes (``ACQ_IS_PHASECORR_DATA``) of a slice are collected —
    positive ones averaged, negative ones (``ACQ_IS_REVERSE``) flipped and
    averaged — and the linear odd/even phase is estimated when the first
    imaging echo of that slice arrives.  Every reversed echo is then flipped
    into k-space order and, if a correction exists for its slice, multiplied
    by ``exp(iφ(x))`` in hybrid space; its reverse flag is cleared and its
    ``center_sample`` (the index of k = 0 in stored order) becomes ``n − 1 − c``.

    Params:
        keep_reference: pass the reference echoes on (dropped by default).
    """
    pending: dict[tuple[int, int], dict[str, list[np.ndarray]]] = {}
    corrections: dict[tuple[int, int], LinearPhase] = {}
    for item in connection:
        if not isinstance(item, ismrmrd.Acquisition) or item.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT):
            connection.send(item)
            continue
        key = (item.idx.slice, item.idx.contrast)
        reverse = item.is_flag_set(ismrmrd.ACQ_IS_REVERSE)
        data = np.asarray(item.data)[:, ::-1] if reverse else np.asarray(item.data)
        if item.is_flag_set(ismrmrd.ACQ_IS_PHASECORR_DATA):
            refs = pending.setdefault(key, {"pos": [], "neg": []})
            refs["neg" if reverse else "pos"].append(np.ascontiguousarray(data))
            if keep_reference:
                connection.send(item)
            continue
        refs = pending.pop(key, None)
        if refs is not None:
            if refs["pos"] and refs["neg"]:
                pos = torch.from_numpy(np.mean(refs["pos"], axis=0))
                neg = torch.from_numpy(np.mean(refs["neg"], axis=0))
                corrections[key] = estimate_correction(pos, neg)
                c = corrections[key]
                log.info("EPI slice %d: odd/even phase %.3f rad + %.4f rad/pixel", key[0], c.offset, c.slope)
            else:
                log.warning(
                    "EPI slice %d: reference echoes of only one polarity; no ghost correction", key[0]
                )
        if not reverse:
            connection.send(item)
            continue
        line = torch.from_numpy(np.ascontiguousarray(data))
        if key in corrections:
            line = correct_lines(line, corrections[key])
        out = copy_with_data(item, line.numpy())
        # center_sample indexes k = 0 in the stored (acquisition) order; after the flip it moves
        out.center_sample = item.number_of_samples - 1 - item.center_sample
        out.clear_flag(ismrmrd.ACQ_IS_REVERSE)
        connection.send(out)
