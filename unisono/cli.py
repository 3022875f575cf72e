"""`unisono` entry point.

Each subcommand lives in its own module under ``unisono.commands`` and exposes
``register(subparsers)``; heavy imports (torch, pypulseq) happen inside the
handlers so that ``unisono --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from unisono import __version__

#: subcommand modules, in the order `--help` lists them
COMMAND_MODULES = (
    "demo",
    "sequence",
    "simulate",
    "scan",
    "recon",
    "serve",
    "send",
    "harmonize",
    "bench",
)


class UserError(Exception):
    """A problem with the user's input: printed as one sentence, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unisono",
        description="Vendor-agnostic MRI acquisition, Bloch virtual scanner, online reconstruction "
        "and harmonization.",
    )
    parser.add_argument("--version", action="version", version=f"unisono {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"unisono.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"unisono.commands.{name}":
                continue  # capability not shipped yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0
    try:
        return int(args.handler(args) or 0)
    except (UserError, ValueError, FileNotFoundError) as exc:
        print(f"unisono {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
