"""GRAPPA, ESPIRiT and CG-SENSE against the fully sampled image and against BART (ecalib + pics)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recon import coils, espirit, fft, grappa, sense
from recon.bart import bart_available, read_cfl, run_bart, write_cfl
from recon.cg import conjugate_gradient

needs_bart = pytest.mark.skipif(not bart_available(), reason="BART is not installed (apt-get install bart)")

ACS = 24
NOISE = 5.0  # per real/imag component; BART's 8-coil phantom k-space peaks at ~5800


def nrmse_scaled(a: np.ndarray, ref: np.ndarray) -> float:
    a = np.abs(np.asarray(a)).astype(np.float64)
    s = float((a * ref).sum() / (a * a).sum())
    return float(np.linalg.norm(s * a - ref) / np.linalg.norm(ref))


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> dict:
    if not bart_available():
        pytest.skip("BART is not installed")
    tmp = tmp_path_factory.mktemp("bart")
    run_bart("phantom", "-x", "128", "-s", "8", "-k", str(tmp / "k"))
    clean = read_cfl(tmp / "k").reshape(8, 128, 128)
    rng = np.random.default_rng(7)
    noisy = clean + NOISE * (rng.standard_normal(clean.shape) + 1j * rng.standard_normal(clean.shape))
    truth = coils.rss(fft.ifftnc(torch.from_numpy(clean.astype(np.complex64)))).numpy().astype(np.float64)
    return {"tmp": tmp, "k": noisy.astype(np.complex64), "truth": truth}


def _mask(R: int, n: int = 128) -> np.ndarray:
    m = np.zeros(n, dtype=bool)
    m[::R] = True
    m[n // 2 - ACS // 2 : n // 2 + ACS // 2] = True
    return m


def test_cfl_layout_matches_bart_fft(tmp_path) -> None:
    if not bart_available():
        pytest.skip("BART is not installed")
    rng = np.random.default_rng(0)
    k = (rng.standard_normal((3, 1, 16, 12)) + 1j * rng.standard_normal((3, 1, 16, 12))).astype(np.complex64)
    write_cfl(tmp_path / "k", k)
    run_bart("fft", "-u", "-i", "3", str(tmp_path / "k"), str(tmp_path / "x"))  # dims x|y, unitary, inverse
    ours = fft.ifftnc(torch.from_numpy(k), (-2, -1)).numpy()
    assert np.allclose(read_cfl(tmp_path / "x"), ours, atol=1e-5)


def test_conjugate_gradient_solves_spd_system() -> None:
    g = torch.Generator().manual_seed(0)
    A = torch.randn(20, 20, generator=g, dtype=torch.float64)
    A = A @ A.T + 20 * torch.eye(20, dtype=torch.float64)
    b = torch.randn(20, generator=g, dtype=torch.float64)
    res = conjugate_gradient(lambda x: A @ x, b, max_iter=100, tol=1e-12)
    assert torch.allclose(res.x, torch.linalg.solve(A, b), atol=1e-9)
    assert res.residual_norms[-1] < 1e-12


def test_espirit_recovers_known_sensitivities() -> None:
    n = 64
    y, x = torch.meshgrid(torch.linspace(-1, 1, n), torch.linspace(-1, 1, n), indexing="ij")
    obj = ((x**2 + y**2) < 0.7).to(torch.complex64) * (1 + 0.3 * x)
    centres = [(1, 0), (-1, 0), (0, 1), (0, -1)]
    S = torch.stack(
        [
            torch.exp(-((x - a) ** 2 + (y - b) ** 2) / 1.5) * torch.exp(1j * (a * x + b * y))
            for a, b in centres
        ]
    )
    S = (S / (S.abs() ** 2).sum(0).sqrt()).to(torch.complex64)
    k = fft.fftnc(S * obj) + 1e-3 * torch.randn(
        4, n, n, dtype=torch.complex64, generator=torch.Generator().manual_seed(1)
    )
    maps, ev = espirit.espirit_maps(k, calib_size=24)
    inside = (x**2 + y**2) < 0.6
    corr = (maps.conj() * S).sum(0).abs()  # |<map, true>| of unit vectors: 1 = same up to a phase
    assert float(corr[inside].min()) > 0.999
    assert float(ev[inside].min()) > 0.99


@needs_bart
@pytest.mark.parametrize("R", [2, 3])
def test_grappa_approaches_fully_sampled(phantom: dict, R: int) -> None:
    k, truth = torch.from_numpy(phantom["k"]), phantom["truth"]
    m = torch.from_numpy(_mask(R))
    ku = k * m[None, :, None]
    acs = k[:, 64 - ACS // 2 : 64 + ACS // 2]
    filled = grappa.reconstruct_kspace(ku, m, acs)
    err = nrmse_scaled(coils.rss(fft.ifftnc(filled)).numpy(), truth)
    zero_filled = nrmse_scaled(coils.rss(fft.ifftnc(ku)).numpy(), truth)
    full = nrmse_scaled(coils.rss(fft.ifftnc(k)).numpy(), truth)
    # measured: R=2 0.035, R=3 0.043; fully sampled (same noise) 0.042; zero-filled 0.27, 0.31
    assert err < 1.25 * full
    assert err < 0.2 * zero_filled


@needs_bart
@pytest.mark.parametrize("R", [2, 3, 4])
def test_espirit_cg_sense_at_least_as_good_as_bart(phantom: dict, R: int) -> None:
    tmp, k, truth = phantom["tmp"], phantom["k"], phantom["truth"]
    m = _mask(R)
    ku = k * m[None, :, None]
    write_cfl(tmp / f"ku{R}", ku[:, None])
    run_bart("ecalib", "-m1", str(tmp / f"ku{R}"), str(tmp / f"sens{R}"))
    run_bart("pics", "-l2", "-r", "0.01", str(tmp / f"ku{R}"), str(tmp / f"sens{R}"), str(tmp / f"pics{R}"))
    bart_err = nrmse_scaled(read_cfl(tmp / f"pics{R}"), truth)
    kt = torch.from_numpy(ku)
    maps, _ = espirit.espirit_maps(kt, calib_size=ACS)
    res = sense.cg_sense(kt, maps, torch.from_numpy(m)[:, None].expand(128, 128), lamda=0.01)
    ours = nrmse_scaled(res.x.numpy(), truth)
    # measured: R=2 0.024 vs BART 0.027; R=3 0.042 vs 0.047; R=4 0.092 vs 0.105
    assert ours <= bart_err, f"R={R}: ours {ours:.4f} vs BART {bart_err:.4f}"
    assert ours < {2: 0.03, 3: 0.05, 4: 0.1}[R]
