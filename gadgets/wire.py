"""A defensive MRD v1 message reader: every length checked before it is trusted.

``ismrmrd.serialization.ProtocolDeserializer`` trusts the stream: a text
message's 4-byte length can make it allocate 4 GiB, an acquisition header can
ask for 34 GiB, a truncated message surfaces as a numpy reshape error, an
unknown id as a bare ``ValueError`` and the XML header goes to the parser
unchecked.  A server on the scanner network cannot afford that, so this
module reads the same bytes (MRD v1: a little-endian ``uint16`` message id,
then the message) with these rules:

* the size of every message is computed from its fixed-size header and
  compared with :class:`~gadgets.limits.ServerLimits` *before* the payload is
  read, so an oversized message costs no memory;
* each problem raises one :class:`WireError` (or :class:`Disconnected`) whose
  text names the message, the field and what is allowed;
* the XML header may not carry a DTD (no entity tricks: MRD headers never
  need one), must parse as ISMRMRD and must describe at least one usable
  encoding (:func:`gadgets.consistency.header_problem`);
* data before the header and a second header end the stream (the raw file
  could not describe them); an acquisition that contradicts the header is
  yielded as :class:`Rejected` and the stream goes on, so the raw data keep
  being recorded;
* waiting for a message is bounded by ``idle_timeout_s`` and receiving one
  by ``message_timeout_s``; a stop event ends the read at the next chunk
  (graceful shutdown);
* every *complete, well-formed* message is copied, byte for byte, to the
  optional ``record`` file before the reader receives more (one write call per
  receive buffer; a recording that stages its writes is drained whenever the
  client pauses), so the recording is a valid MRD v1 stream whatever the
  client sent after it (see :func:`gadgets.recorder.stream_to_h5`).
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import ismrmrd
import numpy as np
from ismrmrd.serialization import ConfigFile, ConfigText

from gadgets.consistency import HeaderRules, header_problem
from gadgets.limits import ServerLimits

__all__ = [
    "MESSAGE_NAMES",
    "WireError",
    "Disconnected",
    "Rejected",
    "SocketSource",
    "StreamSource",
    "MessageReader",
    "linger",
]

log = logging.getLogger(__name__)

#: MRD v1 message ids this reader understands, with the names used in error messages
MESSAGE_NAMES: dict[int, str] = {
    1: "config file",
    2: "config text",
    3: "header",
    4: "close",
    5: "text",
    1008: "acquisition",
    1022: "image",
    1026: "waveform",
    1030: "ndarray",
}

_CONFIG_FILE_SIZE = 1024  # fixed, NUL-padded payload of message id 1 (as Gadgetron's C++ struct)
_ACQ_HEADER = ctypes.sizeof(ismrmrd.AcquisitionHeader)
_WAVE_HEADER = ctypes.sizeof(ismrmrd.WaveformHeader)
_IMAGE_HEADER = ctypes.sizeof(ismrmrd.ImageHeader)
#: MRD data type code -> bytes per element (images and ndarrays)
_ITEMSIZE = {1: 2, 2: 2, 3: 4, 4: 4, 5: 4, 6: 8, 7: 8, 8: 16}
_NDARRAY_MAXDIM = 7
#: receive buffer size: one receive takes what has arrived up to this, and the messages in it
#: are parsed from it in place (a message larger than this gets a buffer of its own size)
_CHUNK = 1 << 20
#: receive buffers a connection keeps for reuse once nothing refers to them any more
_POOL = 32
#: when the client pauses, how long the reader waits for more data before it puts the recording's
#: held bytes on disk (a recording that buffers writes exposes ``pending`` and ``drain()``)
RECORD_GRACE_S = 0.005
_DATA_IDS = (1008, 1022, 1026, 1030)


class WireError(ValueError):
    """The stream broke the MRD v1 protocol or a limit; it cannot be read further.

    Attributes:
        kind: short machine-readable cause: ``oversized``, ``unknown-id``, ``malformed``,
            ``invalid-header``, ``out-of-order``, ``idle-timeout``, ``slow-client``,
            ``server-stopping``, ``recording``.
    """

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class Disconnected(EOFError):
    """The client closed the connection without a close message (id 4).

    Attributes:
        mid_message: True when the stream ended inside a message (a truncated message).
        kind: ``truncated`` or ``disconnected``.
    """

    def __init__(self, message: str, mid_message: bool):
        super().__init__(message)
        self.mid_message = mid_message
        self.kind = "truncated" if mid_message else "disconnected"


@dataclass(frozen=True)
class Rejected:
    """A well-formed message that contradicts the header: recorded, but not to be reconstructed.

    Attributes:
        problem: one sentence naming the field and what the header allows.
        item: the parsed message (an ``ismrmrd.Acquisition``).
    """

    problem: str
    item: Any


class _Timeout(Exception):
    """A source read reached its deadline."""


class _Stopped(Exception):
    """A source read saw the stop event."""


class SocketSource:
    """Reads a connected socket with deadlines and a stop event (for :class:`MessageReader`).

    The socket's own timeout is left alone (the sending side of the connection
    uses it); waiting is done with ``poll`` in short ticks so that the stop
    event is noticed within ``tick_s``.
    """

    def __init__(
        self,
        sock: socket.socket,
        stop: threading.Event | Sequence[threading.Event] | None = None,
        tick_s: float = 0.25,
    ):
        self.sock = sock
        self.stops: tuple[threading.Event, ...] = (
            () if stop is None else (stop,) if isinstance(stop, threading.Event) else tuple(stop)
        )
        self.tick_s = tick_s
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR)

    def readinto(
        self, view: memoryview, deadline: float | None, block: bool = True, wait_s: float = 0.0
    ) -> int | None:
        """Receive at most ``len(view)`` bytes; 0 at end of stream.

        With ``block`` False, return None when nothing has arrived within ``wait_s``.

        Raises:
            _Timeout: ``deadline`` (``time.monotonic``) passed with no data.
            _Stopped: a stop event is set.
        """
        while True:
            if any(e.is_set() for e in self.stops):
                raise _Stopped
            if not block:
                if not self._poll.poll(int(wait_s * 1000)):
                    return None
                block = True  # readable now: the receive below does not wait
            wait = self.tick_s
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _Timeout
                wait = min(wait, left)
            if self._poll.poll(max(1, int(wait * 1000))):
                try:
                    return self.sock.recv_into(view)
                except (BlockingIOError, InterruptedError):
                    continue
                except TimeoutError:
                    continue
                except (ConnectionResetError, ConnectionAbortedError):
                    return 0


class StreamSource:
    """Reads a file-like object (BytesIO, a recorded ``.mrd`` file); deadlines do not apply."""

    def __init__(self, stream: Any):
        self.stream = stream

    def readinto(
        self, view: memoryview, deadline: float | None, block: bool = True, wait_s: float = 0.0
    ) -> int | None:
        """Read at most ``len(view)`` bytes; 0 at end of stream (a file never makes the reader wait)."""
        fn = getattr(self.stream, "readinto1", None) or getattr(self.stream, "readinto", None)
        if fn is not None:
            return fn(view) or 0
        data = self.stream.read(len(view))
        view[: len(data)] = data
        return len(data)


def _slicer(buf: bytes | bytearray | memoryview) -> Callable[[int], memoryview]:
    """A ``read(n)`` over an in-memory buffer, for ismrmrd's ``deserialize_from`` (no copies)."""
    mv = memoryview(buf)
    pos = 0

    def read(n: int) -> memoryview:
        nonlocal pos
        out = mv[pos : pos + n]
        pos += n
        return out

    return read


