"""MRD v1 streaming client: send a raw file or a live acquisition stream, collect what comes back.

Works against unisono's server and other MRD v1 servers (Gadgetron, FIRE):
it sends a config file name (id 1) or config text (id 2), the XML header,
the acquisitions and a close message, while a second thread reads images,
text and other messages until the server's close.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import ismrmrd
from ismrmrd.serialization import ConfigFile, ConfigText, ProtocolDeserializer, ProtocolSerializer

from gadgets.mrdfile import read_raw
from gadgets.server import ERROR_PREFIX

__all__ = ["send_stream", "send_file", "RemoteChainError"]

log = logging.getLogger(__name__)


class RemoteChainError(RuntimeError):
    """The server reported a failed chain.

    Attributes:
        received: everything received before the close (images may be among them).
    """

    def __init__(self, message: str, received: list[Any]):
        super().__init__(message)
        self.received = received


def send_stream(
    header: Any,
    items: Iterable[Any],
    host: str = "127.0.0.1",
    port: int = 9002,
    chain: str = "cartesian",
    chain_text: str | None = None,
    connect_timeout: float = 30.0,
    on_item: Callable[[Any], None] | None = None,
    flush_each: bool = False,
) -> list[Any]:
    """Stream a header and acquisitions to an MRD server and collect its replies.

    Args:
        header: ``ismrmrd.xsd.ismrmrdHeader`` (or its XML text).
        items: acquisitions / waveforms, e.g. a live simulator generator.
        host, port: the server.
        chain: chain (config file) name, sent as message id 1.
        chain_text: if given, sent as config text (id 2) instead of ``chain``.
        connect_timeout: seconds to wait for the TCP connection.
        on_item: called from the receiver thread with each received item as it arrives.
        flush_each: flush the socket after every item, so each readout of a live scan reaches
            the server at once (real-time feedback needs it; bulk replay is faster without).

    Returns:
        Every received item (images, text, acquisitions...) in arrival order.

    Raises:
        RemoteChainError: when the server sent an ``unisono error:`` text.
        ConnectionError: when the connection broke before the server's close.
    """
    if isinstance(header, str | bytes):
        header = ismrmrd.xsd.CreateFromDocument(header)
    received: list[Any] = []
    failure: list[BaseException] = []
    try:
        sock = socket.create_connection((host, int(port)), timeout=connect_timeout)
    except OSError as exc:
        reason = exc.strerror or exc
        raise ConnectionError(f"cannot connect to an MRD server at {host}:{port}: {reason}") from exc
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def receive(rfile: Any) -> None:
        try:
            for item in ProtocolDeserializer(rfile).deserialize():
                received.append(item)
                if on_item is not None:
                    on_item(item)
        except EOFError as exc:
            failure.append(ConnectionError(f"server closed the connection without a close message ({exc})"))
        except BaseException as exc:  # noqa: BLE001 - reported to the caller below
            failure.append(exc)

    with (
        sock,
        sock.makefile("rb", buffering=1 << 20) as rfile,
        sock.makefile("wb", buffering=1 << 20) as wfile,
    ):
        receiver = threading.Thread(target=receive, args=(rfile,), name="mrd-client-recv", daemon=True)
        receiver.start()
        ser = ProtocolSerializer(wfile)
        try:
            ser.serialize(ConfigText(chain_text) if chain_text is not None else ConfigFile(chain))
            ser.serialize(header)
            for item in items:
                ser.serialize(item)
                if flush_each:
                    wfile.flush()
            ser.close()
        except OSError as exc:
            failure.append(ConnectionError(f"sending to {host}:{port} failed: {exc}"))
        receiver.join()
    errors = [t for t in received if isinstance(t, str) and t.startswith(ERROR_PREFIX)]
    if errors:
        raise RemoteChainError(errors[0][len(ERROR_PREFIX) :], received)
    if failure:
        raise failure[0]
    for t in received:
        if isinstance(t, str):
            log.info("server: %s", t[:200])
    return received


def send_file(
    path: str | Path,
    host: str = "127.0.0.1",
    port: int = 9002,
    chain: str = "cartesian",
    chain_text: str | None = None,
) -> list[ismrmrd.Image]:
    """Send an MRD raw file (read in bulk) and return the images that come back."""
    header, acqs = read_raw(path)
    items = send_stream(header, acqs, host, port, chain=chain, chain_text=chain_text)
    return [i for i in items if isinstance(i, ismrmrd.Image)]
