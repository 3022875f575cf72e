#!/usr/bin/env python
"""What limits prospective motion correction in the simulation, separately from the estimator.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/motion_limits.py   # ~2 min, prints JSON

Two measurements behind the motion section of docs/benchmarks.md:

* ``speckle``: SSIM between two *noise-free* scans that differ only in the seed of the
  isochromat layout, per protocol setting: how far the finite-spin steady state is from a
  converged one. A pose update reshuffles this speckle, so it bounds what an SSIM recovery
  can show.
* ``nod_true_pose``: the benchmark's nod (rx 2 deg, ty 4 mm, tz 1 mm) with the scanner fed the
  true pose at every block, all six parameters vs the in-plane ones (tx, ty) the projection
  navigators observe: whether the estimate or the feedback loop limits the nod.
* ``nod_true_pose_guard_slices``: the same with one phantom slice above and one below the
  imaged one (``GUARD_SLICES``). The benchmark's phantom is only the 5 mm imaged slab, so
  tissue that a nod tilts out of the slice is replaced by nothing; with the neighbours
  there, fresh (unsaturated) tissue moves in, as in a head.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import torch

import gadgets
import sequences
import simulator
from harmonize import auto_mask
from harmonize.metrics import ssim
from simulator.motion import RigidTransform
from unisono.motion_bench import BenchSettings, imaging_start_s, standard_trajectory
from unisono.scan import make_phantom

#: phantom slices added on each side of the imaged one for ``nod_true_pose_guard_slices``
GUARD_SLICES = 1


class _PoseSpy:
    """A trajectory that remembers the last pose the simulator asked for (the true pose now)."""

    def __init__(self, motion) -> None:
        self.motion, self.last = motion, None

    def transform_at(self, t_s: float) -> RigidTransform:
        self.last = self.motion.transform_at(t_s)
        return self.last


def _scan(
    settings: BenchSettings, site, seed: int = 0, motion=None, correct: str | None = None, guard: int = 0
) -> np.ndarray:
    """Magnitude image of one gre2d scan; ``correct`` names the true-pose parameters fed back;
    ``guard`` phantom slices (of the slice's thickness) lie on each side of the imaged one."""
    built = sequences.build_protocol("gre2d", overrides=settings.overrides())
    header = simulator.with_site(built.header, site)
    phantom = make_phantom("brain", built, site, 0, extra_slices=guard)
    spy = _PoseSpy(motion) if motion is not None else None

    def feedback():
        if spy is None or spy.last is None or correct is None:
            return None
        t = [v if k in correct else 0.0 for v, k in zip(spy.last.translation_mm, "xyz", strict=True)]
        r = [v if k in correct else 0.0 for v, k in zip(spy.last.rotation_deg, "XYZ", strict=True)]
        return RigidTransform(tuple(t), tuple(r))  # type: ignore[arg-type]

    acqs = simulator.simulate(
        built.seq, phantom, site, header=header, isochromats_per_voxel=settings.isochromats,
        seed=seed, motion=spy, feedback=feedback if correct else None,
    )  # fmt: skip
    images = gadgets.run_chain(gadgets.load_chain("cartesian"), header, list(acqs))
    return np.abs(np.asarray(images[0].data, dtype=np.float32)).squeeze()


def main() -> dict:
    torch.set_num_threads(1)
    site = simulator.load_site("siteA")
    quiet = dataclasses.replace(site, noise_sigma=1e-4)  # thermal noise off (prewhitening needs > 0)
    speckle = {}
    for tr, flip, iso in ((20.0, 15.0, 9), (20.0, 15.0, 36), (100.0, 70.0, 9)):
        s = BenchSettings.in_plane(tr_ms=tr, flip_deg=flip, isochromats=iso)
        a, b = _scan(s, quiet, seed=0), _scan(s, quiet, seed=1)
        speckle[f"TR{tr:g}_flip{flip:g}_iso{iso}"] = ssim(a, b, np.asarray(auto_mask(a)))
    s = BenchSettings.in_plane()  # the in-plane navigator these numbers were taken with
    still = _scan(s, site)
    mask = np.asarray(auto_mask(still))
    built = sequences.build_protocol("gre2d", overrides=s.overrides())
    # timed within the imaging part, as in the benchmark (the nod then hits the centre of k-space)
    nod = standard_trajectory("nod", float(built.seq.duration()[0]), imaging_start_s(built))
    nod_true = {
        name: ssim(_scan(s, site, motion=nod, correct=correct), still, mask)
        for name, correct in (("none", None), ("tx_ty", "xy"), ("all_six", "xyzXYZ"))
    }
    still_g = _scan(s, site, guard=GUARD_SLICES)
    mask_g = np.asarray(auto_mask(still_g))
    nod_guard = {
        name: ssim(_scan(s, site, motion=nod, correct=correct, guard=GUARD_SLICES), still_g, mask_g)
        for name, correct in (("none", None), ("all_six", "xyzXYZ"))
    }
    return {
        "speckle_ssim_noise_free_seed0_vs_seed1": speckle,
        "nod_true_pose_every_block_ssim": nod_true,
        "nod_true_pose_guard_slices_ssim": nod_guard,
    }


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
