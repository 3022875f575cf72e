"""NoiseAdjust gadget: estimate the coil noise covariance from noise scans and whiten the data."""

from __future__ import annotations

import logging
from typing import Any

import ismrmrd
import numpy as np
import torch

from gadgets.acqtools import copy_with_data
from recon.noise import bandwidth_scale, noise_covariance, prewhitening_matrix

__all__ = ["noise_adjust"]

log = logging.getLogger(__name__)


def noise_adjust(connection: Any, *, relative_bandwidth: float = 1.0, keep_noise: bool = False) -> None:
    """Prewhiten every readout with the whitening matrix from the stream's noise scans.

    Noise readouts (``ACQ_IS_NOISE_MEASUREMENT``) are collected until the first
    imaging readout arrives; then ``W = L⁻¹`` (``Ψ = L Lᴴ``, Ψ scaled by the
    dwell-time ratio, see :func:`recon.noise.bandwidth_scale`) is applied to
    every following readout, so each channel carries unit-variance,
    uncorrelated noise.  Without noise scans the data pass unchanged.

    Params:
        relative_bandwidth: extra covariance factor applied only when noise and
            imaging dwell times differ (Gadgetron's receiver noise bandwidth).
        keep_noise: also pass the noise readouts on (dropped by default).
    """
    noise: list[np.ndarray] = []
    noise_dwell_us: float | None = None
    W: torch.Tensor | None = None
    decided = False
    for item in connection:
        if not isinstance(item, ismrmrd.Acquisition):
            connection.send(item)
            continue
        if item.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT):
            if decided:
                log.warning("noise readout after imaging data ignored for prewhitening")
            else:
                noise.append(np.asarray(item.data))
                noise_dwell_us = float(item.sample_time_us)
            if keep_noise:
                connection.send(item)
            continue
        if not decided:
            decided = True
            if noise:
                samples = torch.from_numpy(np.concatenate(noise, axis=1))
                cov = noise_covariance(samples)
                scale = 1.0
                data_dwell_us = float(item.sample_time_us)
                if noise_dwell_us and data_dwell_us and abs(noise_dwell_us - data_dwell_us) > 1e-6:
                    scale = bandwidth_scale(noise_dwell_us * 1e-6, data_dwell_us * 1e-6, relative_bandwidth)
                W = prewhitening_matrix(cov, scale=scale)
                log.info(
                    "noise prewhitening from %d samples x %d coils (dwell scale %.4g)",
                    samples.shape[1],
                    samples.shape[0],
                    scale,
                )
            else:
                log.info("no noise scans in the stream; data are not prewhitened")
        if W is None:
            connection.send(item)
            continue
        if item.active_channels != W.shape[0]:
            raise ValueError(
                f"readout has {item.active_channels} active channels but the noise scans had {W.shape[0]}"
            )
        # numpy matmul on the (coil, sample) line: one small GEMM, no device round trip.
        white = W.numpy() @ np.asarray(item.data)
        connection.send(copy_with_data(item, white))
