"""`unisono send RAW.h5 -o OUT.h5`: stream an MRD raw file to an MRD v1 server and save the images."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from unisono.commands.recon import add_export_options

log = logging.getLogger("unisono.send")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("send", help="send an MRD raw file to a streaming server (unisono, Gadgetron, FIRE)")
    p.add_argument("raw", help="MRD raw data file (HDF5)")
    p.add_argument("-o", "--output", required=True, help="MRD image file to write")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9002)
    p.add_argument(
        "--chain",
        default="auto",
        help="chain (config file) name the server should run; auto: by the header's trajectory",
    )
    p.add_argument("--chain-file", help="send this chain TOML as config text instead of a name")
    add_export_options(p)
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    import sys

    import ismrmrd

    from gadgets.client import RemoteChainError, send_stream
    from gadgets.mrdfile import read_raw
    from unisono.commands.recon import export_all

    chain_text = Path(args.chain_file).read_text(encoding="utf-8") if args.chain_file else None
    header, acqs = read_raw(args.raw)
    chain = args.chain
    if chain == "auto" and chain_text is None:
        from gadgets.chain import chain_for_header

        chain = chain_for_header(header)
    nbytes = sum(a.data.nbytes for a in acqs)
    t0 = time.perf_counter()
    try:
        items = send_stream(header, acqs, args.host, args.port, chain=chain, chain_text=chain_text)
    except (RemoteChainError, ConnectionError) as exc:
        print(f"unisono send: error: {exc}", file=sys.stderr)
        return 1
    dt = time.perf_counter() - t0
    images = [i for i in items if isinstance(i, ismrmrd.Image)]
    log.info(
        "sent %d readouts (%.1f MB) in %.2f s (%.1f MB/s); received %d image(s)",
        len(acqs),
        nbytes / 1e6,
        dt,
        nbytes / 1e6 / dt if dt > 0 else float("inf"),
        len(images),
    )
    export_all(images, header, args)
    return 0
