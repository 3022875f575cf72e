"""`unisono bench sim`: time the virtual scanner on a 2D GRE of the brain phantom.

Spin-steps count the per-isochromat updates the engine performs: one per ADC sample, per RF
raster step and per merged free-precession interval, for every isochromat. Threads are those
torch uses (``torch.get_num_threads()``; set OMP_NUM_THREADS, or ``threads=``).
"""

from __future__ import annotations

import os
import platform
import statistics
import time


def run_benchmark(
    device: str = "auto",
    repeats: int = 3,
    matrix: int = 128,
    site: str = "siteA",
    isochromats: int = 4,
    spins: int = 8,
    protocol: str = "gre2d",
    threads: int | None = None,
    **overrides: object,
) -> dict:
    """Simulate ``protocol`` (matrix x matrix) on the brain phantom at ``site``; return timings.

    ``isochromats`` per voxel set the cost of every ADC sample, ``spins`` per isochromat the cost
    of RF and precession (see docs/simulator.md).

    Returns a JSON-ready dict: median/min wall time (s) of ``simulate`` (phantom and sequence
    construction excluded), spin-steps, spin-steps per second, sizes, device and threads.
    """
    import torch

    import sequences
    from simulator import brain_phantom, load_site, simulate
    from simulator.phantom_spec import stack_placement
    from simulator.scanner import resolve_device

    if threads is not None:
        torch.set_num_threads(int(threads))
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats={repeats!r} must be a positive integer")
    dev = resolve_device(device)
    site_obj = load_site(site)
    built = sequences.build_protocol(protocol, overrides={"matrix": int(matrix), **overrides})
    params = built.params
    gap, z_offset = stack_placement(built.seq)
    phantom = brain_phantom(
        field_T=site_obj.field_T,
        fov_m=float(params.get("fov", 0.22)),
        matrix=int(matrix),
        slice_thickness_m=float(params.get("slice_thickness", 0.005)),
        n_slices=int(params.get("n_slices", 1)),
        slice_gap_m=gap,
    )
    phantom.offset_m = (0.0, 0.0, z_offset)
    walls = []
    cpus = []
    stats: dict = {}
    for _ in range(repeats):
        stats = {}
        c0 = time.process_time()
        t0 = time.perf_counter()
        acqs = simulate(
            built.seq,
            phantom,
            site_obj,
            header=built.header,
            device=dev,
            isochromats_per_voxel=int(isochromats),
            spins_per_isochromat=int(spins),
            stats=stats,
        )
        n_acq = sum(1 for _ in acqs)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    median = statistics.median(walls)
    return {
        "benchmark": "simulator",
        "protocol": protocol,
        "matrix": int(matrix),
        "site": site_obj.name,
        "coils": site_obj.n_coils,
        "isochromats_per_voxel": int(isochromats),
        "spins_per_isochromat": int(spins),
        "isochromats": stats["n_isochromats"],
        "spins": stats["n_spins"],
        "blocks": stats["n_blocks"],
        "acquisitions": n_acq,
        "samples_per_acquisition": int(params.get("matrix", matrix))
        * int(params.get("readout_oversampling", 1)),
        "spin_steps": stats["spin_steps"],
        "wall_s_median": round(median, 4),
        "wall_s_min": round(min(walls), 4),
        # process CPU time: on a shared machine wall time includes waiting for other jobs
        "cpu_s_median": round(statistics.median(cpus), 4),
        "spin_steps_per_s": float(f"{stats['spin_steps'] / median:.4g}"),
        "spin_steps_per_cpu_s": float(f"{stats['spin_steps'] / statistics.median(cpus):.4g}"),
        "repeats": repeats,
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
    }
