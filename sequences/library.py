"""Entry points: list protocols and systems, build a protocol for a system."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sequences.built import BuiltSequence
from sequences.protocol import Protocol, ProtocolError, list_protocol_names, load_protocol
from sequences.systems import SystemProfile, load_system

#: builder name in a protocol file -> "module:function" taking (params, system, protocol)
BUILDERS: dict[str, str] = {
    "gre2d": "sequences.gre:build_gre2d",
    "gre3d": "sequences.gre:build_gre3d",
    "radial2d": "sequences.gre:build_radial2d",
    "se2d": "sequences.se:build_se2d",
    "tse2d": "sequences.se:build_tse2d",
    "epi2d": "sequences.epi:build_epi2d",
    "dwi_epi": "sequences.epi:build_dwi_epi",
    "spiral2d": "sequences.spiral:build_spiral2d",
}


def list_protocols() -> list[str]:
    """Names of the shipped protocols (``sequences/protocols/*.toml``)."""
    return list_protocol_names()


def build_protocol(
    protocol: str | Path | Protocol,
    system: str | Path | SystemProfile = "generic",
    overrides: Mapping[str, Any] | None = None,
) -> BuiltSequence:
    """Build ``protocol`` (a name, a TOML path or a :class:`Protocol`) for ``system``.

    ``overrides`` are values in each parameter's own unit (as in the TOML),
    e.g. ``{"matrix": 64, "TE": 6}``. Raises :class:`ProtocolError` when a
    parameter is out of range or the hardware cannot play the result.
    """
    proto = protocol if isinstance(protocol, Protocol) else load_protocol(protocol)
    profile = load_system(system)
    params = proto.resolve(overrides)
    if proto.builder not in BUILDERS:
        raise ProtocolError(
            f"builder = {proto.builder!r} in protocol {proto.name} is unknown; "
            f"allowed: {', '.join(BUILDERS)}."
        )
    module_name, function = BUILDERS[proto.builder].split(":")
    builder = getattr(importlib.import_module(module_name), function)
    return builder(params, profile, proto.name)
