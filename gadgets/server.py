"""MRD v1 streaming server: one thread and one chain per connection, raw data recorded as it arrives.

Protocol (MRD v1, the bytes Gadgetron's and the FIRE Python server's clients
speak): the client sends a config — file (id 1: a chain *name*) or text
(id 2: a chain TOML document) — then the XML header (3), then acquisitions
(1008), waveforms (1026) and text (5), and finally close (4).  The server
streams back images (1022), text (5) and, for transport-only chains,
acquisitions/waveforms, then close (4).

Safety: a chain name resolves only to a shipped chain or a file in
``chains_dir``; a chain sent as text may only use registered gadgets.  The
server never imports a module a client names.

Failures: if the chain fails, the server keeps reading (and recording) the
client's data to the end, sends one text message starting with
``unisono error:`` and closes normally; other connections are unaffected.

Input is read by :class:`gadgets.wire.MessageReader` under
:class:`gadgets.limits.ServerLimits` (sizes, timeouts, connection count,
queue bound, shutdown grace); docs/server.md lists every fault and its answer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import itertools
import logging
import queue
import socket
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO

import ismrmrd
from ismrmrd.serialization import ConfigFile, ConfigText, ProtocolSerializer

from gadgets.chain import Chain, load_chain, shipped_chain_path
from gadgets.limits import ServerLimits
from gadgets.memory import release_free_memory
from gadgets.policy import parse_client_chain
from gadgets.recorder import Converter, DirectFile
from gadgets.runtime import ChainError, RunningChain
from gadgets.wire import Disconnected, MessageReader, Rejected, WireError, linger

__all__ = ["MRDServer", "ERROR_PREFIX", "handle_stream"]

log = logging.getLogger(__name__)

#: text messages starting with this report a failed chain to the client
ERROR_PREFIX = "unisono error: "
#: after a connection ends while others stream, free heap memory is given back to the OS at most
#: this often (s); at once when the server is idle
_TRIM_EVERY_S = 30.0
#: a finished connection's HDF5 conversion waits while other connections stream, at most this
#: long (s): on a 2-core machine the conversion (~0.8 CPU-s per 335 MB, mostly the kernel's
#: page-cache writes) cut the next scan's streaming rate by a fifth even at idle priority
CONVERT_DEFER_S = 30.0
#: ... and it starts once no connection has been open for this long (s): back-to-back scans
#: leave only milliseconds between one connection's close and the next one's connect
CONVERT_IDLE_S = 0.5
#: what connections still open at the end of the shutdown grace are told
SHUTDOWN_TEXT = "the server is shutting down; the data received so far are saved"

_SENDABLE = (ismrmrd.Image, ismrmrd.Acquisition, ismrmrd.Waveform, str)


def _resolve_config(msg: Any, chains_dir: str | Path | None) -> Chain:
    if isinstance(msg, ConfigFile):
        # Only plain names, resolved inside the shipped chains or chains_dir: never a client's path.
        path = shipped_chain_path(str(msg).strip(), chains_dir)
        return load_chain(path)
    text = str(msg)
    if text.lstrip().startswith("<"):
        raise ValueError(
            "config text is XML (a Gadgetron chain?); unisono expects a chain TOML document or a chain name"
        )
    # parsed as data; registered gadgets and plain-name parameters only (see gadgets.policy)
    return parse_client_chain(text)


def handle_stream(
    rfile: BinaryIO,
    wfile: BinaryIO,
    chains_dir: str | Path | None = None,
    device: str = "cpu",
    label: str = "",
    limits: ServerLimits | None = None,
    record: BinaryIO | None = None,
    stop: threading.Event | None = None,
) -> str | None:
    """Serve one MRD v1 stream (reader side in this thread, replies from a sender thread).

    ``rfile`` (a connected socket or a readable file) is read by the defensive
    :class:`~gadgets.wire.MessageReader` under ``limits``; every complete,
    well-formed message is copied to ``record`` (the raw recording) as it is read.
    ``stop`` ends the read early (server shutdown).

    Returns:
        The error text sent to the client, or None on success.
    """
    limits = limits or ServerLimits()
    # set when replies cannot be sent: a client that does not read is not served further
    send_failed = threading.Event()
    stops = [e for e in (stop, send_failed) if e is not None]
    # readouts received but not yet handed to the chain: passed on together (one queue hand-off)
    # when the reader is about to wait for the client, when a batch is full or before any
    # other message, so the chain sees them in order and a live scan's readouts are not held
    batch: list[Any] = []

    def pass_on() -> None:
        if batch:
            items = batch.copy()
            batch.clear()
            if rc is not None and rc.error is None:
                try:
                    rc.put_many(items)
                except ChainError:
                    pass  # reported by the sender thread; keep recording the raw data

    des = MessageReader(rfile, limits, record=record, label=label, stop=stops, on_wait=pass_on)
    ser = ProtocolSerializer(wfile)
    send_lock = threading.Lock()
    errors: list[str] = []

    def send(item: Any) -> None:
        with send_lock:
            ser.serialize(item)

    def report(text: str) -> None:
        if not errors:
            errors.append(text)
            log.error("%s: %s", label, _printable(text))
            try:
                send(ERROR_PREFIX + text)
                wfile.flush()
            except OSError:
                pass

    chain: Chain | None = None
    config_error: str | None = None
    finished = threading.Event()  # this connection's chain is done (ends its shutdown watcher)
    rc: RunningChain | None = None
    header_seen = False
    sender: threading.Thread | None = None

    def pump(rc: RunningChain) -> None:
        try:
            for items in rc.batches():
                urgent = False
                for item in items:
                    if not isinstance(item, _SENDABLE):
                        raise TypeError(f"chain output of type {type(item).__name__} cannot be sent over MRD")
                    send(item)
                    urgent = urgent or isinstance(item, str)
                # text (e.g. motion feedback) must reach the client now; the rest when nothing
                # more is ready (images then leave at once, a stream of readouts in 1 MB writes)
                if urgent or not rc.output_waiting():
                    with send_lock:
                        wfile.flush()
            with send_lock:
                wfile.flush()
        except ChainError as exc:
            report(str(exc))
        except (OSError, TypeError) as exc:
            rc.abort(str(exc))
            report(f"sending results failed: {exc}")
            if isinstance(exc, OSError):
                send_failed.set()

    try:
        for msg in des.deserialize():
            if isinstance(msg, ismrmrd.Acquisition | ismrmrd.Waveform) and rc is not None:
                batch.append(msg)
                if len(batch) >= rc.batch_size:
                    pass_on()
                continue
            pass_on()  # keep the stream's order
            if isinstance(msg, ConfigFile | ConfigText):
                if chain is not None or rc is not None:
                    report("a second config message arrived; a connection runs one chain")
                    continue
                try:
                    chain = _resolve_config(msg, chains_dir)
                    if chain.queue_size > limits.max_queue_items:
                        # a bounded queue is what makes a slow chain slow the client down
                        chain = dataclasses.replace(chain, queue_size=limits.max_queue_items)
                    log.info("%s: chain '%s' (sha256 %s)", label, chain.name, chain.sha256[:12])
                except (ValueError, FileNotFoundError) as exc:
                    config_error = str(exc)
                    report(config_error)
            elif isinstance(msg, ismrmrd.xsd.ismrmrdHeader):
                header_seen = True
                if chain is None and config_error is None:
                    config_error = "the header arrived before a config message (id 1 or 2) naming the chain"
                    report(config_error)
                if chain is not None and rc is None:
                    try:
                        rc = RunningChain(chain, msg, device)
                    except Exception as exc:  # noqa: BLE001 - any start-up failure goes to the client
                        report(f"chain '{chain.name}' could not start: {exc}")
                        chain = None
                        continue
                    sender = threading.Thread(target=pump, args=(rc,), name=f"{label}-send", daemon=True)
                    sender.start()
                    if stop is not None:
                        threading.Thread(
                            target=_abort_on_stop, args=(rc, stop, finished, report), daemon=True
                        ).start()
            elif isinstance(msg, ismrmrd.Acquisition | ismrmrd.Waveform):
                if not header_seen and not errors:
                    report("data arrived before the MRD header (message id 3)")
            elif isinstance(msg, Rejected):
                # recorded by the reader already; the chain must not reconstruct it
                report(msg.problem)
                if rc is not None:
                    rc.abort(msg.problem)
            elif isinstance(msg, str):
                log.info("%s: client text: %s", label, _printable(msg[:200]))
            else:
                log.warning("%s: ignoring message of type %s", label, type(msg).__name__)
    except Disconnected as exc:
        if not exc.mid_message and des.bytes_read == 0:
            # a port probe or health check: nothing was sent, nothing is lost
            log.info("%s: closed before sending anything", label)
        else:
            # a half-closed client can still read the error; a vanished one costs a failed send
            report(str(exc))
        if rc is not None:
            rc.abort("client disconnected")
    except EOFError:
        log.warning("%s: client disconnected without a close message", label)
        if rc is not None:
            rc.abort("client disconnected")
    except WireError as exc:
        report(str(exc))
        if rc is not None:
            rc.abort(str(exc))
    except Exception as exc:  # noqa: BLE001 - a malformed message must not kill the server
        report(f"malformed stream: {exc}")
        if rc is not None:
            rc.abort(str(exc))
    if rc is not None:
        if rc.error is None:
            try:
                pass_on()
                rc.close()
            except ChainError:
                pass
        if sender is not None:
            sender.join()
    finished.set()
    try:
        with send_lock:
            ser.close()  # CLOSE (4) and flush
    except OSError:
        pass
    return errors[0] if errors else None


class MRDServer:
    """An MRD v1 TCP server running unisono chains.

    Args:
        host: interface to bind (``127.0.0.1``; ``0.0.0.0`` for every interface).
        port: TCP port; 0 picks a free one (read it back from :attr:`port`).
        raw_dir: where each connection's raw data are recorded: the received bytes go to
            ``<time>_<n>.mrd`` as they arrive and become ``<time>_<n>.h5`` (MRD HDF5) when the
            connection ends (see :mod:`gadgets.recorder`); None disables recording.
        chains_dir: extra chain files clients may name (besides the shipped ones).
        device: ``auto``, ``cpu`` or ``cuda`` for every chain.
        limits: message sizes, connection count, timeouts, queue bound and shutdown grace
            (:class:`~gadgets.limits.ServerLimits`; defaults when None).
        convert_in_process: convert the raw streams to HDF5 in a low-priority child process
            (default; :class:`gadgets.recorder.Converter`), so conversions take neither the GIL
            nor CPU from connections streaming meanwhile; False converts in a server thread.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 9002,
        raw_dir: str | Path | None = "unisono-raw",
        chains_dir: str | Path | None = None,
        device: str = "cpu",
        limits: ServerLimits | None = None,
        convert_in_process: bool = True,
    ):
        if not 0 <= int(port) < 65536:
            raise ValueError(f"port must be in 0..65535, got {port}")
        self.limits = limits or ServerLimits()
        self.host = host
        self._port = int(port)
        self.raw_dir = Path(raw_dir) if raw_dir is not None else None
        self.chains_dir = chains_dir
        self.device = device
        self._sock: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._conns: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        # set once the shutdown grace is over: in-flight reads end with "server is shutting down"
        self._end_connections = threading.Event()
        # plain attributes, so a signal handler may set them without taking a lock
        self.stop_requested = False
        self._force_stop = False
        self._rejecting = 0
        # connections whose socket is still open (the max_connections count; raw-file conversion
        # after the socket closed does not hold a slot)
        self._open_sockets = 0
        self._last_close = 0.0  # time.monotonic() when a connection's socket last closed
        # raw streams to convert to HDF5, by one worker: h5py serializes HDF5 calls anyway, and a
        # thread per pending conversion made memory grow with the backlog under sustained load
        # (stem or None when nothing was recorded, label, time the connection ended)
        self._convert_q: queue.Queue[tuple[Path | None, str, float] | None] = queue.Queue()
        self._pending_conversions = 0
        self._last_trim = time.monotonic()
        self._converter: threading.Thread | None = None
        self.raw_converter = Converter(process=convert_in_process)
        self._counter = itertools.count(1)
        #: paths of the raw files recorded so far
        self.raw_files: list[Path] = []

    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        return self._port

    def start(self) -> MRDServer:
        """Bind and accept connections in a background thread."""
        if self._sock is not None:
            raise RuntimeError("server already started")
        if self.raw_dir is not None:
            self.raw_dir.mkdir(parents=True, exist_ok=True)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._port))
        sock.listen(max(16, self.limits.max_connections))
        sock.settimeout(0.2)  # so stop() is noticed promptly
        self._sock = sock
        self._port = sock.getsockname()[1]
        self._accept_thread = threading.Thread(target=self._accept_loop, name="mrd-accept", daemon=True)
        self._accept_thread.start()
        # converts recordings and gives freed memory back, after connections (with or without raw)
        self._converter = threading.Thread(target=self._convert_loop, name="mrd-raw-convert", daemon=True)
        self._converter.start()
        log.info("MRD server listening on %s:%d (%s)", self.host, self._port, self.limits.describe())
        if not _is_loopback(self.host):
            log.warning(
                "listening on %s, not loopback: every host that can reach port %d can send data "
                "and run shipped chains",
                self.host,
                self._port,
            )
        return self

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stopping.is_set():
            try:
                conn, addr = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            n = next(self._counter)
            with self._lock:
                busy = self._open_sockets >= self.limits.max_connections
            if busy:
                self._reject(conn, addr, n)
                continue
            t = threading.Thread(target=self._serve, args=(conn, addr, n), name=f"mrd-conn-{n}", daemon=True)
            with self._lock:
                self._conns.add(t)
                self._open_sockets += 1
            t.start()

    def _reject(self, conn: socket.socket, addr: Any, n: int) -> None:
        """Tell a connection over ``max_connections`` why it is refused, off the accept thread."""
        text = (
            f"server busy: {self.limits.max_connections} connections are being served "
            "(max_connections); try again later"
        )
        log.warning("connection %d from %s:%d refused: %s", n, addr[0], addr[1], text)

        def go() -> None:
            try:
                conn.settimeout(2.0)
                with conn, conn.makefile("wb") as wfile:
                    _send_error(wfile, text)
                    linger(conn, 1.0, 1 << 20)
            except OSError:
                pass
            finally:
                with self._lock:
                    self._rejecting -= 1

        with self._lock:
            # a flood of refused connections must not become a flood of threads
            if self._rejecting >= 64:
                conn.close()
                return
            self._rejecting += 1
        threading.Thread(target=go, name=f"mrd-refuse-{n}", daemon=True).start()

    def _serve(self, conn: socket.socket, addr: Any, n: int) -> None:
        label = f"connection {n} from {addr[0]}:{addr[1]}"
        stem = None
        if self.raw_dir is not None:
            stem = self.raw_dir / f"{time.strftime('%Y%m%dT%H%M%S')}_{n:04d}"
        try:
            # the socket timeout bounds sends to a client that stopped reading; reads have their
            # own deadlines (idle and message timeouts) in gadgets.wire
            conn.settimeout(self.limits.idle_timeout_s)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with contextlib.ExitStack() as stack:
                stack.enter_context(conn)
                wfile = stack.enter_context(conn.makefile("wb", buffering=1 << 20))
                sink = None
                if stem is not None:
                    try:
                        # written without the page cache (see gadgets.recorder.DirectFile): the
                        # stream file is written once and read once, by the converter
                        sink = stack.enter_context(DirectFile(stem.with_suffix(".mrd")))
                    except OSError as exc:
                        # no scan without its raw data: refuse it and say why, rather than lose it
                        stem = None
                        text = f"cannot record raw data ({exc}); the scan is refused"
                        log.error("%s: %s", label, text)
                        _send_error(wfile, text)
                        linger(conn)
                        return
                    log.info("%s: recording raw data to %s", label, stem.with_suffix(".mrd"))
                error = handle_stream(
                    conn,
                    wfile,
                    self.chains_dir,
                    self.device,
                    label,
                    limits=self.limits,
                    record=sink,
                    stop=self._end_connections,
                )
                if error is not None:
                    # the client may still be sending: let the error and close reach it before the reset
                    linger(conn)
        except OSError as exc:
            log.warning("%s: socket error %s", label, exc)
        finally:
            with self._lock:
                self._open_sockets -= 1
                self._last_close = time.monotonic()
                if stem is not None:
                    self._pending_conversions += 1
            # after the client has its answer: conversion and memory trimming are off the streaming path
            self._convert_q.put((stem, label, self._last_close))
            with self._lock:
                self._conns.discard(threading.current_thread())

    def _convert_loop(self) -> None:
        """After each connection, one at a time until told to stop: convert its raw stream to MRD
        HDF5 (when it was recorded) and give freed heap back to the OS.

        Both wait while connections stream (live data first) until none has been open for
        :data:`CONVERT_IDLE_S`, at most until :data:`CONVERT_DEFER_S` after the connection
        ended, and not at all once the server is stopping. The stream file is complete on disk
        meanwhile (see :mod:`gadgets.recorder`).
        """
        while True:
            job = self._convert_q.get()
            if job is None:
                return
            stem, label, ended = job
            self._wait_for_idle(ended + CONVERT_DEFER_S)
            if stem is not None:
                try:
                    self._convert(stem, label)
                finally:
                    with self._lock:
                        self._pending_conversions -= 1
            # a long-running server's RSS would otherwise creep up (see gadgets.memory); but
            # the pages given back cost ~0.6 µs each to fault in again on VMs that reclaim
            # free guest memory (0.2 CPU-s per 335 MB), so a busy server trims only now and then
            with self._lock:
                idle = self._open_sockets == 0
            if idle or time.monotonic() - self._last_trim > _TRIM_EVERY_S:
                release_free_memory()
                self._last_trim = time.monotonic()

    def _wait_for_idle(self, deadline: float) -> None:
        """Until no connection has been open for CONVERT_IDLE_S, ``deadline`` or the server stops."""
        while not self._stopping.is_set() and time.monotonic() < deadline:
            with self._lock:
                idle_s = time.monotonic() - self._last_close if self._open_sockets == 0 else 0.0
            if idle_s >= CONVERT_IDLE_S:
                return
            time.sleep(0.05)

    def _convert(self, stem: Path, label: str) -> None:
        """One connection's ``stem.mrd`` recording to ``stem.h5`` (kept as .mrd if that fails)."""
        try:
            stream = stem.with_suffix(".mrd")
            if stream.exists() and stream.stat().st_size == 0:
                stream.unlink()  # the client sent nothing (a port probe): there is nothing to keep
                return
            self.raw_converter.convert(stream, stem.with_suffix(".h5"))
            if stem.with_suffix(".h5").exists():
                self.raw_files.append(stem.with_suffix(".h5"))
        except Exception as exc:  # noqa: BLE001 - keep the .mrd stream file if conversion fails
            log.error("%s: raw stream to HDF5 failed (%s); kept %s.mrd", label, exc, stem)

    @property
    def active_connections(self) -> int:
        """Connections being served, plus raw files still waiting for their HDF5 conversion."""
        with self._lock:
            return len(self._conns) + self._pending_conversions

    def request_stop(self, force: bool = False) -> None:
        """Ask :meth:`serve_forever` to stop (safe to call from a signal handler: sets flags only).

        Args:
            force: end in-flight connections now instead of after the shutdown grace.
        """
        self.stop_requested = True
        if force:
            self._force_stop = True

    def stop(self, timeout: float | None = None) -> None:
        """Graceful stop: stop accepting, let connections finish, end the rest, flush raw files.

        Args:
            timeout: seconds in-flight connections get to finish (default ``limits.shutdown_grace_s``);
                after it, each is ended with an ``unisono error: the server is shutting down`` message,
                its chain aborted and the raw data received so far converted to HDF5.
        """
        grace = self.limits.shutdown_grace_s if timeout is None else float(timeout)
        self._stopping.set()
        if self._accept_thread is not None:
            self._accept_thread.join()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        deadline = time.monotonic() + grace
        while self.active_connections and time.monotonic() < deadline and not self._force_stop:
            time.sleep(0.05)
        with self._lock:
            conns = list(self._conns)
        if conns:
            log.warning("ending %d in-flight connection(s): the server is shutting down", len(conns))
            self._end_connections.set()
        for t in conns:
            # bounded: the reader notices the stop within a poll tick, the chain is aborted
            t.join(60.0)
        if self._converter is not None:
            # flush: every recorded stream becomes its HDF5 raw file before stop() returns
            self._convert_q.put(None)
            self._converter.join()
            self._converter = None
        self.raw_converter.close()

    def serve_forever(self) -> None:
        """Start (if needed) and block until interrupted (Ctrl-C), :meth:`request_stop` or :meth:`stop`."""
        if self._sock is None:
            self.start()
        try:
            while not self._stopping.is_set() and not self.stop_requested:
                self._stopping.wait(0.2)
        finally:
            self.stop()

    def __enter__(self) -> MRDServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _abort_on_stop(rc: RunningChain, stop: threading.Event, finished: threading.Event, report: Any) -> None:
    """Abort ``rc`` when the server stops, even if the reader is no longer reading (chain busy or stuck)."""
    while not finished.wait(0.25):
        if stop.is_set():
            report(SHUTDOWN_TEXT)
            rc.abort(SHUTDOWN_TEXT)
            return


def _printable(text: str) -> str:
    """``text`` with control characters escaped, so a client cannot forge log lines."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _send_error(wfile: BinaryIO, text: str) -> None:
    """One ``unisono error:`` text message and the close message, flushed."""
    ser = ProtocolSerializer(wfile)
    ser.serialize(ERROR_PREFIX + text)
    ser.close()


def _is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
