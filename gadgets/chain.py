"""Declarative reconstruction chains: TOML files naming gadgets and their parameters.

A chain file looks like::

    name = "cartesian"
    version = "1"
    description = "..."

    [[gadget]]
    name = "noise"              # instance label, unique in the chain
    gadget = "NoiseAdjust"      # a registered gadget (gadgets.registry) ...
    # module = "pkg.mod"        # ... or, in trusted chains only, module + target
    # target = "fn"
    [gadget.params]
    receiver_noise_bandwidth = 0.793

The chain's sha256 hashes the canonical JSON of the name, version and every
gadget's resolved parameters (the file's values over the gadget function's
defaults), so a changed default changes the hash as well.  Two sites that
print the same hash ran the same gadgets with the same parameters.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from gadgets.registry import gadget_target, resolve_gadget

__all__ = [
    "GadgetSpec",
    "Chain",
    "load_chain",
    "parse_chain",
    "parse_overrides",
    "list_chains",
    "shipped_chain_path",
    "chain_for_header",
    "TRAJECTORY_CHAINS",
]

_ALLOWED_TOP = {"name", "version", "description", "queue_size", "gadget"}
_ALLOWED_GADGET = {"name", "gadget", "module", "target", "params"}


@dataclass(frozen=True)
class GadgetSpec:
    """One stage of a chain.

    Attributes:
        name: instance label (unique within the chain; used in error messages).
        module: Python module holding the gadget.
        target: callable in ``module``: ``target(connection, **params)``.
        params: parameters from the chain file.
        registered: registered gadget name, when the stage was named that way.
    """

    name: str
    module: str
    target: str
    params: Mapping[str, Any] = field(default_factory=dict)
    registered: str | None = None

    def load(self) -> Callable[..., Any]:
        """Import and return the gadget callable."""
        return resolve_gadget(self.module, self.target)

    def resolved_params(self) -> dict[str, Any]:
        """The file's parameters over the keyword defaults of the gadget function."""
        fn = self.load()
        sig = inspect.signature(fn)
        out: dict[str, Any] = {}
        for p in sig.parameters.values():
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty:
                out[p.name] = p.default
        accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
        for key, value in self.params.items():
            if key not in out and not accepts_any:
                allowed = ", ".join(sorted(out)) or "none"
                raise ValueError(
                    f"gadget '{self.name}' ({self.module}.{self.target}) has no parameter '{key}'; "
                    f"allowed: {allowed}"
                )
            out[key] = value
        return out


