"""GRAPPA (Griswold et al., MRM 2002): fill skipped k-space lines from their sampled neighbours.

For a uniform undersampling by ``R`` along ky, every missing line sits ``m``
lines (1 ≤ m < R) above a sampled one.  For each ``m`` a linear kernel maps
the (coil × ky-block × kx-width) neighbourhood of sampled points to the
missing point in all coils; the kernels are fitted on the fully sampled
autocalibration (ACS) region by Tikhonov-regularised least squares and then
applied everywhere.  Measured lines (including ACS lines) overwrite the
synthesised ones afterwards (data consistency).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["GrappaKernel", "infer_pattern", "calibrate", "apply", "reconstruct_kspace"]


@dataclass(frozen=True)
class GrappaKernel:
    """Fitted GRAPPA weights.

    Attributes:
        weights: complex (R-1, coil·block·width, coil): one matrix per missing offset m = 1..R-1.
        acceleration: R along ky.
        block: number of sampled source lines per target (even).
        width: kx extent of the kernel (odd).
    """

    weights: torch.Tensor
    acceleration: int
    block: int
    width: int


def infer_pattern(sampled: torch.Tensor) -> tuple[int, int]:
    """(R, phase) of a ky sampling mask: the most common gap > 1 and the most populated residue.

    Gaps of 1 are ignored because a fully sampled ACS block inside the mask
    would otherwise outvote the undersampled periphery.

    Args:
        sampled: bool (ky,) mask of the acquired lines.
    """
    idx = torch.nonzero(sampled.flatten()).flatten()
    if idx.numel() < 2:
        raise ValueError("GRAPPA needs at least two sampled lines to infer the undersampling pattern")
    gaps = torch.diff(idx)
    gaps = gaps[gaps > 1]
    if gaps.numel() == 0:
        return 1, 0
    R = int(torch.mode(gaps).values)
    phase = int(torch.mode(idx % R).values) if R > 1 else 0
    return R, phase


def _source_offsets(m: int, R: int, block: int) -> list[int]:
    # sampled lines around the target: j = -(block/2 - 1) .. block/2 multiples of R, counted from the
    # sampled line m below the target
    return [-m + R * j for j in range(-(block // 2 - 1), block // 2 + 1)]


def _gather(k: torch.Tensor, ys: torch.Tensor, offsets: list[int], width: int) -> torch.Tensor:
    """Sources for target rows ``ys``: (len(ys)·nx, coil·block·width); zeros outside the matrix."""
    nc, ny, nx = k.shape
    half = width // 2
    pad = max(abs(o) for o in offsets)
    kp = torch.nn.functional.pad(k, (half, half, pad, pad))  # zero padding in ky and kx
    rows = []
    for o in offsets:
        rows.append(kp[:, ys + o + pad, :])  # (coil, n_targets, nx + 2 half)
    src = torch.stack(rows, dim=1)  # (coil, block, nt, nx + 2 half)
    src = src.unfold(-1, width, 1)  # (coil, block, nt, nx, width)
    nt = ys.numel()
    return src.permute(2, 3, 0, 1, 4).reshape(nt * nx, nc * len(offsets) * width)


def calibrate(
    acs: torch.Tensor, acceleration: int, block: int = 4, width: int = 5, lamda: float = 1e-4
) -> GrappaKernel:
    """Fit GRAPPA kernels on fully sampled calibration data.

    Args:
        acs: complex (coil, ky_acs, kx) fully sampled calibration region.
        acceleration: undersampling factor R along ky (≥ 2).
        block: sampled source lines per target (even, ≥ 2).
        width: kernel width along kx (odd).
        lamda: Tikhonov weight relative to the mean eigenvalue of SᴴS.

    Returns:
        The fitted :class:`GrappaKernel`.
    """
    if acceleration < 2:
        raise ValueError(f"acceleration must be >= 2 for GRAPPA, got {acceleration}")
    if block < 2 or block % 2 or width < 1 or width % 2 == 0:
        raise ValueError(f"block must be even >= 2 and width odd >= 1, got block={block}, width={width}")
    nc, ny, nx = acs.shape
    weights = []
    for m in range(1, acceleration):
        offs = _source_offsets(m, acceleration, block)
        lo, hi = -min(offs), max(offs)
        ys = torch.arange(lo, ny - hi, device=acs.device)
        if ys.numel() < 1:
            raise ValueError(
                f"calibration region of {ny} lines is too small for R={acceleration}, block={block} "
                f"(needs > {hi + lo} lines)"
            )
        S = _gather(acs, ys, offs, width)
        half = width // 2
        # only targets whose kx neighbourhood lies inside the calibration region
        keep = torch.zeros(ys.numel(), nx, dtype=torch.bool, device=acs.device)
        keep[:, half : nx - half] = True
        S = S[keep.flatten()]
        T = acs[:, ys, :].permute(1, 2, 0).reshape(-1, nc)[keep.flatten()]
        AhA = S.conj().T @ S
        reg = lamda * torch.real(torch.trace(AhA)) / AhA.shape[0]
        AhA = AhA + reg * torch.eye(AhA.shape[0], dtype=AhA.dtype, device=AhA.device)
        weights.append(torch.linalg.solve(AhA, S.conj().T @ T))
    return GrappaKernel(torch.stack(weights), acceleration, block, width)


def apply(k: torch.Tensor, kernel: GrappaKernel, phase: int) -> torch.Tensor:
    """Synthesise every line not on the pattern ``y ≡ phase (mod R)`` of zero-filled k-space.

    Args:
        k: complex (coil, ky, kx) k-space with (at least) the pattern lines filled.
        kernel: fitted weights.
        phase: residue of the sampled lines modulo R.

    Returns:
        complex (coil, ky, kx) k-space with the missing lines filled (pattern lines unchanged).
    """
    nc, ny, nx = k.shape
    R = kernel.acceleration
    out = k.clone()
    y = torch.arange(ny, device=k.device)
    pattern = torch.zeros(ny, dtype=torch.bool, device=k.device)
    pattern[phase::R] = True
    only_pattern = torch.where(pattern[None, :, None], k, torch.zeros((), dtype=k.dtype, device=k.device))
    for m in range(1, R):
        ys = y[((y - phase) % R) == m]
        if ys.numel() == 0:
            continue
        S = _gather(only_pattern, ys, _source_offsets(m, R, kernel.block), kernel.width)
        out[:, ys, :] = (S @ kernel.weights[m - 1]).reshape(ys.numel(), nx, nc).permute(2, 0, 1)
    return out


def reconstruct_kspace(
    k: torch.Tensor,
    sampled: torch.Tensor,
    acs: torch.Tensor,
    acceleration: int | None = None,
    block: int = 4,
    width: int = 5,
    lamda: float = 1e-4,
) -> torch.Tensor:
    """GRAPPA-complete undersampled 2D k-space.

    Args:
        k: complex (coil, ky, kx) zero-filled k-space.
        sampled: bool (ky,) mask of the acquired lines in ``k`` (may include extra ACS lines).
        acs: complex (coil, ky_acs, kx) fully sampled calibration block.
        acceleration: R; inferred from ``sampled`` when None.

    Returns:
        complex (coil, ky, kx) k-space: GRAPPA-synthesised lines, measured lines kept.
    """
    if k.ndim != 3 or acs.ndim != 3 or sampled.shape != k.shape[1:2]:
        raise ValueError(
            f"expected k (coil, ky, kx), sampled (ky,), acs (coil, ky_acs, kx); got {tuple(k.shape)}, "
            f"{tuple(sampled.shape)}, {tuple(acs.shape)}"
        )
    R, phase = infer_pattern(sampled)
    if acceleration is not None:
        R = acceleration
    if R < 2:
        return k
    kernel = calibrate(acs, R, block, width, lamda)
    out = apply(k, kernel, phase)
    return torch.where(sampled[None, :, None], k, out)
