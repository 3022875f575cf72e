"""`unisono simulate FILE.seq`: run a Pulseq file on the virtual scanner and write MRD raw data."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger("unisono.simulate")


def register(subparsers) -> None:
    """Add the ``simulate`` subcommand to ``subparsers``."""
    p = subparsers.add_parser(
        "simulate",
        help="Bloch-simulate a Pulseq file on a phantom at a virtual site -> MRD raw file",
        description="Runs any Pulseq 1.4/1.5 file on a digital phantom at a virtual site and writes "
        "the MRD acquisitions a scanner would produce (see docs/simulator.md).",
    )
    p.add_argument("seq", help="Pulseq .seq file (its .mrd.xml header is used when it sits beside it)")
    p.add_argument(
        "--phantom",
        default="brain",
        help="brain | shepp-logan | FILE.h5 (HDF5 phantom format, docs/simulator.md); default brain",
    )
    p.add_argument(
        "--site", default="siteA", help="shipped site name (siteA, siteB, siteC) or a site TOML path"
    )
    p.add_argument("--subject", type=int, default=0, help="brain phantom subject number (0 = template)")
    p.add_argument("--motion", default=None, help="motion file (t tx ty tz rx ry rz) or drift|step|jerk")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--isochromats", type=int, default=4, help="isochromats per phantom voxel (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of isochromat placement and noise")
    p.add_argument(
        "--matrix", type=int, default=None, help="phantom in-plane matrix (default: header recon matrix)"
    )
    p.add_argument("--fov", type=float, default=None, help="phantom in-plane FOV in mm (default: header FOV)")
    p.add_argument("--slices", type=int, default=None, help="phantom slices (default: from the header)")
    p.add_argument("--slice-thickness", type=float, default=None, help="phantom slice spacing in mm")
    p.add_argument("-o", "--output", required=True, help="output MRD HDF5 file")
    p.set_defaults(handler=_handle)


def _header_geometry(header) -> tuple[int, float, int, float]:
    """(matrix, fov_m, n_slices, slice_spacing_m) for the phantom from an MRD header."""
    enc = header.encoding[0]
    rs = enc.reconSpace
    matrix = int(max(rs.matrixSize.x, rs.matrixSize.y))
    fov_m = float(max(rs.fieldOfView_mm.x, rs.fieldOfView_mm.y)) * 1e-3
    nz = int(enc.encodedSpace.matrixSize.z or 1)
    if nz > 1:  # 3-D encoding: the phantom's slices are the partitions
        return matrix, fov_m, nz, float(enc.encodedSpace.fieldOfView_mm.z) * 1e-3 / nz
    lim = enc.encodingLimits.slice
    n_slices = int(lim.maximum) + 1 if lim is not None and lim.maximum is not None else 1
    return matrix, fov_m, n_slices, float(rs.fieldOfView_mm.z) * 1e-3


def _handle(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from simulator import load_site, minimal_header, simulate, with_site, write_raw
    from simulator.motion import parse_motion
    from simulator.phantom_spec import phantom_from_spec, slice_stack
    from simulator.scanner import load_sequence

    site = load_site(args.site)
    seq = load_sequence(args.seq)
    try:
        from sequences import header_for_seq_file

        header = with_site(header_for_seq_file(args.seq), site)
    except ImportError:
        header = minimal_header(seq, site)
    matrix, fov_m, n_slices, thickness = _header_geometry(header)
    z_offset, gap = 0.0, 0.0
    stack = slice_stack(seq)
    if stack is not None and stack.n_slices > 1 and not args.slices and not args.slice_thickness:
        # 2-D multi-slice: one phantom slice per excited slice, at the sequence's positions
        n_slices, thickness, gap = stack.n_slices, stack.thickness_m, stack.gap_m
        z_offset = stack.phantom_offset_m()
    matrix = args.matrix or min(matrix, 256)
    fov_m = args.fov * 1e-3 if args.fov else fov_m
    n_slices = args.slices or n_slices
    thickness = args.slice_thickness * 1e-3 if args.slice_thickness else thickness
    phantom = phantom_from_spec(
        args.phantom, field_T=site.field_T, fov_m=fov_m, matrix=matrix, slice_thickness_m=thickness,
        n_slices=n_slices, subject=args.subject, slice_gap_m=gap,
    )  # fmt: skip
    if Path(args.phantom).suffix in (".h5", ".hdf5"):
        z_offset = 0.0  # a user's phantom keeps its own geometry
    phantom.offset_m = (0.0, 0.0, z_offset)
    duration = float(sum(seq.block_durations.values())) if hasattr(seq, "block_durations") else 0.0
    motion = parse_motion(args.motion, duration) if args.motion else None
    stats: dict = {}
    t0 = time.perf_counter()
    acqs = simulate(
        seq,
        phantom,
        site,
        header=header,
        device=args.device,
        isochromats_per_voxel=args.isochromats,
        seed=args.seed,
        motion=motion,
        stats=stats,
    )
    n = write_raw(args.output, header, acqs)
    log.info(
        "%d acquisitions -> %s (%s, %s, %d spins, %.2f s, %.3g spin-steps/s)",
        n, args.output, phantom.name, site.name, stats.get("n_spins", 0), time.perf_counter() - t0,
        stats.get("spin_steps", 0) / max(stats.get("wall_s", 1e-9), 1e-9),
    )  # fmt: skip
    return 0
