"""Gadgetron external-gadget entry points: ``python -m gadgetron PORT gadgets.external TARGET``.

A Gadgetron server (≥ 4) runs a Python ``<external>`` node by starting
``python -m gadgetron PORT MODULE TARGET``; gadgetron-python then connects
back to the server on PORT, reads the node's configuration (id 2, XML) and
the MRD header (id 3), and calls ``TARGET(connection)``.

Targets here:

* ``cartesian``, ``passthrough`` — a whole shipped unisono chain as one
  external node (threads and bounded queues inside, exactly as in
  ``unisono recon``); every image leaving it carries the chain meta.
* ``run_chain`` — the chain named by the ``chain`` property (``auto``, the
  default, picks it from the header's trajectory).

Parameters come from ``<property name="GADGET.PARAM" value="..."/>``
elements of the node's ``<configuration>`` (values in TOML syntax, bare words
as strings), e.g. ``<property name="harmonize.enabled" value="false"/>``.
The individual gadgets (``gadgets.prewhiten.noise_adjust`` …) are plain
``gadget(connection, **params)`` callables and can be named as targets too;
under Gadgetron they run with their defaults.
"""

from __future__ import annotations

import logging
import threading
import xml.etree.ElementTree as ET
from typing import Any

from gadgets.chain import chain_for_header, load_chain, parse_overrides
from gadgets.runtime import ChainError, RunningChain

__all__ = ["cartesian", "passthrough", "run_chain", "properties_from_config", "serve_connection"]

log = logging.getLogger(__name__)


def properties_from_config(config: Any) -> dict[str, str]:
    """``name -> value`` of every ``<property name=... value=...>`` in a Gadgetron config element."""
    if config is None:
        return {}
    if isinstance(config, str | bytes):
        try:
            config = ET.fromstring(config)
        except ET.ParseError:
            return {}
    props: dict[str, str] = {}
    for el in config.iter():
        tag = el.tag.rsplit("}", 1)[-1]
        if tag == "property" and el.get("name") is not None:
            props[el.get("name", "")] = el.get("value", el.text or "")
    return props


def serve_connection(connection: Any, chain_name: str, device: str = "auto") -> None:
    """Run a chain on a gadgetron-python connection: read items, send the chain's outputs back.

    The connection is read in a feeder thread and written from this one, so
    long scans stream through without buffering the whole acquisition.
    """
    props = properties_from_config(getattr(connection, "config", None))
    name = props.pop("chain", chain_name)
    if name == "auto":
        name = chain_for_header(connection.header)
    device = props.pop("device", device)
    overrides = parse_overrides(f"{k}={v}" for k, v in props.items())
    chain = load_chain(name, overrides=overrides)
    rc = RunningChain(chain, connection.header, device)
    log.info("unisono chain '%s' (sha256 %s) as a Gadgetron external node", chain.name, chain.sha256[:12])
    feeder = threading.Thread(target=rc.feed, args=(iter(connection),), name="gadgetron-feed", daemon=True)
    feeder.start()
    try:
        for item in rc:
            connection.send(item)
    except ChainError:
        # gadgetron-python ends with CLOSE even after an exception; re-raise so that at least the
        # external process exits non-zero and logs the gadget that failed.
        raise
    finally:
        feeder.join(timeout=5)


def cartesian(connection: Any) -> None:
    """The default ``cartesian`` chain as a Gadgetron external node."""
    serve_connection(connection, "cartesian")


def passthrough(connection: Any) -> None:
    """The ``passthrough`` chain (transport only) as a Gadgetron external node."""
    serve_connection(connection, "passthrough")


def run_chain(connection: Any) -> None:
    """The chain named by the ``chain`` property (default ``auto``: by the header's trajectory)."""
    serve_connection(connection, "auto")
