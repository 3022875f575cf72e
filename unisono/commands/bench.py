"""`unisono bench KIND`: run one of the project's benchmarks and print its JSON.

The benchmark code lives next to what it measures (``<package>/benchmark.py``,
``run_benchmark(**options) -> dict``); ``benchmarks/*.py`` are thin scripts
over the same functions, and results are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import importlib
import json

#: benchmark kind -> module that provides run_benchmark(**options)
BENCHMARKS = {
    "sim": "simulator.benchmark",
    "recon": "recon.benchmark",
    "stream": "gadgets.benchmark",
    "harmonize": "harmonize.benchmark",
    "motion": "unisono.motion_bench",
    "soak": "gadgets.soak",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="run a benchmark and print JSON (see docs/benchmarks.md)")
    p.add_argument("kind", choices=sorted(BENCHMARKS), help="what to measure")
    p.add_argument("--json", action="store_true", help="print JSON only (no human summary)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions (median reported)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="benchmark-specific option (repeatable), e.g. --set matrix=128",
    )
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from unisono.options import parse_key_values

    module = importlib.import_module(BENCHMARKS[args.kind])
    result = module.run_benchmark(device=args.device, repeats=args.repeats, **parse_key_values(args.set))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in _flatten(result):
            print(f"{key:48s} {value}")
    return 0


def _flatten(tree: object, prefix: str = ""):
    """Yield (dotted.key, leaf) pairs of a nested dict for the human-readable listing."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _flatten(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, tree
