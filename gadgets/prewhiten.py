"""NoiseAdjust gadget: estimate the coil noise covariance from noise scans and whiten the data."""

from __future__ import annotations

import logging
import math
from typing import Any

import ismrmrd
import numpy as np
import torch

from gadgets.acqtools import copy_with_data, header_fields, is_flag_set, with_waiting
from recon.noise import bandwidth_scale, noise_covariance, prewhitening_matrix

__all__ = ["noise_adjust"]

log = logging.getLogger(__name__)


#: most readouts whitened in one matrix product (only those already waiting are taken)
BATCH = 64


def _whiten_and_send(connection: Any, W: np.ndarray, lines: list[ismrmrd.Acquisition]) -> None:
    """W applied to every (coil, sample) readout of ``lines``; equal lengths share one GEMM."""
    i = 0
    while i < len(lines):
        j = i + 1
        ns = header_fields(lines[i]).number_of_samples
        while j < len(lines) and header_fields(lines[j]).number_of_samples == ns:
            j += 1
        white = W @ np.stack([np.asarray(a.data) for a in lines[i:j]])  # (n, coil, sample)
        for acq, data in zip(lines[i:j], white, strict=True):
            connection.send(copy_with_data(acq, data))
        i = j


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
    whiteners: dict[float, np.ndarray] = {}  # dwell (us) -> whitening matrix at that bandwidth
    decided = False

    def whitener(dwell_us: float) -> np.ndarray:
        """W for data sampled at ``dwell_us``: noise power scales with the bandwidth, so a
        readout at another dwell than the noise scan (a navigator, say) gets its own scale."""
        assert W is not None
        if dwell_us not in whiteners:
            scale = 1.0
            if noise_dwell_us and dwell_us and abs(noise_dwell_us - dwell_us) > 1e-6:
                scale = bandwidth_scale(noise_dwell_us * 1e-6, dwell_us * 1e-6, relative_bandwidth)
                log.info("prewhitening readouts of %.4g us dwell with noise scale %.4g", dwell_us, scale)
            whiteners[dwell_us] = (W / math.sqrt(scale)).numpy()
        return whiteners[dwell_us]

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
                W = prewhitening_matrix(cov)
                log.info("noise prewhitening from %d samples x %d coils", samples.shape[1], samples.shape[0])
            else:
                log.info("no noise scans in the stream; data are not prewhitened")
        if W is None:
            connection.send(item)
            continue

        # whiten this readout and those already waiting behind it (same dwell) in one GEMM
        batch = with_waiting(connection, item, BATCH)
        lines: list[ismrmrd.Acquisition] = []
        dwell = 0.0  # of the readouts in ``lines``
        for acq in batch:
            h = header_fields(acq) if isinstance(acq, ismrmrd.Acquisition) else None
            if h is not None and not is_flag_set(h, ismrmrd.ACQ_IS_NOISE_MEASUREMENT):
                if h.active_channels != W.shape[0]:
                    raise ValueError(
                        f"readout has {h.active_channels} active channels but the noise scans had "
                        f"{W.shape[0]}"
                    )
                if lines and float(h.sample_time_us) != dwell:
                    _whiten_and_send(connection, whitener(dwell), lines)
                    lines = []
                dwell = float(h.sample_time_us)
                lines.append(acq)
                continue
            if lines:  # keep the stream's order
                _whiten_and_send(connection, whitener(dwell), lines)
            lines = []
            if isinstance(acq, ismrmrd.Acquisition):
                log.warning("noise readout after imaging data ignored for prewhitening")
                if not keep_noise:
                    continue
            connection.send(acq)
        if lines:
            _whiten_and_send(connection, whitener(dwell), lines)
