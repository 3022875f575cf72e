"""`unisono serve`: the MRD v1 streaming server (one chain per connection, raw data recorded)."""

from __future__ import annotations

import argparse
import signal
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gadgets.limits import ServerLimits


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
    # Defaults are None here and come from gadgets.limits.ServerLimits (importing gadgets would make
    # `unisono --help` slow); the numbers in the help text are checked against it by the tests.
    lim = p.add_argument_group("limits (see docs/server.md)")
    lim.add_argument(
        "--max-message-mb", type=float, help="largest acquisition/waveform/image message, MiB (64)"
    )
    lim.add_argument("--max-text-mb", type=float, help="largest XML header / config / text message, MiB (4)")
    lim.add_argument(
        "--max-connections", type=int, help="connections served at once; more are refused with an error (16)"
    )
    lim.add_argument("--idle-timeout", type=float, help="seconds a connection may stay silent (300)")
    lim.add_argument("--message-timeout", type=float, help="seconds to receive one started message (120)")
    lim.add_argument("--queue-size", type=int, help="cap on items queued before each gadget (64)")
    lim.add_argument(
        "--shutdown-grace", type=float, help="seconds in-flight connections get on SIGTERM/SIGINT (30)"
    )
    lim.add_argument(
        "--max-voxels", type=int, help="largest encoded matrix (x*y*z) a header may announce (268435456)"
    )
    lim.add_argument(
        "--strict-counters",
        action="store_true",
        help="reject acquisitions whose encoding counters are outside the header's encodingLimits",
    )
    p.set_defaults(handler=_run)


def limits_from_args(args: argparse.Namespace) -> ServerLimits:
    """The :class:`~gadgets.limits.ServerLimits` the flags describe (ValueError names a bad flag)."""
    from gadgets.limits import MIB, ServerLimits

    d = ServerLimits()
    mb = {}
    for flag, value in (("--max-message-mb", args.max_message_mb), ("--max-text-mb", args.max_text_mb)):
        if value is not None and not value > 0:
            raise ValueError(f"{flag} must be a positive number of MiB, got {value}")
        mb[flag] = None if value is None else int(value * MIB)

    def pick(value: object, default: object) -> object:
        return default if value is None else value

    try:
        return ServerLimits(
            max_message_bytes=pick(mb["--max-message-mb"], d.max_message_bytes),
            max_text_bytes=pick(mb["--max-text-mb"], d.max_text_bytes),
            max_connections=pick(args.max_connections, d.max_connections),
            idle_timeout_s=pick(args.idle_timeout, d.idle_timeout_s),
            message_timeout_s=pick(args.message_timeout, d.message_timeout_s),
            max_queue_items=pick(args.queue_size, d.max_queue_items),
            shutdown_grace_s=pick(args.shutdown_grace, d.shutdown_grace_s),
            max_encoded_voxels=pick(args.max_voxels, d.max_encoded_voxels),
            strict_counters=bool(args.strict_counters),
        )
    except ValueError as exc:
        # name the flag the user typed, not only the dataclass field
        field = str(exc).split(" ", 1)[0]
        raise ValueError(f"{_FLAGS.get(field, field)}: {exc}") from None


#: ServerLimits field -> the `unisono serve` flag that sets it
_FLAGS = {
    "max_message_bytes": "--max-message-mb",
    "max_text_bytes": "--max-text-mb",
    "max_connections": "--max-connections",
    "idle_timeout_s": "--idle-timeout",
    "message_timeout_s": "--message-timeout",
    "max_queue_items": "--queue-size",
    "shutdown_grace_s": "--shutdown-grace",
    "max_encoded_voxels": "--max-voxels",
}


def _run(args: argparse.Namespace) -> int:
    from gadgets.memory import keep_large_blocks
    from gadgets.server import MRDServer
    from recon.device import resolve_device

    keep_large_blocks()  # before any chain thread allocates (see gadgets.memory)

    device = str(resolve_device(args.device))
    server = MRDServer(
        host=args.host,
        port=args.port,
        raw_dir=None if args.no_raw else args.raw_dir,
        chains_dir=args.chains_dir,
        device=device,
        limits=limits_from_args(args),
    )
    signals: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        # flags only: the main loop does the work (no locks or I/O inside a signal handler)
        signals.append(signum)
        server.request_stop(force=len(signals) > 1)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.start()
        print(f"unisono serve: listening on {args.host}:{server.port} (device {device})", flush=True)
        while not server.stop_requested:
            time.sleep(0.2)
        name = signal.Signals(signals[0]).name if signals else "request"
        print(
            f"unisono serve: {name}: stopping; {server.active_connections} connection(s) in flight get "
            f"{server.limits.shutdown_grace_s:g} s (a second signal ends them now)",
            flush=True,
        )
        server.stop()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    print(f"unisono serve: stopped; {len(server.raw_files)} raw file(s) recorded", flush=True)
    return 0