@dataclass(frozen=True)
class Chain:
    """A parsed chain.

    Attributes:
        name: chain name recorded in every image's meta (``unisono.chain``).
        version: chain version string.
        gadgets: the stages, in stream order.
        description: free text.
        queue_size: capacity of the bounded queue in front of each stage (items).
        source: where the chain came from (path or ``<text>``).
    """

    name: str
    version: str
    gadgets: tuple[GadgetSpec, ...]
    description: str = ""
    queue_size: int = 64
    source: str = ""

    def canonical(self) -> dict[str, Any]:
        """The hashed content: name, version and each stage's resolved parameters."""
        return {
            "name": self.name,
            "version": self.version,
            "gadgets": [
                {
                    "name": g.name,
                    "gadget": g.registered or f"{g.module}:{g.target}",
                    "params": g.resolved_params(),
                }
                for g in self.gadgets
            ],
        }

    def with_params(self, overrides: Mapping[str, Mapping[str, Any]]) -> Chain:
        """A copy with parameters replaced: ``{"harmonize": {"enabled": False}}``.

        Keys are gadget instance names; unknown names raise a ValueError listing the valid ones.
        """
        names = [g.name for g in self.gadgets]
        for key in overrides:
            if key not in names:
                raise ValueError(
                    f"chain '{self.name}' has no gadget '{key}'; its gadgets are: {', '.join(names)}"
                )
        gadgets = tuple(replace(g, params={**g.params, **overrides.get(g.name, {})}) for g in self.gadgets)
        out = replace(self, gadgets=gadgets)
        for g in out.gadgets:
            g.resolved_params()
        return out

    def to_toml(self) -> str:
        """The chain as chain-file TOML (e.g. to send a modified chain as MRD config text, id 2).

        Parsing the text back gives a chain with the same sha256.
        """
        lines = [f"name = {_toml_value(self.name)}", f"version = {_toml_value(self.version)}"]
        if self.description:
            lines.append(f"description = {_toml_value(self.description)}")
        lines.append(f"queue_size = {self.queue_size}")
        for g in self.gadgets:
            lines += ["", "[[gadget]]", f"name = {_toml_value(g.name)}"]
            if g.registered:
                lines.append(f"gadget = {_toml_value(g.registered)}")
            else:
                lines += [f"module = {_toml_value(g.module)}", f"target = {_toml_value(g.target)}"]
            if g.params:
                lines.append("[gadget.params]")
                lines += [f"{key} = {_toml_value(value)}" for key, value in g.params.items()]
        return "\n".join(lines) + "\n"

    @property
    def sha256(self) -> str:
        """Hex sha256 of the canonical JSON (sorted keys, no whitespace)."""
        text = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _toml_value(value: Any) -> str:
    """A TOML literal for the value types chain parameters use (str, bool, int, float, lists)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ValueError(f"chain parameter value {value!r} cannot be written as TOML (str, bool, number, list)")


#: the shipped chain for each MRD trajectory type (``chain = "auto"``)
TRAJECTORY_CHAINS = {
    "cartesian": "cartesian",
    "epi": "epi",
    "radial": "radial",
    "goldenangle": "radial",
    "spiral": "spiral",
}


def chain_for_header(header: Any, index: int = 0) -> str:
    """The shipped chain that reconstructs ``header.encoding[index]``'s trajectory.

    Raises:
        ValueError: for trajectories no shipped chain handles (``other``).
    """
    encs = getattr(header, "encoding", None) or []
    if not 0 <= index < len(encs):
        raise ValueError(f"the MRD header has no encoding {index}; cannot choose a chain automatically")
    traj = encs[index].trajectory
    name = str(getattr(traj, "value", traj) or "cartesian")
    if name not in TRAJECTORY_CHAINS:
        raise ValueError(
            f"no shipped chain for trajectory '{name}'; name one with --chain "
            f"(chains for: {', '.join(sorted(TRAJECTORY_CHAINS))})"
        )
    return TRAJECTORY_CHAINS[name]


def _chains_dir() -> Path:
    return Path(str(resources.files("gadgets") / "chains"))


def list_chains(chains_dir: str | Path | None = None) -> list[str]:
    """Names of the shipped chains (and of those in ``chains_dir``)."""
    names = {p.stem for p in _chains_dir().glob("*.toml")}
    if chains_dir is not None:
        names |= {p.stem for p in Path(chains_dir).glob("*.toml")}
    return sorted(names)


def shipped_chain_path(name: str, chains_dir: str | Path | None = None) -> Path:
    """Path of the chain called ``name`` in ``chains_dir`` (first) or the shipped chains.

    Only plain names resolve (no path separators), so a network client cannot
    point the server at arbitrary files.
    """
    stem = name[:-5] if name.endswith(".toml") else name
    if not stem or any(c in stem for c in "/\\") or stem.startswith("."):
        raise ValueError(f"chain name must be a plain name such as 'cartesian', got '{name}'")
    for base in ([Path(chains_dir)] if chains_dir is not None else []) + [_chains_dir()]:
        path = base / f"{stem}.toml"
        if path.is_file():
            return path
    known = ", ".join(list_chains(chains_dir))
    raise ValueError(f"unknown chain '{name}'; available chains are: {known}")


def parse_chain(text: str, source: str = "<text>", trusted: bool = True) -> Chain:
    """Parse chain TOML text.

    Args:
        text: the TOML document.
        source: label for error messages.
        trusted: when False (chains received over the network), stages must
            name registered gadgets; ``module``/``target`` are refused.
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"chain {source} is not valid TOML: {exc}") from None
    unknown = set(doc) - _ALLOWED_TOP
    if unknown:
        raise ValueError(f"chain {source}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_ALLOWED_TOP)}")
    name = doc.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"chain {source}: 'name' must be a non-empty string")
    version = str(doc.get("version", "1"))
    queue_size = doc.get("queue_size", 64)
    if not isinstance(queue_size, int) or not 1 <= queue_size <= 100000:
        raise ValueError(f"chain {source}: 'queue_size' must be an integer in 1..100000, got {queue_size!r}")
    stages = doc.get("gadget", [])
    if not isinstance(stages, list) or not stages:
        raise ValueError(f"chain {source}: needs at least one [[gadget]] table")
    specs: list[GadgetSpec] = []
    seen: set[str] = set()
    for i, st in enumerate(stages):
        if not isinstance(st, dict):
            raise ValueError(f"chain {source}: gadget #{i} must be a table")
        bad = set(st) - _ALLOWED_GADGET
        if bad:
            raise ValueError(
                f"chain {source}: gadget #{i} has unknown key(s) {sorted(bad)}; "
                f"allowed: {sorted(_ALLOWED_GADGET)}"
            )
        registered = st.get("gadget")
        if registered is not None:
            if "module" in st or "target" in st:
                raise ValueError(f"chain {source}: gadget #{i} gives both 'gadget' and 'module'/'target'")
            module, target = gadget_target(str(registered))
        else:
            if not trusted:
                raise ValueError(
                    f"chain {source}: gadget #{i} must name a registered gadget ('gadget = ...'); "
                    "module/target are only allowed in local chain files"
                )
            module, target = st.get("module"), st.get("target")
            if not isinstance(module, str) or not isinstance(target, str):
                raise ValueError(f"chain {source}: gadget #{i} needs 'gadget', or both 'module' and 'target'")
        label = str(st.get("name", registered or target))
        if label in seen:
            raise ValueError(f"chain {source}: gadget name '{label}' is used twice")
        seen.add(label)
        params = st.get("params", {})
        if not isinstance(params, dict):
            raise ValueError(f"chain {source}: gadget '{label}' params must be a table")
        specs.append(GadgetSpec(label, module, target, dict(params), registered))
    return Chain(
        name=name,
        version=version,
        gadgets=tuple(specs),
        description=str(doc.get("description", "")),
        queue_size=queue_size,
        source=source,
    )


