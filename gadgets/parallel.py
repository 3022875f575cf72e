"""Parallel-imaging gadgets: GRAPPA (k-space) and ESPIRiT + CG-SENSE (image space)."""

from __future__ import annotations

import logging
from typing import Any

import torch

from gadgets.buffers import ImageBuffer, KSpaceBuffer
from gadgets.encoding import encoding_info
from gadgets.fft_recon import to_recon_space
from recon import espirit, grappa, sense

__all__ = ["acs_block", "grappa_gadget", "sense_gadget"]

log = logging.getLogger(__name__)


def _longest_run(mask: torch.Tensor) -> tuple[int, int]:
    """(start, length) of the longest run of True in a 1D mask."""
    best = (0, 0)
    start = None
    values = mask.tolist() + [False]
    for i, v in enumerate(values):
        if v and start is None:
            start = i
        elif not v and start is not None:
            if i - start > best[1]:
                best = (start, i - start)
            start = None
    return best


def acs_block(buf: KSpaceBuffer) -> torch.Tensor:
    """The fully sampled calibration block (coil, ky_acs, kx) of a 2D k-space buffer.

    Uses the calibration lines when the stream flagged any
    (``ACQ_IS_PARALLEL_CALIBRATION[_AND_IMAGING]``), else the longest run of
    consecutive sampled imaging lines (a fully sampled centre).
    """
    if buf.data.shape[1] != 1:
        raise ValueError(f"parallel imaging here is 2D: the buffer has {buf.data.shape[1]} partitions (kz)")
    if buf.calibration is not None and buf.calibration_sampled is not None:
        src, mask = buf.calibration, buf.calibration_sampled[0].clone()
        # lines acquired for both imaging and calibration are in data too; merge for a longer block
        mask |= buf.sampled[0]
        src = torch.where(buf.calibration_sampled[0][None, None, :, None], buf.calibration, buf.data)
    else:
        src, mask = buf.data, buf.sampled[0]
    start, length = _longest_run(mask.cpu())
    if length < 4:
        raise ValueError(f"no usable calibration block: longest fully sampled run is {length} line(s)")
    return src[:, 0, start : start + length, :]


def grappa_gadget(connection: Any, *, block: int = 4, width: int = 5, lamda: float = 1e-4) -> None:
    """Complete undersampled 2D k-space buffers with GRAPPA; fully sampled buffers pass unchanged.

    Params:
        block: sampled source lines per kernel (even).
        width: kernel width along kx (odd).
        lamda: Tikhonov weight relative to the mean eigenvalue of the calibration normal matrix.
    """
    for item in connection:
        if not isinstance(item, KSpaceBuffer):
            connection.send(item)
            continue
        R, _ = grappa.infer_pattern(item.sampled[0].cpu())
        if R < 2:
            connection.send(item)
            continue
        acs = acs_block(item)
        k = grappa.reconstruct_kspace(item.data[:, 0], item.sampled[0], acs, R, block, width, lamda)
        log.info("GRAPPA R=%d with %d calibration lines", R, acs.shape[1])
        full = torch.ones_like(item.sampled)
        connection.send(KSpaceBuffer(k[:, None], full, item.reference, encoding_index=item.encoding_index))


def sense_gadget(
    connection: Any,
    *,
    kernel: int = 6,
    threshold: float = 0.02,
    crop: float = 0.95,
    lamda: float = 0.01,
    max_iter: int = 30,
) -> None:
    """ESPIRiT maps from the calibration block, then CG-SENSE; emits one complex image per buffer.

    Params:
        kernel, threshold, crop: ESPIRiT settings (see :func:`recon.espirit.espirit_maps`).
        lamda, max_iter: CG-SENSE Tikhonov weight and iterations.

    Emits ImageBuffers with complex (1, 1, y, x) data in the recon space.
    """
    for item in connection:
        if not isinstance(item, KSpaceBuffer):
            connection.send(item)
            continue
        acs = acs_block(item)
        k = item.data[:, 0]
        ny, nx = k.shape[-2:]
        size = min(acs.shape[1], acs.shape[2], 32)
        calib = acs[:, acs.shape[1] // 2 - size // 2 : acs.shape[1] // 2 - size // 2 + size, :]
        calib = calib[..., nx // 2 - size // 2 : nx // 2 - size // 2 + size]
        maps, _ = espirit.espirit_maps(k, kernel=kernel, threshold=threshold, crop=crop, calib=calib)
        mask = item.sampled[0][:, None].expand(ny, nx)
        res = sense.cg_sense(k, maps, mask, lamda=lamda, max_iter=max_iter)
        info = encoding_info(connection.header, item.encoding_index)
        img = to_recon_space(res.x[None, None], info)
        connection.send(ImageBuffer(img, item.reference, item.encoding_index))
