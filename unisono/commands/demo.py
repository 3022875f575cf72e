"""`unisono demo`: the main job on embedded defaults."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="build a GRE, scan one subject at two virtual sites, reconstruct over MRD, harmonize",
        description="Builds the default 2D GRE with pypulseq, Bloch-simulates it on the MNI152 brain "
        "phantom at two virtual sites, streams each site's raw data over a loopback MRD connection "
        "to the default chain, and writes .seq, raw and image MRD files, NIfTI, a figure and "
        "summary.json.",
    )
    p.add_argument("--out", type=Path, default=Path("unisono-demo"), help="output folder")
    p.add_argument("--matrix", type=int, default=64, help="in-plane matrix (default 64, the profile's)")
    p.add_argument(
        "--profile",
        default=None,
        help="harmonization profile (default: unisono.demo.DEMO_PROFILE, learned on traveling "
        "subjects of this protocol)",
    )
    p.add_argument("--sites", default="siteA,siteB", help="comma-separated site names or files")
    p.add_argument("--subject", type=int, default=0, help="digital subject number")
    p.add_argument("--isochromats", type=int, default=4, help="isochromats per voxel")
    p.add_argument("--spins", type=int, default=16, help="spins per isochromat (spoiling accuracy)")
    p.add_argument("--system", default="generic", help="hardware profile the sequence is built for")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from recon.device import resolve_device
    from unisono.demo import DEMO_PROFILE, DemoConfig, run_demo

    sites = tuple(s.strip() for s in args.sites.split(",") if s.strip())
    if len(sites) < 2:
        raise ValueError(f"--sites needs at least two sites to compare, got {args.sites!r}")
    config = DemoConfig(
        out=args.out,
        matrix=args.matrix,
        sites=sites,
        subject=args.subject,
        isochromats_per_voxel=args.isochromats,
        spins_per_isochromat=args.spins,
        system=args.system,
        harmonization_profile=args.profile or DEMO_PROFILE,
        device=str(resolve_device(args.device)),
    )
    run_demo(config, print_fn=lambda line: print(line, flush=True))
    return 0
