"""Reconstruction benchmark (``unisono bench recon``): ESPIRiT + CG-SENSE against BART, single-threaded.

Data: BART's own 8-coil phantom (``bart phantom -x 128 -s 8 -k``), complex
Gaussian noise (σ = 5 per component, seed 0; the k-space peaks at ~5800),
undersampled by R along ky with a fully sampled centre of ``acs`` lines.
Truth: root-sum-of-squares of the noiseless, fully sampled coil images.

* BART: ``bart ecalib -m1`` then ``bart pics -l2 -r 0.01`` (process start
  included, ``OMP_NUM_THREADS=1``).
* unisono: :func:`recon.espirit.espirit_maps` + :func:`recon.sense.cg_sense`
  (λ = 0.01, 30 iterations), ``torch.set_num_threads(1)``.
* also GRAPPA (same data) and radial NUFFT gridding (analytic phantom,
  ⌈π·N/2⌉ spokes × 2N samples, plan + density compensation + gridding).

NRMSE is measured after the least-squares scaling of each magnitude image to the truth.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recon import espirit, fft, grappa, noncartesian, nufft, sense, trajectories
from recon.bart import bart_available, read_cfl, run_bart, write_cfl
from recon.coils import rss
from recon.device import resolve_device
from recon.phantom import ellipse_kspace

__all__ = ["run_benchmark"]


def _nrmse(a: np.ndarray, ref: np.ndarray) -> float:
    a = np.abs(np.asarray(a)).astype(np.float64)
    s = float((a * ref).sum() / (a * a).sum())
    return float(np.linalg.norm(s * a - ref) / np.linalg.norm(ref))


def _median_time(fn: Any, repeats: int, sync: Any = None) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        if sync is not None:
            sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def run_benchmark(
    device: str = "auto",
    repeats: int = 5,
    matrix: int = 128,
    coils: int = 8,
    acceleration: int = 2,
    acs: int = 24,
    noise: float = 5.0,
    **_: Any,
) -> dict[str, Any]:
    """Run the benchmark; returns a JSON-serialisable dict."""
    dev = resolve_device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else None
    threads_before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result: dict[str, Any] = {
            "benchmark": "recon",
            "device": str(dev),
            "matrix": matrix,
            "coils": coils,
            "acceleration": acceleration,
            "acs_lines": acs,
            "noise_sigma": noise,
            "torch_threads": 1,
        }
        with tempfile.TemporaryDirectory(prefix="unisono-bench-recon-") as tmpname:
            tmp = Path(tmpname)
            if not bart_available():
                raise RuntimeError(
                    "bart is not installed (apt-get install bart); the benchmark compares with it"
                )
            run_bart("phantom", "-x", str(matrix), "-s", str(coils), "-k", str(tmp / "k"))
            clean = read_cfl(tmp / "k").reshape(coils, matrix, matrix)
            rng = np.random.default_rng(0)
            noisy = (
                clean + noise * (rng.standard_normal(clean.shape) + 1j * rng.standard_normal(clean.shape))
            ).astype(np.complex64)
            truth = coils_rss(clean)
            mask = np.zeros(matrix, dtype=bool)
            mask[::acceleration] = True
            mask[matrix // 2 - acs // 2 : matrix // 2 + acs // 2] = True
            ku = noisy * mask[None, :, None]
            write_cfl(tmp / "ku", ku[:, None])

            def bart_run() -> np.ndarray:
                run_bart("ecalib", "-m1", str(tmp / "ku"), str(tmp / "sens"))
                run_bart("pics", "-l2", "-r", "0.01", str(tmp / "ku"), str(tmp / "sens"), str(tmp / "pics"))
                return read_cfl(tmp / "pics")

            t_bart, out_bart = _median_time(bart_run, repeats)
            result["bart_ecalib_pics"] = {"seconds": t_bart, "nrmse": _nrmse(out_bart, truth)}

        kt = torch.from_numpy(ku).to(dev)
        mt = torch.from_numpy(mask).to(dev)[:, None].expand(matrix, matrix)

        def ours() -> torch.Tensor:
            maps, _ = espirit.espirit_maps(kt, calib_size=acs)
            return sense.cg_sense(kt, maps, mt, lamda=0.01, max_iter=30).x

        ours()  # warm-up (kernel selection, allocations)
        t_ours, x = _median_time(ours, repeats, sync)
        t_maps, _ = _median_time(lambda: espirit.espirit_maps(kt, calib_size=acs), repeats, sync)
        result["unisono_espirit_cg_sense"] = {
            "seconds": t_ours,
            "seconds_espirit": t_maps,
            "nrmse": _nrmse(x.cpu().numpy(), truth),
        }
        result["speedup_vs_bart"] = t_bart / t_ours

        mline = torch.from_numpy(mask).to(dev)
        acs_block = torch.from_numpy(noisy).to(dev)[:, matrix // 2 - acs // 2 : matrix // 2 + acs // 2]
        t_g, kg = _median_time(lambda: grappa.reconstruct_kspace(kt, mline, acs_block), repeats, sync)
        result["unisono_grappa"] = {
            "seconds": t_g,
            "nrmse": _nrmse(rss(fft.ifftnc(kg)).cpu().numpy(), truth),
        }

        spokes = math.ceil(math.pi * matrix / 2)
        traj = trajectories.radial(spokes, 2 * matrix, matrix).reshape(-1, 2)
        y = ellipse_kspace(traj[:, 0].numpy(), traj[:, 1].numpy(), matrix).to(dev)
        traj = traj.to(dev)

        def radial() -> torch.Tensor:
            p = nufft.plan(traj, (matrix, matrix))
            return noncartesian.gridding(y, p, noncartesian.density_compensation(p))

        radial()
        t_r, img = _median_time(radial, repeats, sync)
        ky, kx = np.meshgrid(np.arange(matrix) - matrix // 2, np.arange(matrix) - matrix // 2, indexing="ij")
        cart = fft.ifftnc(ellipse_kspace(kx, ky, matrix)).abs().numpy().astype(np.float64)
        result["unisono_radial_gridding"] = {
            "seconds": t_r,
            "spokes": spokes,
            "samples_per_spoke": 2 * matrix,
            "nrmse_vs_cartesian": _nrmse(img.cpu().numpy(), cart),
        }
        result["goal"] = "ESPIRiT + SENSE no slower than bart ecalib + bart pics, at equal or better NRMSE"
        return result
    finally:
        torch.set_num_threads(threads_before)


def coils_rss(k: np.ndarray) -> np.ndarray:
    """RSS image (float64) of fully sampled (coil, ky, kx) k-space."""
    return rss(fft.ifftnc(torch.from_numpy(k.astype(np.complex64)))).numpy().astype(np.float64)