def parse_overrides(items: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Parse ``gadget.param=value`` strings (values in TOML syntax, bare words as strings)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        gadget, dot, param = key.strip().partition(".")
        if not sep or not dot or not gadget or not param:
            raise ValueError(f"parameter override must look like gadget.param=value, got '{item}'")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        out.setdefault(gadget, {})[param] = value
    return out


def load_chain(
    name_or_path: str | Path | Chain,
    chains_dir: str | Path | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Chain:
    """Load a chain by shipped name (``"cartesian"``), by name in ``chains_dir``, or from a file path.

    Local files are trusted (they may use module/target); every stage's
    parameters are checked against its gadget's signature here, so a typo
    fails at load time, not mid-scan.
    """
    if isinstance(name_or_path, Chain):
        return name_or_path.with_params(overrides) if overrides else name_or_path
    candidate = Path(name_or_path)
    if candidate.suffix == ".toml" and candidate.is_file():
        path = candidate
    elif isinstance(name_or_path, Path) or "/" in str(name_or_path):
        if not candidate.is_file():
            raise FileNotFoundError(f"chain file {candidate} does not exist")
        path = candidate
    else:
        path = shipped_chain_path(str(name_or_path), chains_dir)
    chain = parse_chain(path.read_text(encoding="utf-8"), source=str(path), trusted=True)
    if overrides:
        return chain.with_params(overrides)
    for g in chain.gadgets:
        g.resolved_params()
    return chain
