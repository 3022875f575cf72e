"""PartialFourier gadget: POCS-complete k-space buffers acquired asymmetrically along ky."""

from __future__ import annotations

import logging
from typing import Any

from gadgets.buffers import KSpaceBuffer
from recon.partial_fourier import pocs, symmetric_extent

__all__ = ["partial_fourier"]

log = logging.getLogger(__name__)


def partial_fourier(connection: Any, *, iterations: int = 10) -> None:
    """Fill the unacquired side of partial-Fourier buffers; other buffers pass unchanged.

    A buffer is partial-Fourier when its sampled ky lines form a range around
    the centre that reaches one edge of the matrix but stops short of the
    other by more than one line.  Undersampled (GRAPPA/SENSE) buffers, whose
    lines span the whole matrix, are left alone.

    Params:
        iterations: POCS iterations.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    for item in connection:
        if not isinstance(item, KSpaceBuffer) or item.data.shape[1] != 1:
            connection.send(item)
            continue
        rows = item.sampled[0]
        n = rows.numel()
        try:
            lo, hi, _ = symmetric_extent(rows.cpu())
        except ValueError:
            connection.send(item)
            continue
        c = n // 2
        if abs((c - lo) - (hi - c)) <= 1:
            connection.send(item)
            continue
        log.info("partial Fourier: lines %d..%d of %d, POCS with %d iterations", lo, hi - 1, n, iterations)
        k = pocs(item.data[:, 0], rows, dim=-2, iterations=iterations)
        filled = rows.clone()
        filled[:] = True
        connection.send(
            KSpaceBuffer(
                k[:, None],
                filled[None].expand_as(item.sampled).clone(),
                item.reference,
                item.calibration,
                item.calibration_sampled,
                item.trajectory,
                item.encoding_index,
            )
        )
