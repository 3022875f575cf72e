#!/usr/bin/env python
"""Run one of unisono's benchmarks and print its JSON (same as `unisono bench KIND --json`).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/run.py sim --set matrix=128

The measuring code lives beside what it measures (`<package>/benchmark.py`); results and
machine notes are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import sys

from unisono.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["bench", *sys.argv[1:], "--json"]))
