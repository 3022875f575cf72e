"""MRD v1 streaming client: send a raw file or a live acquisition stream, collect what comes back.

Works against unisono's server and other MRD v1 servers (Gadgetron, FIRE):
it sends a config file name (id 1) or config text (id 2), the XML header,
the acquisitions and a close message, while a second thread reads images,
text and other messages until the server's close.

Sending: the bytes are those of ``ismrmrd``'s ``ProtocolSerializer``, but an
acquisition's samples are not copied into a byte string and then into a
socket buffer: its fixed header goes in a small buffer and its trajectory and
data arrays are handed to ``socket.sendmsg`` as they are, about 1 MB of
messages per call (:class:`_Sender`).
"""

from __future__ import annotations

import io
import logging
import socket
import struct
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import ismrmrd
import numpy as np
from ismrmrd.serialization import ConfigFile, ConfigText, ProtocolDeserializer, ProtocolSerializer

from gadgets.mrdfile import read_raw
from gadgets.server import ERROR_PREFIX

__all__ = ["send_stream", "send_file", "RemoteChainError"]

log = logging.getLogger(__name__)


_ACQUISITION_ID = struct.pack("<H", 1008)
_IOV_MAX = 512  # buffers per sendmsg call (Linux allows 1024)


class _Sender:
    """MRD v1 messages gathered into a list of buffers and sent with ``socket.sendmsg``.

    Args:
        sock: the connected socket.
        zero_copy: send acquisition arrays without copying them (only when they cannot
            change before they are sent, e.g. a list read from a file); otherwise each is
            copied when added.
        flush_bytes: send once this many bytes are gathered.
    """

    def __init__(self, sock: socket.socket, zero_copy: bool, flush_bytes: int = 1 << 20):
        self.sock = sock
        self.zero_copy = zero_copy
        self.flush_bytes = flush_bytes
        self._parts: list[Any] = []
        self._size = 0
        self._other = io.BytesIO()
        self._ser = ProtocolSerializer(self._other)

    def _add(self, part: Any) -> None:
        self._parts.append(part)
        self._size += memoryview(part).nbytes
        if self._size >= self.flush_bytes or len(self._parts) >= _IOV_MAX:
            self.flush()

    def add(self, item: Any) -> None:
        """Queue one message (anything ``ProtocolSerializer`` accepts); sends when enough is gathered."""
        if isinstance(item, ismrmrd.Acquisition):
            # as Acquisition.serialize_into: id, the 340-byte header, trajectory, data
            self._add(_ACQUISITION_ID + bytes(item._head))
            for arr, dtype in ((item.traj, np.float32), (item.data, np.complex64)):
                if arr.size:
                    arr = np.ascontiguousarray(arr, dtype=dtype)
                    self._add(arr if self.zero_copy else arr.tobytes())
            return
        self._ser.serialize(item)
        self._add(self._other.getvalue())
        self._other.seek(0)
        self._other.truncate()

    def close(self) -> None:
        """Queue the close message (id 4) and send everything."""
        self._ser.close()
        self._add(self._other.getvalue())
        self.flush()

    def flush(self) -> None:
        """Send what is gathered (blocks until the kernel took all of it)."""
        parts = [memoryview(p).cast("B") for p in self._parts]
        self._parts, self._size = [], 0
        while parts:
            sent = self.sock.sendmsg(parts)
            while parts and sent >= len(parts[0]):
                sent -= len(parts.pop(0))
            if parts and sent:
                parts[0] = parts[0][sent:]


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

    with sock, sock.makefile("rb", buffering=1 << 20) as rfile:
        receiver = threading.Thread(target=receive, args=(rfile,), name="mrd-client-recv", daemon=True)
        receiver.start()
        # a list or tuple (a file read in bulk) cannot change while it is sent: no copies
        out = _Sender(sock, zero_copy=isinstance(items, list | tuple))
        try:
            out.add(ConfigText(chain_text) if chain_text is not None else ConfigFile(chain))
            out.add(header)
            for item in items:
                out.add(item)
                if flush_each:
                    out.flush()
            out.close()
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
