"""`unisono recon RAW.h5 -o IMAGES.h5`: offline replay of an MRD raw file through a chain (no socket)."""

from __future__ import annotations

import argparse
import logging
import time

log = logging.getLogger("unisono.recon")


def add_chain_options(p: argparse.ArgumentParser) -> None:
    """--chain and --set, shared by recon and send."""
    p.add_argument(
        "--chain",
        default="auto",
        help="shipped chain name, chain TOML file, or auto (default: by the header's trajectory: "
        "cartesian, epi, radial, spiral)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="GADGET.PARAM=VALUE",
        help="override a chain parameter (repeatable), e.g. --set harmonize.enabled=false",
    )


def add_export_options(p: argparse.ArgumentParser) -> None:
    """--nifti and --dicom, shared by recon and send."""
    p.add_argument(
        "--nifti", metavar="DIR", help="also write NIfTI volumes (RAS affine) and JSON sidecars here"
    )
    p.add_argument("--dicom", metavar="DIR", help="also write a DICOM MR series here")


def export_all(images: list, header: object, args: argparse.Namespace) -> None:
    """Write the MRD image file and the optional NIfTI / DICOM exports."""
    from gadgets.mrdfile import write_images

    if not images:
        log.warning("the chain produced no images")
        return
    groups = write_images(args.output, header, images, mode="w")
    log.info("wrote %d image(s) to %s (groups %s)", len(images), args.output, ", ".join(groups))
    if args.nifti:
        from gadgets.export import export_nifti

        for path in export_nifti(images, args.nifti):
            log.info("wrote %s", path)
    if args.dicom:
        from gadgets.dicom import export_dicom

        log.info("wrote %d DICOM file(s) to %s", len(export_dicom(images, args.dicom)), args.dicom)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recon", help="reconstruct an MRD raw file offline through a chain")
    p.add_argument("raw", help="MRD raw data file (HDF5)")
    p.add_argument("-o", "--output", required=True, help="MRD image file to write")
    add_chain_options(p)
    add_export_options(p)
    p.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "cuda"), help="torch device (default auto)"
    )
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    import sys

    from gadgets.chain import chain_for_header, load_chain, parse_overrides
    from gadgets.memory import keep_large_blocks
    from gadgets.mrdfile import read_raw
    from gadgets.runtime import ChainError, run_chain

    keep_large_blocks()  # as the server: the chain's large temporaries are reused (gadgets.memory)
    t0 = time.perf_counter()
    header, acqs = read_raw(args.raw)
    t1 = time.perf_counter()
    name = chain_for_header(header) if args.chain == "auto" else args.chain
    chain = load_chain(name, overrides=parse_overrides(args.set))
    try:
        images = run_chain(chain, header, acqs, device=args.device)
    except ChainError as exc:
        print(f"unisono recon: error: {exc}", file=sys.stderr)
        return 1
    t2 = time.perf_counter()
    log.info(
        "chain %s (sha256 %s): %d readouts read in %.2f s, reconstructed in %.2f s",
        chain.name,
        chain.sha256[:12],
        len(acqs),
        t1 - t0,
        t2 - t1,
    )
    export_all(images, header, args)
    return 0
