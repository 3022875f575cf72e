"""`unisono serve`: the MRD v1 streaming server (one chain per connection, raw data recorded)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the MRD v1 streaming reconstruction server")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=9002, help="TCP port (default 9002; 0 picks a free one)")
    p.add_argument("--raw-dir", default="unisono-raw", help="where each connection's raw data are recorded")
    p.add_argument("--no-raw", action="store_true", help="do not record raw data")
    p.add_argument("--chains-dir", help="folder of extra chain TOML files clients may name")
    p.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "cuda"), help="torch device (default auto)"
    )
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from gadgets.server import MRDServer
    from recon.device import resolve_device

    device = str(resolve_device(args.device))
    server = MRDServer(
        host=args.host,
        port=args.port,
        raw_dir=None if args.no_raw else args.raw_dir,
        chains_dir=args.chains_dir,
        device=device,
    )
    server.start()
    print(f"unisono serve: listening on {args.host}:{server.port} (device {device})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.stop()
    return 0
