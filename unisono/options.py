"""Command-line helpers shared by the subcommands."""

from __future__ import annotations

import json


def parse_key_values(pairs: list[str], flag: str = "--set") -> dict[str, object]:
    """``KEY=VALUE`` strings to a dict; values are parsed as JSON when they can be (numbers,
    booleans, lists) and kept as text otherwise (``6ms``, names)."""
    options: dict[str, object] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"{flag} expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options
