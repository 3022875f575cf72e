#!/usr/bin/env python
"""The three-plane orbital navigator, open loop, on the motion benchmark's nod.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/motion_three_plane.py [RADIUS]   # ~5 min, prints JSON

RADIUS: the yz and zx orbits' k radius (1/m; default the protocol's
``navigator_through_plane_radius``).

gre2d as in ``unisono bench motion`` (matrix 64, TR 100 ms, flip 70 deg, 40 dummy TRs, 9
isochromats) with ``navigator_type = "orbital3"`` before every imaging TR, on the brain
phantom with one slice above and one below the imaged one. The head nods (rx 2 deg, ty 4 mm,
tz 1 mm, 0.3 s and back) without feedback; every estimate is compared with the simulated pose
relative to the reference navigator. Reported: RMS error per component over the scan, at rest
(before the nod), and the estimates at the navigators during the nod. docs/feedback.md.
"""

from __future__ import annotations

import dataclasses
import json
import sys

import numpy as np
import torch

import gadgets
import sequences
import simulator
from gadgets.feedback import decode, is_feedback
from unisono.motion_bench import BenchSettings, imaging_start_s, standard_trajectory
from unisono.scan import make_phantom

COMPONENTS = ("tx_mm", "ty_mm", "tz_mm", "rx_deg", "ry_deg", "rz_deg")


def main(through_plane_radius: float | None = None) -> dict:
    torch.set_num_threads(1)
    settings = BenchSettings(navigator_flip_deg=30.0)  # the open-loop figures were taken at 30 degrees
    if through_plane_radius is not None:
        settings = dataclasses.replace(settings, navigator_through_plane_radius=through_plane_radius)
    built = sequences.build_protocol("gre2d", overrides=settings.overrides())
    site = simulator.load_site(settings.site)
    header = simulator.with_site(built.header, site)
    phantom = make_phantom("brain", built, site, 0, extra_slices=1)
    nod = standard_trajectory("nod", float(built.seq.duration()[0]), imaging_start_s(built))
    acqs = simulator.simulate(
        built.seq, phantom, site, header=header, isochromats_per_voxel=settings.isochromats, motion=nod
    )
    out = gadgets.run_chain(gadgets.load_chain("cartesian-motion"), header, list(acqs), images_only=False)
    rows = []
    for e in (decode(o) for o in out if is_feedback(o)):
        now, ref = nod.transform_at(e.time_s), nod.transform_at(e.reference_time_s or 0.0)
        truth = np.r_[
            np.subtract(now.translation_mm, ref.translation_mm),
            np.subtract(now.rotation_deg, ref.rotation_deg),
        ]
        rows.append((e.time_s, np.r_[e.translation_mm, e.rotation_deg], truth))
    err = np.array([est - truth for _, est, truth in rows])
    rest = np.array([np.abs(est - truth) for t, est, truth in rows if t < nod.times_s[1]])
    moving = [
        {"time_s": t, "estimate": est.round(3).tolist(), "truth": truth.round(3).tolist()}
        for t, est, truth in rows
        if nod.times_s[1] <= t <= nod.times_s[-1] + 0.2
    ]
    return {
        "n_estimates": len(rows),
        "rms_error": dict(zip(COMPONENTS, np.sqrt((err**2).mean(0)).round(3).tolist(), strict=True)),
        "max_abs_error_at_rest": dict(zip(COMPONENTS, rest.max(0).round(3).tolist(), strict=True)),
        "during_the_nod": moving,
        "order": COMPONENTS,
        "through_plane_radius_per_m": built.params["navigator_through_plane_radius"],
        "threads": torch.get_num_threads(),
    }


if __name__ == "__main__":
    print(json.dumps(main(float(sys.argv[1]) if len(sys.argv) > 1 else None), indent=2))