class MessageReader:
    """Read MRD v1 messages from a client defensively; iterate it like ``ProtocolDeserializer``.

    Args:
        source: a connected ``socket.socket`` (deadlines and ``stop`` apply) or any readable
            file-like object.
        limits: sizes and timeouts (defaults: :class:`~gadgets.limits.ServerLimits`).
        record: binary file receiving every complete, well-formed message as read (the raw
            recording); None records nothing.
        label: prefix of log lines (the connection).
        stop: an event (or several): once one is set, the next read raises a ``server-stopping``
            :class:`WireError` (sockets only).
        on_wait: called (in the reading thread) each time the reader has parsed everything
            received so far and is about to wait for the client: the moment to pass a batch of
            readouts on (see :func:`gadgets.server.handle_stream`).

    Buffering: the socket is read in receives of up to :data:`_CHUNK` bytes into one buffer,
    and messages are parsed from it in place: an acquisition's data and trajectory are
    (writable) views of that buffer, so 16 readouts of 64 kB cost one receive, no copies and
    one recording write.  Recording writes happen before each receive and never include a
    partial message; a staging recording (:class:`gadgets.recorder.DirectFile`) holds at most
    its staging buffer while data keep arriving, and is drained to disk (all but < 4 kB)
    once the client has paused for :data:`RECORD_GRACE_S`.
    A full buffer is kept and reused once no acquisition refers to it any more (fresh pages
    cost ~0.6 µs each to fault in on the project's virtual machines: 0.2 CPU-s per 335 MB).

    Iterating yields ``ConfigFile``, ``ConfigText``, ``ismrmrd.xsd.ismrmrdHeader``, ``str``,
    ``ismrmrd.Acquisition``, ``ismrmrd.Waveform``, ``ismrmrd.Image``, ``numpy.ndarray`` and
    :class:`Rejected`; it ends at the close message (id 4).

    Raises:
        WireError: a protocol violation or exceeded limit (the stream cannot continue).
        Disconnected: the client went away without a close message.
    """

    def __init__(
        self,
        source: Any,
        limits: ServerLimits | None = None,
        record: BinaryIO | None = None,
        label: str = "",
        stop: threading.Event | Sequence[threading.Event] | None = None,
        on_wait: Callable[[], None] | None = None,
    ):
        if isinstance(source, socket.socket):
            self._source: SocketSource | StreamSource = SocketSource(source, stop)
        elif isinstance(source, SocketSource | StreamSource):
            self._source = source
        else:
            self._source = StreamSource(source)
        self.limits = limits or ServerLimits()
        self.record = record
        self.label = label
        self.on_wait = on_wait
        # receive buffer: bytes [_pos, _end) of _buf are received and not parsed yet; the message
        # being parsed starts at _msg (it is kept whole in one buffer, so its bytes are one span)
        self._buf = np.empty(0, np.uint8)
        self._pos = self._end = self._msg = 0
        self._spare: list[np.ndarray] = []  # full buffers, reusable once no view of them is left
        # recording: complete messages parsed from _buf [_rec_start, _rec_end) but not written yet
        self._rec_buf = self._buf
        self._rec_start = self._rec_end = 0
        self._deadline: float | None = None
        self._what = ""
        self._in_message = False
        #: the parsed header once it arrived
        self.header: Any = None
        self.rules: HeaderRules | None = None
        #: counts of messages read, by id
        self.counts: dict[int, int] = {}
        #: bytes of complete messages read (id included)
        self.bytes_read = 0
        self._warned_counters = False
        self._record_closed = False

    # -- low-level reads ---------------------------------------------------------------------
    def _receive(self, view: memoryview, block: bool = True, wait_s: float = 0.0) -> int | None:
        """Receive into ``view``; None when ``block`` is False and nothing arrived within ``wait_s``."""
        try:
            n = self._source.readinto(view, self._deadline, block, wait_s)
        except _Stopped:
            raise WireError(
                "server-stopping", "the server is shutting down; the data received so far are saved"
            ) from None
        except _Timeout:
            if self._in_message:
                raise WireError(
                    "slow-client",
                    f"the {self._what} message was not complete within {self.limits.message_timeout_s:g} s "
                    "(message timeout)",
                ) from None
            raise WireError(
                "idle-timeout", f"no message for {self.limits.idle_timeout_s:g} s (idle timeout)"
            ) from None
        if n is None:
            return None
        if n == 0:
            if self._in_message:
                raise Disconnected(
                    f"the client disconnected before the end of the {self._what} message (truncated message)",
                    mid_message=True,
                )
            raise Disconnected("the client disconnected without a close message (id 4)", mid_message=False)
        return n

    def _fill(self, n: int) -> None:
        """Receive until ``n`` unparsed bytes are buffered (the caller checked ``n`` against the limits)."""
        self._flush_record()  # everything parsed so far is complete: on disk before receiving more
        need = self._pos + n
        if need > len(self._buf):
            # another buffer (the old one may still back acquisitions handed out): move the
            # current message's received bytes into it, so the message stays one span
            keep = self._end - self._msg
            new = self._new_buffer(max(_CHUNK, self._pos - self._msg + n))
            new[:keep] = self._buf[self._msg : self._end]
            self._pos -= self._msg
            self._end, self._msg, need = keep, 0, need - self._msg
            if len(self._buf) == _CHUNK and len(self._spare) < _POOL:
                self._spare.append(self._buf)
            self._buf = self._rec_buf = new
            self._rec_start = self._rec_end = 0
        waited = False
        while self._end < need:
            k = self._receive(memoryview(self._buf)[self._end :], block=waited)
            if k is None:
                # all received data are parsed and handed on: let the caller pass its batch on
                # before this thread blocks on the client
                waited = True
                if self.on_wait is not None:
                    self.on_wait()
                k = self._idle_receive(memoryview(self._buf)[self._end :])
                if k is None:
                    continue
            self._end += k

    def _idle_receive(self, view: memoryview) -> int | None:
        """The client paused: put the recording on disk unless more data come within RECORD_GRACE_S.

        At full rate the next bytes arrive within a millisecond and the recording keeps
        going to disk in whole staging buffers; a client that really pauses (a scanner
        between readouts, the end of a scan) has all but the last partial 4 kB on disk
        after the grace time.
        """
        if not getattr(self.record, "pending", 0):  # nothing held (or a recording that holds nothing)
            return None
        k = self._receive(view, block=False, wait_s=RECORD_GRACE_S)
        if k is None:
            try:
                self.record.drain()  # type: ignore[union-attr]
            except OSError as exc:
                raise self._fail("recording", f"recording the raw data failed: {exc}") from None
        return k

    def _new_buffer(self, size: int) -> np.ndarray:
        """A receive buffer: a spare one nothing refers to any more, else a new one (uint8)."""
        if size == _CHUNK:
            spare = self._spare
            for i in range(len(spare)):
                # the list and getrefcount's argument are the only references: every array made
                # from it (numpy views keep their owner as ``base``) is gone
                if sys.getrefcount(spare[i]) == 2:
                    return spare.pop(i)
        return np.empty(size, np.uint8)

    def _read(self, n: int) -> np.ndarray:
        """Exactly ``n`` bytes, a view of the receive buffer (the caller checked ``n`` against the limits)."""
        if self._end - self._pos < n:
            self._fill(n)
        pos = self._pos
        self._pos = pos + n
        return self._buf[pos : pos + n]

    def _u32(self) -> int:
        return struct.unpack("<I", self._read(4))[0]

    # -- messages ----------------------------------------------------------------------------
    def _fail(self, kind: str, message: str) -> WireError:
        return WireError(kind, message)

    def _check_size(self, what: str, size: int, limit: int, flag: str) -> None:
        if size > limit:
            raise self._fail(
                "oversized",
                f"the {what} message is {size} bytes; the limit is {limit} bytes ({flag})",
            )

    def _text(self, mid: int) -> bytes:
        n = self._u32()
        self._check_size(MESSAGE_NAMES[mid], n, self.limits.max_text_bytes, "--max-text-mb")
        return bytes(self._read(n))

    def _decode(self, raw: bytes, what: str) -> str:
        try:
            return raw.rstrip(b"\x00").decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self._fail(
                "malformed", f"the {what} message is not valid UTF-8 ({exc.reason} at byte {exc.start})"
            ) from None

    def _parse_header(self, raw: bytes) -> Any:
        body = raw.rstrip(b"\x00")
        low = body[:4096].lower()
        if b"<!doctype" in low or b"<!entity" in body.lower():
            raise self._fail(
                "invalid-header",
                "the MRD header (message id 3) contains a DTD (<!DOCTYPE/<!ENTITY); "
                "ISMRMRD headers do not use one",
            )
        try:
            header = ismrmrd.xsd.CreateFromDocument(body)
        except RecursionError:
            raise self._fail("invalid-header", "the MRD header (message id 3) nests too deeply") from None
        except Exception as exc:  # noqa: BLE001 - any parser failure is the client's malformed XML
            text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise self._fail(
                "invalid-header", f"the MRD header (message id 3) is not valid ISMRMRD XML: {text}"
            ) from None
        try:
            problem = header_problem(header, self.limits.max_encoded_voxels)
        except (ValueError, TypeError, ArithmeticError) as exc:
            # a value the XML schema let through but that is not a number (e.g. an empty FOV)
            problem = f"the MRD header (message id 3) has an unusable value: {exc}"
        if problem is not None:
            raise self._fail("invalid-header", problem)
        return header

    def _acquisition(self) -> tuple[Any, tuple[bytes | bytearray, ...]]:
        head = self._read(_ACQ_HEADER)
        h = ismrmrd.AcquisitionHeader.from_buffer_copy(head)
        ns, nc, td = h.number_of_samples, h.active_channels, h.trajectory_dimensions
        payload = ns * td * 4 + ns * nc * 8
        self._check_size(
            f"acquisition ({nc} channels x {ns} samples, trajectory {td}-D)",
            _ACQ_HEADER + payload,
            self.limits.max_message_bytes,
            "--max-message-mb",
        )
        body = self._read(payload)
        # as ismrmrd's deserialize_from, but the arrays are (writable) views of the receive
        # buffer: no zero-filled allocation and no copy (~0.1 ms a readout at 16 coils)
        self._acq_head = h  # the consistency checks read this struct (faster than the properties)
        n_traj = ns * td
        traj = body[: 4 * n_traj].view(np.float32).reshape(ns, td)
        data = body[4 * n_traj :].view(np.complex64).reshape(nc, ns)
        acq = ismrmrd.Acquisition(h, data, traj)
        return acq, (head, body)

    def _waveform(self) -> tuple[Any, tuple[bytes, ...]]:
        head = self._read(_WAVE_HEADER)
        h = ismrmrd.WaveformHeader.from_buffer_copy(head)
        payload = h.channels * h.number_of_samples * 4
        self._check_size(
            f"waveform ({h.channels} channels x {h.number_of_samples} samples)",
            _WAVE_HEADER + payload,
            self.limits.max_message_bytes,
            "--max-message-mb",
        )
        frame = bytes(head) + bytes(self._read(payload))
        return ismrmrd.Waveform.deserialize_from(_slicer(frame)), (frame,)

    def _image(self) -> tuple[Any, tuple[bytes, ...]]:
        head = bytes(self._read(_IMAGE_HEADER))
        h = ismrmrd.ImageHeader.from_buffer_copy(head)
        if h.data_type not in _ITEMSIZE:
            raise self._fail(
                "malformed", f"image data_type {h.data_type} is not an MRD data type (allowed 1..8)"
            )
        n_attr = struct.unpack("<Q", self._read(8))[0]
        nx, ny, nz = h.matrix_size
        n_data = int(h.channels) * nx * ny * nz * _ITEMSIZE[h.data_type]
        self._check_size(
            f"image ({h.channels} channels x {nx}x{ny}x{nz})",
            _IMAGE_HEADER + 8 + n_attr + n_data,
            self.limits.max_message_bytes,
            "--max-message-mb",
        )
        attr = bytes(self._read(n_attr))
        self._decode(attr, "image attribute")
        data = bytes(self._read(n_data))
        frame = head + struct.pack("<Q", n_attr) + attr + data
        try:
            image = ismrmrd.Image.deserialize_from(io.BytesIO(frame).read)  # needs bytes, not views
        except (ValueError, TypeError) as exc:
            raise self._fail("malformed", f"the image message cannot be decoded: {exc}") from None
        return image, (frame,)

    def _ndarray(self) -> tuple[Any, tuple[bytes, ...]]:
        head = bytes(self._read(6))
        dtype, _ver, ndim = struct.unpack("<HHH", head)
        if dtype not in _ITEMSIZE:
            raise self._fail("malformed", f"ndarray data type {dtype} is not an MRD data type (allowed 1..8)")
        if not 1 <= ndim <= _NDARRAY_MAXDIM:
            raise self._fail("malformed", f"ndarray has {ndim} dimensions; allowed 1..{_NDARRAY_MAXDIM}")
        dims_raw = bytes(self._read(8 * ndim))
        dims = struct.unpack("<" + "Q" * ndim, dims_raw)
        n = _ITEMSIZE[dtype]
        for d in dims:
            n *= d
        self._check_size(
            f"ndarray {list(dims)}", 6 + 8 * ndim + n, self.limits.max_message_bytes, "--max-message-mb"
        )
        data = bytes(self._read(n))
        from ismrmrd.image import get_dtype_from_data_type

        arr = np.frombuffer(data, dtype=get_dtype_from_data_type(dtype)).reshape(dims)
        return arr, (head + dims_raw + data,)

    def read_message(self) -> Any:
        """Read one message; None at the close message (id 4).  See the class for what it returns."""
        self._in_message = False
        self._what = "message id"
        self._deadline = time.monotonic() + self.limits.idle_timeout_s
        self._msg = self._pos
        first = self._read(1)
        # the message has started: the whole of it must now arrive within the message timeout
        self._in_message = True
        self._deadline = time.monotonic() + self.limits.message_timeout_s
        mid_bytes = bytes(first) + bytes(self._read(1))
        mid = struct.unpack("<H", mid_bytes)[0]
        name = MESSAGE_NAMES.get(mid)
        if name is None:
            known = ", ".join(str(k) for k in MESSAGE_NAMES)
            raise self._fail("unknown-id", f"unknown message id {mid}; MRD v1 ids are {known}")
        self._what = f"{name} (id {mid})"
        if mid in _DATA_IDS and self.header is None:
            raise self._fail(
                "out-of-order", f"a message of type {name} (id {mid}) arrived before the MRD header (id 3)"
            )
        item: Any
        frame: tuple[bytes | bytearray, ...]
        if mid == 4:
            item, frame = None, ()
        elif mid == 1:
            raw = bytes(self._read(_CONFIG_FILE_SIZE))
            # the whole NUL-padded payload must decode (as ProtocolDeserializer reads the recording)
            text = self._decode(raw, "config file")
            if any(ord(c) < 32 or ord(c) == 127 for c in text):
                raise self._fail(
                    "malformed", "the config file name (message id 1) contains control characters"
                )
            item, frame = ConfigFile(text), (raw,)
        elif mid in (2, 5):
            raw = self._text(mid)
            text = self._decode(raw, name)
            item = ConfigText(text) if mid == 2 else text
            frame = (struct.pack("<I", len(raw)), raw)
        elif mid == 3:
            if self.header is not None:
                raise self._fail(
                    "out-of-order", "a second MRD header (id 3) arrived; a connection carries one"
                )
            # C clients may send a terminating NUL; the recording keeps the XML without it
            raw = self._text(mid).rstrip(b"\x00")
            item = self._parse_header(raw)
            frame = (struct.pack("<I", len(raw)), raw)
        elif mid == 1008:
            item, frame = self._acquisition()
        elif mid == 1026:
            item, frame = self._waveform()
        elif mid == 1022:
            item, frame = self._image()
        else:
            item, frame = self._ndarray()
        if mid == 3:
            self._record(mid_bytes, *frame)  # the XML as parsed (without a C client's NUL)
        else:
            self._record_span()  # the message's own bytes, unchanged
        if mid == 4:
            self._flush_record()  # the stream is complete: all of it on disk now
            if self.record is not None:
                try:
                    self.record.flush()  # a buffered file may fail only now (disk full)
                except OSError as exc:
                    raise self._fail("recording", f"recording the raw data failed: {exc}") from None
        self.counts[mid] = self.counts.get(mid, 0) + 1
        self.bytes_read += 2 + sum(len(part) for part in frame)
        if mid == 3:
            self.header = item
            self.rules = HeaderRules.from_header(item, strict=self.limits.strict_counters)
        elif mid == 1008 and self.rules is not None:
            problem = self.rules.acquisition_problem(self._acq_head, self.counts[1008] - 1)
            if problem is not None:
                return Rejected(problem, item)
            if not self._warned_counters:
                outside = self.rules.counters_outside_limits(self._acq_head)
                if outside:
                    self._warned_counters = True
                    log.warning(
                        "%s: acquisition #%d has counters outside the header's encodingLimits: %s "
                        "(passed on; use strict counters to reject)",
                        self.label,
                        self.counts[1008] - 1,
                        ", ".join(outside),
                    )
        return item

    def _record_span(self) -> None:
        """Mark the message just parsed (bytes ``_msg`` to ``_pos`` of the buffer) for recording."""
        if self.record is None:
            return
        if self._rec_buf is not self._buf or self._rec_end != self._msg:
            self._flush_record()
            self._rec_buf, self._rec_start = self._buf, self._msg
        self._rec_end = self._pos

    def _flush_record(self) -> None:
        """Write the marked messages to the recording (one write for a whole receive buffer)."""
        if self._rec_end > self._rec_start:
            span = self._rec_buf[self._rec_start : self._rec_end]
            self._rec_start = self._rec_end
            self._write_record(span)

    def _record(self, *parts: bytes | bytearray | memoryview) -> None:
        """Write ``parts`` as one message, after what is marked already (keeps the stream's order)."""
        if self.record is None:
            return
        self._flush_record()
        for part in parts:
            self._write_record(part)

    def _write_record(self, part: bytes | bytearray | memoryview) -> None:
        assert self.record is not None
        try:
            self.record.write(part)
        except OSError as exc:
            raise self._fail("recording", f"recording the raw data failed: {exc}") from None

    def __iter__(self) -> Iterator[Any]:
        try:
            while True:
                item = self.read_message()
                if item is None:
                    return
                yield item
        finally:
            self.finish_record()

    def finish_record(self) -> None:
        """End the recording with a close message if the client's stream broke off without one.

        The recording then is a complete MRD v1 stream of every whole message received, which
        is what the HDF5 conversion reads; it is idempotent.
        """
        if self.record is not None and not self._record_closed:
            with contextlib.suppress(WireError):
                self._flush_record()  # whole messages parsed before the stream broke off
        # (nothing recorded, e.g. a port probe: the file stays empty and the server removes it)
        if self.record is not None and self.bytes_read and not self.counts.get(4) and not self._record_closed:
            with contextlib.suppress(OSError):
                self.record.write(struct.pack("<H", 4))
        self._record_closed = True
        if self.record is not None:
            # on disk now, whatever the chain does next (it may be slow, stuck or killed)
            try:
                self.record.flush()
            except OSError as exc:  # the stream already ended for another reason: say so, go on
                log.error("%s: recording the raw data failed: %s", self.label, exc)

    def deserialize(self) -> Iterator[Any]:
        """Same as iterating (the name ``ProtocolDeserializer`` uses)."""
        return iter(self)


def linger(sock: socket.socket, timeout_s: float = 1.0, max_bytes: int = 64 << 20) -> int:
    """Half-close ``sock`` and discard what the client still sends, briefly, before the caller closes it.

    Closing a socket with unread input makes the kernel send a reset, which can
    destroy the error message just written before the client has read it.
    Shutting down the sending side first and draining (at most ``timeout_s``
    seconds and ``max_bytes`` bytes) lets the error and the close message arrive.

    Returns:
        The number of bytes discarded.
    """
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
    deadline = time.monotonic() + timeout_s
    buf = bytearray(1 << 16)
    n = 0
    try:
        while n < max_bytes:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            k = sock.recv_into(buf)
            if not k:
                break
            n += k
    except OSError:
        pass
    return n
