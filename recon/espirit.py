"""ESPIRiT coil sensitivity maps (Uecker et al., MRM 2014), one set of maps.

1. The calibration matrix of all (coil × k × k) patches of the fully sampled
   k-space centre is decomposed by SVD; the right singular vectors above
   ``threshold · σ_max`` span the signal subspace (the "kernels").
2. In image space the projection onto that subspace becomes, per pixel, a
   small (coil × coil) matrix ``G(r) = Σ_v ṽ(r) ṽ(r)ᴴ / k²`` whose eigenvector
   with eigenvalue ≈ 1 is the coil sensitivity vector at ``r``.
3. Maps with eigenvalue below ``crop`` are zeroed (outside the object),
   and the phase is referenced to the first coil.
"""

from __future__ import annotations

import torch

from recon.fft import ifftnc
from recon.oversampling import crop_center

__all__ = ["calibration_matrix", "espirit_maps"]


def calibration_matrix(calib: torch.Tensor, kernel: int) -> torch.Tensor:
    """Rows = every k×k patch of the calibration data; columns = coil·k·k.

    Args:
        calib: complex (coil, ny, nx) calibration region.
        kernel: patch size k.

    Returns:
        complex ((ny-k+1)(nx-k+1), coil·k·k).
    """
    nc, ny, nx = calib.shape
    if ny < kernel or nx < kernel:
        raise ValueError(f"calibration region {ny}x{nx} is smaller than the kernel size {kernel}")
    patches = calib.unfold(1, kernel, 1).unfold(2, kernel, 1)  # (coil, py, px, k, k)
    return patches.permute(1, 2, 0, 3, 4).reshape(-1, nc * kernel * kernel)


def espirit_maps(
    k: torch.Tensor,
    calib_size: int = 24,
    kernel: int = 6,
    threshold: float = 0.02,
    crop: float = 0.95,
    calib: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ESPIRiT sensitivity maps for 2D k-space.

    Args:
        k: complex (coil, ny, nx) k-space (centre at n//2); its central
            ``calib_size`` square is used for calibration unless ``calib`` is given.
        calib_size: side of the calibration square (lines × samples).
        kernel: kernel size k (BART's default 6).
        threshold: singular-value cut relative to σ_max (0.02 as in the ESPIRiT paper; with
            noisy data a cut as low as BART's 0.001 lets noise vectors into the subspace here).
        crop: eigenvalue below which maps are set to zero (BART's ``-c`` is 0.8; 0.95 trims the
            background more tightly, which lowered the SENSE error on BART's own phantom).
        calib: complex (coil, cy, cx) fully sampled calibration data (overrides the crop of ``k``).

    Returns:
        (maps, eigenvalues): complex (coil, ny, nx) maps and real (ny, nx) top eigenvalue.
    """
    nc, ny, nx = k.shape
    if calib is None:
        calib = crop_center(crop_center(k, min(calib_size, ny), 1), min(calib_size, nx), 2)
    A = calibration_matrix(calib, kernel)
    _, s, vh = torch.linalg.svd(A, full_matrices=False)
    nv = int((s > threshold * s[0]).sum())
    # A = U Σ Vᴴ: every patch (a row of A) is a combination of the rows w_v of Vᴴ, so those rows,
    # taken as plain vectors, span the signal subspace; P = Σ_v w_v w_vᴴ projects onto it.
    W = vh[:nv].T  # (coil·k·k, nv)
    P = (W @ W.conj().T).reshape(nc, kernel, kernel, nc, kernel, kernel)
    # Per pixel, G(r)[c, c'] = Σ_v ṽ_c(r) conj(ṽ_c'(r)) with ṽ_c(r) = Σ_d w_{c,d} exp(+2πi d·r/N)
    #                        = Σ_δ C[c, c'](δ) exp(+2πi δ·r/N),  C(δ) = Σ_{d - d' = δ} P[(c, d), (c', d')],
    # so G is the inverse DFT of a (2k-1)² correlation: nc² FFTs instead of nv·nc, and no large matmul.
    m = 2 * kernel - 1
    C = torch.zeros(nc, nc, m, m, dtype=k.dtype, device=k.device)
    for dy in range(kernel):
        for dx in range(kernel):
            # offsets δ = d - d' + (k-1) for d' = k-1..0 are the slice dy..dy+k-1 in reversed d' order
            C[:, :, dy : dy + kernel, dx : dx + kernel] += torch.flip(P[:, dy, dx], dims=(-2, -1))
    grid = torch.zeros(nc, nc, ny, nx, dtype=k.dtype, device=k.device)
    y0, x0 = ny // 2 - (kernel - 1), nx // 2 - (kernel - 1)
    grid[:, :, y0 : y0 + m, x0 : x0 + m] = C
    # ifftnc is orthonormal: times sqrt(N) gives the plain DFT sum; / k² scales eigenvalues to ≤ 1.
    G = ifftnc(grid, (-2, -1)) * ((ny * nx) ** 0.5 / kernel**2)
    G = G.permute(2, 3, 0, 1)  # (ny, nx, coil, coil), Hermitian
    evals, evecs = torch.linalg.eigh(G)
    top = evals[..., -1].real
    maps = evecs[..., :, -1]  # eigenvectors are the columns: (ny, nx, coil)
    # Reference the phase to the first coil, as BART does, so maps are smooth across pixels.
    ref = maps[..., :1]
    maps = maps * torch.exp(-1j * torch.angle(ref))
    maps = maps.permute(2, 0, 1)
    maps = torch.where((top > crop)[None], maps, torch.zeros((), dtype=maps.dtype, device=maps.device))
    return maps.contiguous(), top
