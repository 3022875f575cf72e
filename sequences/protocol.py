"""Protocol files: parameters with a unit, a default and a checked range.

A protocol TOML looks like::

    name = "gre2d"
    builder = "gre2d"                      # which module under sequences/ builds it
    description = "2D multi-slice spoiled gradient echo"

    [params.TE]
    value = 5.0
    unit = "ms"
    min = 1.0
    max = 100.0
    description = "echo time, excitation centre to k-space centre"

    [params.ordering]
    value = "linear"
    choices = ["linear", "centric"]

Numbers are converted to SI on load (``unit`` must be one of
:data:`sequences.units.UNITS`); integers stay integers (``unit = "1"``).
Lists of numbers (b-values, directions) are checked element by element.
Overrides (``--set TE=6`` or ``overrides={"TE": 6}``) are given in the
parameter's own unit, optionally with the unit written out (``TE=6ms``).
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sequences.units import UNITS, from_si, to_si

PROTOCOL_DIR = Path(__file__).resolve().parent / "protocols"


class ProtocolError(ValueError):
    """A protocol parameter is malformed or cannot be played on the chosen hardware.

    The message is one sentence naming the field, the value and what is allowed.
    """


@dataclass(frozen=True)
class ParamSpec:
    """One protocol parameter as written in the TOML file (in its own unit, not SI)."""

    name: str
    default: Any
    unit: str | None = None  # None for strings and booleans
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[Any, ...] | None = None
    description: str = ""

    @property
    def kind(self) -> str:
        """One of ``int``, ``float``, ``str``, ``bool``, ``list``."""
        d = self.default
        if isinstance(d, bool):
            return "bool"
        if isinstance(d, int):
            return "int"
        if isinstance(d, float):
            return "float"
        if isinstance(d, str):
            return "str"
        return "list"

    def allowed(self) -> str:
        """Human-readable description of the allowed values, in the parameter's unit."""
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.kind == "bool":
            return "true or false"
        unit = "" if self.unit in (None, "1") else f" {self.unit}"
        lo = "-inf" if self.minimum is None else f"{self.minimum:g}"
        hi = "inf" if self.maximum is None else f"{self.maximum:g}"
        what = "integers" if self.kind == "int" else "values"
        if self.kind == "list":
            what = "elements"
        return f"{what} from {lo} to {hi}{unit}"

    def check(self, value: Any) -> Any:
        """Coerce ``value`` (in the parameter's unit) to the parameter's kind and check its range.

        Returns the value in the parameter's own unit; raises :class:`ProtocolError`.
        """
        kind = self.kind
        bad = ProtocolError(f"{self.name} = {value!r} is not allowed; allowed: {self.allowed()}.")
        if kind == "bool":
            if not isinstance(value, bool):
                raise bad
            return value
        if kind == "str":
            if not isinstance(value, str) or (self.choices is not None and value not in self.choices):
                raise bad
            return value
        if kind == "list":
            flat = _flatten(value) if isinstance(value, list | tuple) else None
            if flat is None or not flat or not all(_is_number(v) for v in flat):
                raise bad
            for v in flat:
                self._check_range(float(v), bad)
            return _to_float_lists(value)
        if not _is_number(value):
            raise bad
        if kind == "int":
            if float(value) != int(value):
                raise bad
            value = int(value)
        else:
            value = float(value)
        if self.choices is not None and value not in self.choices:
            raise bad
        self._check_range(float(value), bad)
        return value

    def _check_range(self, v: float, bad: ProtocolError) -> None:
        if (self.minimum is not None and v < self.minimum) or (self.maximum is not None and v > self.maximum):
            raise bad

    def to_si(self, value: Any) -> Any:
        """Convert a checked value from the parameter's unit to SI (ints and strings unchanged)."""
        if self.unit is None or self.kind in ("int", "str", "bool"):
            return value
        if self.kind == "list":
            return _map_lists(value, lambda v: to_si(v, self.unit, field=self.name))
        return to_si(value, self.unit, field=self.name)


@dataclass(frozen=True)
class Protocol:
    """A parsed protocol file: its builder and parameter specifications."""

    name: str
    builder: str
    description: str
    params: dict[str, ParamSpec] = field(default_factory=dict)
    path: Path | None = None

    def resolve(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Defaults with ``overrides`` applied, range-checked, converted to SI.

        ``overrides`` values are in the parameter's own unit; strings (from the
        command line) are parsed, and may carry the unit (``"6ms"``).
        """
        values = {name: spec.default for name, spec in self.params.items()}
        for key, raw in (overrides or {}).items():
            if key not in self.params:
                raise ProtocolError(
                    f"{key} is not a parameter of protocol {self.name}; "
                    f"allowed parameters: {', '.join(sorted(self.params))}."
                )
            values[key] = parse_value(self.params[key], raw) if isinstance(raw, str) else raw
        return {name: spec.to_si(spec.check(values[name])) for name, spec in self.params.items()}

    def display_values(self, si_params: Mapping[str, Any]) -> dict[str, Any]:
        """The resolved SI parameters converted back to the protocol's units (for reports)."""
        out: dict[str, Any] = {}
        for name, spec in self.params.items():
            v = si_params.get(name)
            if spec.unit in (None, "1") or spec.kind in ("int", "str", "bool"):
                out[name] = v
            elif spec.kind == "list":
                out[name] = _map_lists(v, lambda x, u=spec.unit: from_si(x, u))
            else:
                out[name] = from_si(v, spec.unit)
        return out


