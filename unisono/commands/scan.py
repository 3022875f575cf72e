"""`unisono scan`: the virtual scanner streaming live to a reconstruction server."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "scan",
        help="build a protocol, Bloch-simulate it and stream it live to an MRD server",
        description="The virtual scanner: builds PROTOCOL, simulates it at a site and streams the "
        "acquisitions as they are produced to a unisono server (its own in-process one unless "
        "--server is given); writes the images to DIR.",
    )
    p.add_argument("protocol", help="protocol name (see `unisono sequence list`)")
    p.add_argument("--system", default="generic", help="hardware profile (default generic)")
    p.add_argument("--site", required=True, help="site name or site TOML file")
    p.add_argument("--subject", type=int, default=0, help="digital subject number (brain phantom)")
    p.add_argument("--phantom", default="brain", help="brain, shepp-logan or FILE.h5")
    p.add_argument("--motion", help="motion: still, drift, step, jerk or a motion file")
    p.add_argument("--server", metavar="HOST:PORT", help="stream to this server instead of an in-process one")
    p.add_argument(
        "--chain",
        default=None,
        help="chain the server runs (default cartesian, or cartesian-motion with --feedback on)",
    )
    p.add_argument(
        "--feedback",
        choices=("on", "off"),
        default="off",
        help="on: apply the server's motion feedback to the following blocks (prospective "
        "correction); off: ignore it (default). See docs/feedback.md",
    )
    p.add_argument("--realtime", action="store_true", help="stream at acquisition pace")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="protocol override")
    p.add_argument("--isochromats", type=int, default=4, help="isochromats per voxel")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from recon.device import resolve_device
    from unisono.options import parse_key_values
    from unisono.scan import ScanRequest, run_scan

    request = ScanRequest(
        protocol=args.protocol,
        site=args.site,
        out=args.out,
        system=args.system,
        overrides=parse_key_values(args.set),
        subject=args.subject,
        phantom=args.phantom,
        motion=args.motion,
        server=args.server,
        chain=args.chain or ("cartesian-motion" if args.feedback == "on" else "cartesian"),
        feedback=args.feedback == "on",
        realtime=args.realtime,
        device=str(resolve_device(args.device)),
        isochromats_per_voxel=args.isochromats,
    )
    run_scan(request, print_fn=lambda line: print(line, flush=True))
    return 0
