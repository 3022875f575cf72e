"""EPI Nyquist-ghost correction from reference (navigator) echoes.

Echoes read with alternating gradient polarity carry slightly different
delays and phases (eddy currents, filter group delay); after the reversed
echoes are flipped into k-space order the odd/even mismatch appears in
hybrid space (x, ky) as a phase ``φ(x) = a + b·x`` between the two echo
families and produces an N/2 ghost.  Three reference echoes without phase
encoding (+, −, +) measure it: the two positive echoes are averaged, and the
phase of ``Σ_coils P(x)·conj(N(x))`` is fitted to a line.  Its slope is
found from the phase of the lag-1 autocorrelation and the offset from the
de-ramped sum (Ahn & Cho, IEEE TMI 1987), which needs no phase unwrapping.
The correction multiplies every negative echo by ``exp(iφ(x))``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from recon.fft import fftnc, ifftnc

__all__ = ["LinearPhase", "fit_linear_phase", "estimate_correction", "correct_lines"]


@dataclass(frozen=True)
class LinearPhase:
    """φ(x) = offset + slope · (x − nx//2), x in pixels along the readout.

    Attributes:
        offset: radians.
        slope: radians per pixel.
    """

    offset: float
    slope: float

    def phase(self, nx: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """φ over the nx pixels of a readout (float32)."""
        x = torch.arange(nx, dtype=torch.float32, device=device) - nx // 2
        return self.offset + self.slope * x


def fit_linear_phase(z: torch.Tensor) -> LinearPhase:
    """Fit the phase of a complex profile z(x) (nx,) to a line, weighting by |z|."""
    nx = z.shape[-1]
    slope = float(torch.angle(torch.sum(z[1:] * z[:-1].conj())))
    x = torch.arange(nx, dtype=torch.float32, device=z.device) - nx // 2
    offset = float(torch.angle(torch.sum(z * torch.exp(-1j * slope * x))))
    return LinearPhase(offset, slope)


def estimate_correction(positive: torch.Tensor, negative: torch.Tensor) -> LinearPhase:
    """Odd/even phase from reference echoes in k-space order.

    Args:
        positive: complex (coil, nx) mean of the positive-polarity reference echoes.
        negative: complex (coil, nx) negative-polarity reference echo, already flipped
            into k-space order.

    Returns:
        The linear phase to apply to negative echoes (``exp(iφ)``).
    """
    if positive.shape != negative.shape:
        raise ValueError(
            f"reference echoes differ in shape: {tuple(positive.shape)} vs {tuple(negative.shape)}"
        )
    p = ifftnc(positive, -1)
    n = ifftnc(negative, -1)
    return fit_linear_phase(torch.sum(p * n.conj(), dim=0))


def correct_lines(lines: torch.Tensor, correction: LinearPhase) -> torch.Tensor:
    """Apply ``exp(iφ(x))`` to negative echoes (coil, …, nx) in k-space order; returns k-space."""
    nx = lines.shape[-1]
    phi = correction.phase(nx, lines.device)
    return fftnc(ifftnc(lines, -1) * torch.exp(1j * phi).to(lines.dtype), -1)
