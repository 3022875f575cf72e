"""epi, radial, spiral chains and partial Fourier in the cartesian chain, on synthetic MRD streams."""

from __future__ import annotations

import math

import ismrmrd
import numpy as np
import pytest
import torch

from gadgets import load_chain, run_chain
from gadgets.synthetic import cartesian_acquisitions, make_header, trajectory_acquisitions
from recon import fft, trajectories
from recon.epi import LinearPhase
from recon.phantom import ellipse_image, ellipse_kspace

OFF = {"harmonize": {"enabled": False}}
N = 64


def _sens(n: int, n_coils: int = 4) -> torch.Tensor:
    y, x = torch.meshgrid(torch.linspace(-1, 1, n), torch.linspace(-1, 1, n), indexing="ij")
    centres = [
        (1.2 * math.cos(a), 1.2 * math.sin(a)) for a in np.linspace(0, 2 * math.pi, n_coils, endpoint=False)
    ]
    s = torch.stack(
        [
            torch.exp(-((x - a) ** 2 + (y - b) ** 2) / 2) * torch.exp(0.5j * (a * x - b * y))
            for a, b in centres
        ]
    )
    return s.to(torch.complex64)


def _nrmse(a: np.ndarray, ref: np.ndarray) -> float:
    a = np.abs(a).astype(np.float64)
    s = float((a * ref).sum() / (a * a).sum())
    return float(np.linalg.norm(s * a - ref) / np.linalg.norm(ref))


