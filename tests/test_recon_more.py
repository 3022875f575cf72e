"""Partial Fourier (POCS), NUFFT (dot-product test, accuracy, radial/spiral) and EPI ghost correction."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recon import epi, fft, noncartesian, nufft, partial_fourier, trajectories
from recon.phantom import ellipse_kspace


def _phantom(n: int) -> torch.Tensor:
    """A real, positive test object: ellipses with different intensities (y, x)."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, n), torch.linspace(-1, 1, n), indexing="ij")
    img = 1.0 * ((x / 0.7) ** 2 + (y / 0.9) ** 2 < 1)
    img -= 0.6 * ((x / 0.6) ** 2 + (y / 0.8) ** 2 < 1)
    img += 0.4 * (((x - 0.2) / 0.15) ** 2 + ((y + 0.3) / 0.25) ** 2 < 1)
    img += 0.3 * (((x + 0.25) / 0.1) ** 2 + ((y - 0.2) / 0.2) ** 2 < 1)
    return img


def test_pocs_recovers_partial_fourier_with_smooth_phase() -> None:
    n = 96
    y, x = torch.meshgrid(torch.linspace(-1, 1, n), torch.linspace(-1, 1, n), indexing="ij")
    obj = _phantom(n) * torch.exp(1j * (0.8 * x + 0.5 * y**2))  # smooth (low-order) phase
    k = fft.fftnc(obj.to(torch.complex64)[None])
    sampled = torch.zeros(n, dtype=torch.bool)
    sampled[: n // 2 + n // 8] = True  # 5/8 partial Fourier: lines 0..59 of 96
    kp = k * sampled[None, :, None]
    zero_filled = fft.ifftnc(kp).abs()[0]
    rec = fft.ifftnc(partial_fourier.pocs(kp, sampled, iterations=20)).abs()[0]
    truth = obj.abs()
    err_zf = float((zero_filled - truth).norm() / truth.norm())
    err = float((rec - truth).norm() / truth.norm())
    # measured: zero-filled 0.115, POCS (20 iterations) 0.006
    assert err < 0.1 * err_zf
    assert err < 0.01
    # measured lines are kept exactly
    filled = partial_fourier.pocs(kp, sampled)
    assert torch.equal(filled[:, sampled], kp[:, sampled])


def test_pocs_is_identity_for_full_sampling() -> None:
    k = torch.randn(2, 16, 16, dtype=torch.complex64)
    assert torch.equal(partial_fourier.pocs(k, torch.ones(16, dtype=torch.bool)), k)


def test_pocs_rejects_one_sided_sampling() -> None:
    sampled = torch.zeros(16, dtype=torch.bool)
    sampled[8:] = True
    with pytest.raises(ValueError, match="both sides"):
        partial_fourier.pocs(torch.zeros(1, 16, 16, dtype=torch.complex64), sampled)


# --- NUFFT --------------------------------------------------------------------------------------------


def _ndft_matrix(coords: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    ny, nx = shape
    ry, rx = torch.meshgrid(torch.arange(ny) - ny // 2, torch.arange(nx) - nx // 2, indexing="ij")
    phase = (
        coords[:, 1:2].double() * ry.reshape(1, -1) / ny + coords[:, 0:1].double() * rx.reshape(1, -1) / nx
    )
    return torch.exp(-2j * math.pi * phase) / math.sqrt(nx * ny)


def test_nufft_dot_product_test() -> None:
    g = torch.Generator().manual_seed(3)
    shape = (20, 28)
    coords = (torch.rand(700, 2, generator=g) - 0.5) * torch.tensor([28.0, 20.0])
    p = nufft.plan(coords, shape)
    x = torch.randn(3, *shape, dtype=torch.complex64, generator=g)
    y = torch.randn(3, 700, dtype=torch.complex64, generator=g)
    lhs = torch.vdot(nufft.forward(p, x).flatten(), y.flatten())
    rhs = torch.vdot(x.flatten(), nufft.adjoint(p, y).flatten())
    assert abs(lhs - rhs) / abs(lhs) < 1e-5


def test_nufft_matches_exact_ndft_and_fft() -> None:
    g = torch.Generator().manual_seed(4)
    shape = (24, 32)
    x = torch.randn(*shape, dtype=torch.complex64, generator=g)
    coords = (torch.rand(500, 2, generator=g) - 0.5) * torch.tensor([32.0, 24.0])
    E = _ndft_matrix(coords, shape)
    p = nufft.plan(coords, shape)
    exact = E @ x.flatten().to(torch.complex128)
    assert float((nufft.forward(p, x) - exact).norm() / exact.norm()) < 1e-4
    y = torch.randn(500, dtype=torch.complex64, generator=g)
    exact_adj = (E.conj().T @ y.to(torch.complex128)).reshape(shape)
    assert float((nufft.adjoint(p, y) - exact_adj).norm() / exact_adj.norm()) < 1e-4
    # on-grid samples reproduce the centred orthonormal FFT
    ky, kx = torch.meshgrid(torch.arange(24) - 12, torch.arange(32) - 16, indexing="ij")
    grid = torch.stack([kx, ky], -1).float().reshape(-1, 2)
    on_grid = nufft.forward(nufft.plan(grid, shape), x).reshape(shape)
    assert float((on_grid - fft.fftnc(x)).norm() / x.norm()) < 1e-4


N = 128


def _analytic_kspace(kx: np.ndarray, ky: np.ndarray) -> np.ndarray:
    return ellipse_kspace(kx, ky, N).numpy()


def _cartesian_reference() -> torch.Tensor:
    ky, kx = np.meshgrid(np.arange(N) - N // 2, np.arange(N) - N // 2, indexing="ij")
    k = torch.from_numpy(_analytic_kspace(kx.astype(float), ky.astype(float))).to(torch.complex64)
    return fft.ifftnc(k).abs()


def _nrmse(a: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    s = float((a * ref).sum() / (a * a).sum())
    return float((s * a - ref).norm() / ref.norm()), s


@pytest.mark.parametrize(
    ("kind", "grid_limit", "cg_limit"),
    [("radial", 0.08, 0.05), ("spiral", 0.16, 0.08)],  # measured: radial 0.063 / 0.035, spiral 0.140 / 0.069
)
def test_noncartesian_phantoms_reconstruct(kind: str, grid_limit: float, cg_limit: float) -> None:
    traj = (
        trajectories.radial(int(math.pi * N / 2), 2 * N, N)
        if kind == "radial"
        else trajectories.spiral(16, 4000, N)
    )
    coords = traj.reshape(-1, 2)
    y = torch.from_numpy(_analytic_kspace(coords[:, 0].double().numpy(), coords[:, 1].double().numpy()))
    y = y.to(torch.complex64)
    reference = _cartesian_reference()  # the same object sampled on the Cartesian grid
    p = nufft.plan(coords, (N, N))
    dcf = noncartesian.density_compensation(p)
    err, gain = _nrmse(noncartesian.gridding(y, p, dcf).abs(), reference)
    assert err < grid_limit
    assert gain == pytest.approx(1.0, abs=0.05)  # DCF normalisation gives unit gain
    res = noncartesian.cg_sense(y[None], p, torch.ones(1, N, N, dtype=torch.complex64), dcf, max_iter=10)
    err_cg, gain_cg = _nrmse(res.x.abs(), reference)
    assert err_cg < cg_limit and err_cg < err
    assert gain_cg == pytest.approx(1.0, abs=0.02)


# --- EPI ghost correction --------------------------------------------------------------------------


def test_epi_ghost_correction_removes_nyquist_ghost() -> None:
    n = 64
    img = _phantom(n).to(torch.complex64)
    y, x = torch.meshgrid(torch.linspace(-1, 1, n), torch.linspace(-1, 1, n), indexing="ij")
    sens = torch.stack([torch.exp(-((x - 0.8) ** 2 + y**2)), torch.exp(-((x + 0.8) ** 2 + y**2))]).to(
        torch.complex64
    )
    k = fft.fftnc(sens * img)  # (coil, ky, kx), ideal
    # odd echoes: 0.7-sample readout delay and 0.4 rad phase, i.e. φ(x) = 0.4 + 2π·0.7·x/n in hybrid space
    truth_phase = epi.LinearPhase(0.4, 2 * math.pi * 0.7 / n)
    err = torch.exp(-1j * truth_phase.phase(n)).to(torch.complex64)
    hybrid = fft.ifftnc(k, -1)
    hybrid[:, 1::2] *= err
    corrupted = fft.fftnc(hybrid, -1)
    # reference echoes at ky = 0 without phase encoding: +, −, + (the negative one carries the error)
    centre = fft.fftnc(fft.ifftnc(k[:, n // 2], -1), -1)
    neg = fft.fftnc(fft.ifftnc(k[:, n // 2], -1) * err, -1)
    corr = epi.estimate_correction(centre, neg)
    assert corr.offset == pytest.approx(truth_phase.offset, abs=1e-3)
    assert corr.slope == pytest.approx(truth_phase.slope, abs=1e-4)
    fixed = corrupted.clone()
    fixed[:, 1::2] = epi.correct_lines(corrupted[:, 1::2], corr)
    truth = (sens * img).abs().pow(2).sum(0).sqrt()

    def nrmse(kk: torch.Tensor) -> float:
        rec = fft.ifftnc(kk).abs().pow(2).sum(0).sqrt()
        return float((rec - truth).norm() / truth.norm())

    assert nrmse(corrupted) > 0.2  # a visible N/2 ghost
    assert nrmse(fixed) < 1e-4


def test_linear_phase_fit_handles_wrapping() -> None:
    nx = 128
    lp = epi.LinearPhase(3.0, 0.2)  # wraps many times across the readout
    z = torch.exp(1j * lp.phase(nx)) * (1 + 0.5 * torch.rand(nx))
    fit = epi.fit_linear_phase(z)
    assert fit.slope == pytest.approx(0.2, abs=1e-5)
    assert math.remainder(fit.offset - 3.0, 2 * math.pi) == pytest.approx(0.0, abs=1e-4)
