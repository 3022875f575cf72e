"""Reconstruction library checks against closed forms (FFT, prewhitening, oversampling, coils)."""

from __future__ import annotations

import math

import pytest
import torch

from recon import cartesian, coils, fft, noise, oversampling
from recon.device import resolve_device

torch.manual_seed(0)


def _crandn(*shape: int, generator: torch.Generator | None = None) -> torch.Tensor:
    return torch.complex(
        torch.randn(*shape, generator=generator), torch.randn(*shape, generator=generator)
    ) / math.sqrt(2)


# --- FFT -----------------------------------------------------------------------------------------


def test_fft_is_unitary_and_inverse() -> None:
    x = _crandn(3, 16, 12)
    k = fft.fftnc(x, (-2, -1))
    assert torch.allclose(torch.linalg.vector_norm(k), torch.linalg.vector_norm(x), rtol=1e-5)
    assert torch.allclose(fft.ifftnc(k, (-2, -1)), x, atol=1e-5)


@pytest.mark.parametrize("n", [8, 9])
def test_fft_centre_convention(n: int) -> None:
    # A constant image has all its energy at the k-space centre index n//2 (and vice versa).
    img = torch.ones(n, n, dtype=torch.complex64)
    k = fft.fftnc(img)
    peak = torch.nonzero(k.abs() > 1e-3).tolist()
    assert peak == [[n // 2, n // 2]]
    assert k[n // 2, n // 2].real == pytest.approx(n, rel=1e-5)  # orthonormal: sum/sqrt(N)
    # A delta at the image centre is a flat k-space with zero phase.
    delta = torch.zeros(n, dtype=torch.complex64)
    delta[n // 2] = 1
    kd = fft.fftnc(delta, 0)
    assert torch.allclose(kd, torch.full((n,), 1 / math.sqrt(n), dtype=torch.complex64), atol=1e-6)


def test_fft_shift_theorem() -> None:
    # Shifting the object by one pixel multiplies k-space by exp(-2πi k/n), k centred at n//2.
    n = 16
    img = torch.zeros(n, dtype=torch.complex64)
    img[n // 2 + 1] = 1
    k = fft.fftnc(img, 0)
    kk = torch.arange(n) - n // 2
    expected = torch.exp(-2j * math.pi * kk / n).to(torch.complex64) / math.sqrt(n)
    assert torch.allclose(k, expected, atol=1e-6)


def test_fft_rejects_repeated_dims() -> None:
    with pytest.raises(ValueError, match="distinct"):
        fft.fftnc(torch.zeros(4, 4, dtype=torch.complex64), (-1, 1))


# --- noise prewhitening ---------------------------------------------------------------------------


def _mixing(nc: int, gen: torch.Generator) -> torch.Tensor:
    # A coupling matrix with strong off-diagonal terms (correlated channels, unequal gains).
    A = torch.eye(nc, dtype=torch.complex64) + 0.6 * _crandn(nc, nc, generator=gen)
    return A


def test_prewhitening_matrix_whitens_exactly() -> None:
    gen = torch.Generator().manual_seed(1)
    A = _mixing(6, gen)
    cov = A @ A.conj().T
    W = noise.prewhitening_matrix(cov)
    eye = torch.eye(6, dtype=torch.complex64)
    assert torch.allclose(W @ cov @ W.conj().T, eye, atol=1e-4)
    assert torch.allclose(W, torch.tril(W))  # Cholesky-based: lower triangular


def test_prewhitening_turns_correlated_noise_into_identity() -> None:
    gen = torch.Generator().manual_seed(2)
    nc, n = 8, 200_000
    A = _mixing(nc, gen)
    calib = A @ _crandn(nc, n, generator=gen)  # noise scan
    data = A @ _crandn(nc, n, generator=gen)  # independent "imaging" noise
    cov_in = noise.noise_covariance(data)
    off = (cov_in - torch.diag(torch.diagonal(cov_in))).abs().max()
    assert off > 0.2  # the channels really are correlated before whitening
    W = noise.prewhitening_matrix(noise.noise_covariance(calib))
    cov_out = noise.noise_covariance(noise.prewhiten(data, W))
    # statistical error of a covariance entry ~ 1/sqrt(n) ≈ 0.0022; allow 5 sigma plus the calib error
    assert torch.allclose(cov_out, torch.eye(nc, dtype=torch.complex64), atol=0.02)


def test_noise_covariance_matches_known_variance() -> None:
    gen = torch.Generator().manual_seed(3)
    x = 3.0 * _crandn(2, 100_000, generator=gen)
    cov = noise.noise_covariance(x)
    assert cov[0, 0].real == pytest.approx(9.0, rel=0.02)
    assert abs(cov[0, 1]) < 0.1


def test_bandwidth_scaling_when_dwell_times_differ() -> None:
    # Noise variance per sample is proportional to bandwidth = 1/dwell.  A noise scan at 2 µs dwell
    # has twice the variance of 4 µs imaging data; after scaling, the imaging noise is white.
    gen = torch.Generator().manual_seed(4)
    nc, n = 4, 100_000
    A = _mixing(nc, gen)
    noise_dwell, data_dwell = 2e-6, 4e-6
    calib = math.sqrt(1 / noise_dwell) * (A @ _crandn(nc, n, generator=gen))
    data = math.sqrt(1 / data_dwell) * (A @ _crandn(nc, n, generator=gen))
    scale = noise.bandwidth_scale(noise_dwell, data_dwell)
    assert scale == pytest.approx(0.5)
    W = noise.prewhitening_matrix(noise.noise_covariance(calib), scale=scale)
    cov_out = noise.noise_covariance(noise.prewhiten(data, W))
    assert torch.allclose(cov_out, torch.eye(nc, dtype=torch.complex64), atol=0.03)
    with pytest.raises(ValueError, match="dwell"):
        noise.bandwidth_scale(0.0, 1e-6)


def test_prewhitening_rejects_singular_covariance() -> None:
    """Two identical channels, 20 draws: in complex64 the covariance is singular only up to
    rounding, and Cholesky alone passed about 28 % of such draws."""
    gen = torch.Generator().manual_seed(7)
    for _ in range(20):
        x = _crandn(1, 1000, generator=gen)
        dup = torch.cat([x, x])
        with pytest.raises(ValueError, match="positive definite"):
            noise.prewhitening_matrix(noise.noise_covariance(dup))


def test_prewhiten_checks_coil_count() -> None:
    with pytest.raises(ValueError, match="coils"):
        noise.prewhiten(torch.zeros(3, 10, dtype=torch.complex64), torch.eye(4, dtype=torch.complex64))


# --- readout oversampling ---------------------------------------------------------------------------


def test_oversampling_removal_keeps_central_fov() -> None:
    # An object inside the central half of a 2x-oversampled FOV is kept exactly.
    n = 64
    gen = torch.Generator().manual_seed(5)
    obj = torch.zeros(3, n, dtype=torch.complex64)
    obj[:, n // 4 : 3 * n // 4] = _crandn(3, n // 2, generator=gen)
    k = fft.fftnc(obj, -1)
    k2 = oversampling.remove_readout_oversampling(k, 2)
    assert k2.shape == (3, n // 2)
    # The crop happens in image space, so the image of the result is the central half of the object.
    assert torch.allclose(fft.ifftnc(k2, -1), obj[:, n // 4 : 3 * n // 4], atol=1e-5)
    x2 = oversampling.remove_readout_oversampling(k, 2, image_space=True)
    assert torch.allclose(x2, obj[:, n // 4 : 3 * n // 4], atol=1e-5)


@pytest.mark.parametrize(("n", "factor"), [(512, 2), (12, 2), (10, 2), (24, 3), (18, 3)])
def test_oversampling_fast_path_equals_centred_crop(n: int, factor: int) -> None:
    # the shift-free fast path (even n and n/factor) must equal the explicit centred crop
    k = _crandn(3, n)
    expected = fft.fftnc(oversampling.crop_center(fft.ifftnc(k, -1), n // factor, -1), -1)
    assert torch.allclose(oversampling.remove_readout_oversampling(k, factor), expected, atol=1e-5)


def test_oversampling_rejects_indivisible_length() -> None:
    with pytest.raises(ValueError, match="divisible"):
        oversampling.remove_readout_oversampling(torch.zeros(2, 63, dtype=torch.complex64), 2)


# --- coil combination -------------------------------------------------------------------------------


def test_rss_matches_definition() -> None:
    img = _crandn(4, 5, 6)
    expected = torch.sqrt((img.abs() ** 2).sum(0))
    assert torch.allclose(coils.rss(img), expected, atol=1e-6)


def test_sensitivity_weighted_recovers_object() -> None:
    gen = torch.Generator().manual_seed(6)
    m = _crandn(1, 8, 8, generator=gen)[0]
    S = _crandn(4, 8, 8, generator=gen)
    combined = coils.sensitivity_weighted(S * m, S)
    assert torch.allclose(combined, m, atol=1e-5)
    with pytest.raises(ValueError, match="shape"):
        coils.sensitivity_weighted(S, S[:2])


# --- Cartesian recon and resampling ------------------------------------------------------------------


def test_cartesian_reconstruct_inverts_forward_model() -> None:
    img = _crandn(2, 1, 16, 8)
    k = fft.fftnc(img, (-2, -1))
    assert torch.allclose(cartesian.reconstruct(k), img, atol=1e-5)
    vol = _crandn(2, 4, 6, 8)
    assert torch.allclose(cartesian.reconstruct(fft.fftnc(vol, (-3, -2, -1))), vol, atol=1e-5)
    with pytest.raises(ValueError, match="coil, kz, ky, kx"):
        cartesian.reconstruct(torch.zeros(4, 4, dtype=torch.complex64))


def test_resample_to_fov_crops_and_interpolates() -> None:
    img = _crandn(1, 32, 16)
    # phase oversampling: 32 rows over 2x the FOV -> the central 16 rows
    out = cartesian.resample_to_fov(img, (200.0, 100.0), (100.0, 100.0), (16, 16))
    assert torch.allclose(out, img[:, 8:24, :], atol=1e-6)
    # zero-filled interpolation to twice the matrix keeps the original samples on the even grid
    small = _crandn(1, 8, 8)
    smooth = fft.ifftnc(torch.nn.functional.pad(fft.fftnc(small), (4, 4, 4, 4)))  # band-limited 16x16
    up = cartesian.resample_to_fov(smooth, (1.0, 1.0), (1.0, 1.0), (32, 32))
    assert up.shape == (1, 32, 32)
    assert torch.allclose(up[:, ::2, ::2], smooth, atol=1e-5)


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            resolve_device("cuda")
