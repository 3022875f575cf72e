"""What a network client may ask of the server: chain names, chain text, parameter values.

The chain machinery (:mod:`gadgets.chain`) already refuses ``module``/``target``
in chains received as text and resolves names only to shipped chains or to
``chains_dir``.  One hole remains: a *registered* gadget may take a parameter
that the gadget treats as a file path (the harmonization gadget's
``profile`` is "a profile name or path"), so a client could make the server
read a file of the client's choosing.  Chains that come over the network are
therefore held to a stricter rule here: every string parameter must be a
plain name, never a path.  Chain files the operator put in ``chains_dir`` (and
the shipped ones) are trusted and keep full paths.

Parsing stays data-only: TOML via ``tomllib`` (no code), gadgets only by
registered name (:data:`gadgets.registry.GADGETS`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from gadgets.chain import Chain, parse_chain

__all__ = ["parse_client_chain", "check_client_params", "is_plain_name"]

#: a plain resource name: letters, digits, ``_ - . + :`` and spaces; not starting with a dot
_PLAIN = re.compile(r"^[A-Za-z0-9_+\-:][A-Za-z0-9_+\-:. ]*$")


def is_plain_name(text: str) -> bool:
    """True when ``text`` cannot name a file outside a lookup directory (no separators, ``..`` or ``~``)."""
    return bool(_PLAIN.match(text)) and ".." not in text and len(text) <= 200


def check_client_params(chain: Chain) -> None:
    """Refuse string parameters that are not plain names (paths could reach any file on the server).

    Raises:
        ValueError: naming the gadget, the parameter and the value.
    """
    for g in chain.gadgets:
        for key, value in g.params.items():
            _check_value(g.name, key, value)


def _check_value(gadget: str, key: str, value: Any) -> None:
    if isinstance(value, str):
        if value and not is_plain_name(value):
            raise ValueError(
                f"chain sent by the client: gadget '{gadget}' parameter '{key}' = {value!r} is not a plain "
                "name; a client may name shipped resources only (letters, digits, '_-.+:', no paths)"
            )
    elif isinstance(value, Mapping):
        for k, v in value.items():
            _check_value(gadget, f"{key}.{k}", v)
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_value(gadget, f"{key}[{i}]", v)


def parse_client_chain(text: str) -> Chain:
    """Parse a chain TOML document received from a client (config text, message id 2) as data.

    Only registered gadgets, only plain-name string parameters, every parameter checked
    against its gadget's signature.

    Raises:
        ValueError: one sentence naming what is not allowed.
    """
    try:
        chain = parse_chain(text, source="<config text>", trusted=False)
    except RecursionError:
        raise ValueError("chain sent by the client nests too deeply to be a chain file") from None
    check_client_params(chain)
    for g in chain.gadgets:
        g.resolved_params()
    return chain