def _with_trajectory(acqs: list) -> list:
    """The same readouts carrying a 2D trajectory, as unisono's simulator stores EPI readouts."""
    out = []
    for a in acqs:
        head = a.getHead()
        head.trajectory_dimensions = 2
        traj = np.zeros((a.number_of_samples, 2), dtype=np.float32)
        traj[:, 0] = (np.arange(a.number_of_samples) - a.number_of_samples // 2) / a.number_of_samples
        out.append(ismrmrd.Acquisition(head, a.data, traj))
    return out


@pytest.mark.parametrize("with_trajectory", [False, True])
def test_epi_chain_removes_ghost(with_trajectory: bool) -> None:
    img = ellipse_image(N).to(torch.complex64)
    S = _sens(N)
    k = fft.fftnc(S * img)
    err = torch.exp(-1j * LinearPhase(0.5, 2 * math.pi * 0.6 / N).phase(N)).to(torch.complex64)
    hyb = fft.ifftnc(k, -1)
    hyb[:, 1::2] *= err  # odd (reversed) echoes carry the odd/even error
    kc = fft.fftnc(hyb, -1).numpy()
    header = make_header((N, N), n_coils=4, trajectory="epi")
    # three reference echoes at ky = centre without phase encoding: +, -, +
    centre = k[:, N // 2].numpy()
    neg = fft.fftnc(fft.ifftnc(k[:, N // 2], -1) * err, -1).numpy()
    refs = []
    for j, line in enumerate([centre, neg, centre]):
        a = ismrmrd.Acquisition.from_array(np.ascontiguousarray(line[:, ::-1] if j == 1 else line))
        a.center_sample = N // 2
        a.idx.kspace_encode_step_1 = N // 2
        a.set_flag(ismrmrd.ACQ_IS_PHASECORR_DATA)
        if j == 1:
            a.set_flag(ismrmrd.ACQ_IS_REVERSE)
        refs.append(a)
    acqs = refs + cartesian_acquisitions(kc, reverse_odd=True)
    if with_trajectory:
        acqs = _with_trajectory(acqs)
    truth = (S * img).abs().pow(2).sum(0).sqrt().numpy()
    out = run_chain(load_chain("epi", overrides=OFF), header, acqs)
    assert len(out) == 1
    assert _nrmse(out[0].data[0, 0], truth) < 1e-3
    # without the correction (ghost correction switched off by dropping the references) the ghost stays
    uncorrected = run_chain(load_chain("epi", overrides=OFF), header, acqs[3:])
    assert _nrmse(uncorrected[0].data[0, 0], truth) > 0.1


def test_cartesian_chain_completes_partial_fourier() -> None:
    y, x = torch.meshgrid(torch.linspace(-1, 1, N), torch.linspace(-1, 1, N), indexing="ij")
    img = ellipse_image(N) * torch.exp(1j * (0.6 * x + 0.4 * y**2))
    k = fft.fftnc(img.to(torch.complex64)[None]).numpy()
    lines = range(0, N // 2 + N // 8)  # 5/8 partial Fourier
    header = make_header((N, N))
    acqs = cartesian_acquisitions(k, lines=lines)
    truth = img.abs().numpy()
    full = run_chain(load_chain("cartesian", overrides=OFF), header, acqs)[0].data[0, 0]
    zero_filled = run_chain(
        load_chain("cartesian", overrides={**OFF, "partial_fourier": {"iterations": 1}}), header, acqs
    )[0].data[0, 0]
    assert _nrmse(full, truth) < 0.02
    assert _nrmse(full, truth) < 0.5 * _nrmse(zero_filled, truth)


@pytest.mark.parametrize(("kind", "oversampled"), [("radial", False), ("radial", True), ("spiral", False)])
def test_noncartesian_chains_reconstruct(kind: str, oversampled: bool) -> None:
    traj = trajectories.radial(100, 2 * N, N) if kind == "radial" else trajectories.spiral(16, 1500, N)
    coords = traj.reshape(-1, 2).numpy()
    single = ellipse_kspace(coords[:, 0], coords[:, 1], N).numpy().reshape(traj.shape[:2])
    data = single[None]  # one coil: the exact k-space of the phantom
    header = make_header((N, N), n_coils=1, trajectory=kind)
    if oversampled:  # as unisono's radial protocol: encoded matrix and FOV twice the recon ones
        enc = header.encoding[0].encodedSpace
        enc.matrixSize.x, enc.matrixSize.y = 2 * N, 2 * N
        enc.fieldOfView_mm.x, enc.fieldOfView_mm.y = 2 * 220.0, 2 * 220.0
    # ISMRMRD-normalised trajectory (|k| <= 0.5 at the encoded resolution, which equals the recon one)
    acqs = trajectory_acquisitions(data, traj.numpy() / N)
    out = run_chain(load_chain(kind, overrides=OFF), header, acqs)
    ky, kx = np.meshgrid(np.arange(N) - N // 2, np.arange(N) - N // 2, indexing="ij")
    reference = fft.ifftnc(ellipse_kspace(kx, ky, N)).abs().numpy().astype(np.float64)
    assert len(out) == 1 and out[0].data.shape == (1, 1, N, N)
    # measured: radial 0.069, spiral 0.137 (gridding; the references cover the full square of k-space)
    assert _nrmse(out[0].data[0, 0], reference) < {"radial": 0.08, "spiral": 0.15}[kind]
    assert out[0].meta["unisono.chain"] == kind


def test_radial_cg_sense_with_coils() -> None:
    S = _sens(N, 4)
    img = ellipse_image(N).to(torch.complex64)
    traj = trajectories.radial(64, 2 * N, N, golden=True)  # undersampled: π/2·N ≈ 100 spokes for Nyquist
    from recon import nufft

    p = nufft.plan(traj.reshape(-1, 2), (N, N), os=2.5, width=8)  # a finer plan than the recon's to simulate
    data = nufft.forward(p, S * img).reshape(4, *traj.shape[:2]).numpy()
    header = make_header((N, N), n_coils=4, trajectory="radial")
    acqs = trajectory_acquisitions(data, traj.numpy() / N)
    truth = (S * img).abs().pow(2).sum(0).sqrt().numpy()
    grid = run_chain(load_chain("radial", overrides=OFF), header, acqs)[0].data[0, 0]
    cg = run_chain(
        load_chain("radial", overrides={**OFF, "nufft": {"method": "cg-sense", "cg_iterations": 15}}),
        header,
        acqs,
    )[0].data[0, 0]
    assert _nrmse(cg, truth) < _nrmse(grid, truth)
    assert _nrmse(cg, truth) < 0.1


def test_sensitivity_weighted_combination_keeps_phase() -> None:
    y, x = torch.meshgrid(torch.linspace(-1, 1, N), torch.linspace(-1, 1, N), indexing="ij")
    img = ellipse_image(N) * torch.exp(1j * 0.8 * x)  # object with a phase ramp
    S = _sens(N, 4)
    S = S / S.abs().pow(2).sum(0).sqrt()  # unit-norm sensitivities: Roemer returns the object itself
    # ESPIRiT fixes the maps' free phase by making coil 0 real; give the true maps the same convention
    S = S * torch.exp(-1j * torch.angle(S[0]))
    k = fft.fftnc(S * img.to(torch.complex64)).numpy()
    header = make_header((N, N), n_coils=4)
    overrides = {**OFF, "combine": {"method": "sensitivity"}, "finish": {"output": "complex"}}
    out = run_chain(load_chain("cartesian", overrides=overrides), header, cartesian_acquisitions(k))
    rec = torch.from_numpy(out[0].data[0, 0])
    inside = (ellipse_image(N) != 0) & ((x / 0.65) ** 2 + (y / 0.85) ** 2 < 1)
    # equal up to one global phase (ESPIRiT maps are referenced to coil 0)
    ref = img.to(torch.complex64)[inside]
    got = rec[inside]
    phase = torch.vdot(got, ref) / torch.vdot(got, got)
    assert float((phase * got - ref).norm() / ref.norm()) < 0.02
    assert out[0].image_type == ismrmrd.IMTYPE_COMPLEX


def test_cartesian_chain_3d_and_averages() -> None:
    from ismrmrd import xsd

    nz, ny, nx = 8, 16, 16
    g = torch.Generator().manual_seed(0)
    vol = torch.randn(2, nz, ny, nx, dtype=torch.complex64, generator=g)
    k = fft.fftnc(vol, (-3, -2, -1)).numpy()
    header = make_header((nx, ny), fov_mm=(160.0, 160.0, 80.0), n_coils=2)
    enc = header.encoding[0]
    enc.encodedSpace.matrixSize.z = enc.reconSpace.matrixSize.z = nz
    enc.encodingLimits.kspace_encoding_step_2 = xsd.limitType(minimum=0, maximum=nz - 1, center=nz // 2)
    acqs = []
    rng = np.random.default_rng(1)
    for kz in range(nz):
        shape = (2, ny, nx)
        noise = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
        for avg in range(2):  # two averages with opposite noise: their mean is the clean line
            part = k[:, kz] + (noise if avg == 0 else -noise)
            for a in cartesian_acquisitions(part):
                a.idx.kspace_encode_step_2 = kz
                a.idx.average = avg
                a.clear_flag(ismrmrd.ACQ_LAST_IN_SLICE)
                acqs.append(a)
    out = run_chain(load_chain("cartesian", overrides=OFF), header, acqs)
    assert len(out) == 1 and out[0].data.shape == (1, nz, ny, nx)
    truth = vol.abs().pow(2).sum(0).sqrt().numpy()
    assert np.allclose(out[0].data[0], truth, atol=1e-4)