def parse_value(spec: ParamSpec, text: str) -> Any:
    """Parse a command-line value for ``spec``: ``"64"``, ``"6ms"``, ``"true"``, ``"[0, 1000]"``."""
    text = text.strip()
    kind = spec.kind
    if kind == "str":
        return text
    if kind == "bool":
        low = text.lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise ProtocolError(f"{spec.name} = {text!r} is not allowed; allowed: true or false.")
    if kind == "list":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ProtocolError(
                f"{spec.name} = {text!r} is not a JSON list; allowed: {spec.allowed()}, e.g. [0, 1000]."
            ) from exc
    m = re.fullmatch(r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(\S*)", text)
    if not m:
        raise ProtocolError(f"{spec.name} = {text!r} is not a number; allowed: {spec.allowed()}.")
    number, unit = float(m.group(1)), m.group(2)
    if unit and unit != spec.unit:
        if spec.unit is None or unit not in UNITS or UNITS[unit][0] != UNITS[spec.unit][0]:
            raise ProtocolError(
                f"{spec.name} = {text!r} has unit {unit!r}, which does not convert to {spec.unit!r}."
            )
        number = from_si(to_si(number, unit), spec.unit)
    return int(number) if kind == "int" and number == int(number) else number


def read_named_toml(
    name_or_path: str | Path, folder: Path, kind: str, available: Callable[[], list[str]]
) -> tuple[Path, dict[str, Any]]:
    """(path, parsed TOML) of a shipped file by name (``folder/NAME.toml``) or of a ``.toml`` path.

    Raises :class:`ProtocolError` for an unknown name (listing the ``available()`` ones) or
    invalid TOML, FileNotFoundError for a missing path.
    """
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = folder / f"{name_or_path}.toml"
        if not path.exists():
            raise ProtocolError(
                f"{kind} {name_or_path!r} does not exist; available: {', '.join(available())}."
            )
    if not path.exists():
        raise FileNotFoundError(f"{kind} file {path} does not exist.")
    with path.open("rb") as fh:
        try:
            return path, tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ProtocolError(f"{path.name}: not valid TOML ({exc}).") from exc


def load_protocol(name_or_path: str | Path) -> Protocol:
    """Read a protocol by name (``sequences/protocols/NAME.toml``) or from a path."""
    path, data = read_named_toml(name_or_path, PROTOCOL_DIR, "protocol", list_protocol_names)
    for key in ("name", "builder", "params"):
        if key not in data:
            raise ProtocolError(f"{path.name}: missing top-level key {key!r}.")
    specs: dict[str, ParamSpec] = {}
    for pname, entry in data["params"].items():
        if not isinstance(entry, dict) or "value" not in entry:
            raise ProtocolError(f"{path.name}: params.{pname} needs a table with at least 'value'.")
        unknown = set(entry) - {"value", "unit", "min", "max", "choices", "description"}
        if unknown:
            raise ProtocolError(f"{path.name}: params.{pname} has unknown keys {sorted(unknown)}.")
        unit = entry.get("unit")
        if unit is not None and unit not in UNITS:
            raise ProtocolError(
                f"{path.name}: params.{pname}.unit = {unit!r} is unknown; "
                f"allowed: {', '.join(sorted(UNITS))}."
            )
        is_number = _is_number(entry["value"]) or isinstance(entry["value"], list)
        if is_number and unit is None:
            raise ProtocolError(f"{path.name}: params.{pname} is numeric and needs a unit ('1' if none).")
        if is_number and ("min" not in entry or "max" not in entry):
            raise ProtocolError(f"{path.name}: params.{pname} is numeric and needs 'min' and 'max'.")
        spec = ParamSpec(
            name=pname,
            default=entry["value"],
            unit=unit,
            minimum=entry.get("min"),
            maximum=entry.get("max"),
            choices=tuple(entry["choices"]) if "choices" in entry else None,
            description=entry.get("description", ""),
        )
        spec.check(spec.default)  # a shipped default outside its own range is a file bug
        specs[pname] = spec
    return Protocol(
        name=data["name"],
        builder=data["builder"],
        description=data.get("description", ""),
        params=specs,
        path=path,
    )


def list_protocol_names() -> list[str]:
    """Names of the protocol files shipped in ``sequences/protocols/``."""
    return sorted(p.stem for p in PROTOCOL_DIR.glob("*.toml"))


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _flatten(v: Any) -> list[Any]:
    if isinstance(v, list | tuple):
        out: list[Any] = []
        for x in v:
            out.extend(_flatten(x))
        return out
    return [v]


def _map_lists(v: Any, fn) -> Any:
    if isinstance(v, list | tuple):
        return [_map_lists(x, fn) for x in v]
    return fn(v)


def _to_float_lists(v: Any) -> Any:
    return _map_lists(v, float)
