"""Fault injection for the MRD server: well-formed and deliberately broken client streams.

Used by the server tests (``tests/test_server_*.py``) and the soak benchmark
(:mod:`gadgets.soak`).  A :class:`ClientPlan` is a list of socket steps (send
bytes, pause, half-close, vanish) plus what the server must do about it: the
error it must send back (a regular expression) and how many acquisitions its
raw recording must hold afterwards.  :func:`run_plan` plays a plan over a real
loopback socket and returns what came back.

Every fault starts like a real scan (config, header, a few readouts) so that
the raw-data guarantee — what arrived whole is on disk — is exercised too.
"""

from __future__ import annotations

import io
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ismrmrd
import numpy as np
from ismrmrd.serialization import ConfigFile, ConfigText, ProtocolDeserializer, ProtocolSerializer

from gadgets.synthetic import cartesian_acquisitions, make_header

__all__ = [
    "ClientPlan",
    "PlanResult",
    "scan_data",
    "encode",
    "valid_plan",
    "FAULTS",
    "fault_plan",
    "run_plan",
]

ERROR_PREFIX = "unisono error: "  # same text as gadgets.server.ERROR_PREFIX (not imported: no cycle)


@dataclass(frozen=True)
class ClientPlan:
    """What a test client does and what the server must answer.

    Attributes:
        name: the fault's name (``valid`` for a good scan).
        steps: ``("send", bytes)``, ``("sleep", seconds)``, ``("shutdown",)`` (half-close: no more
            data, still reading) or ``("vanish",)`` (close the socket without reading the reply).
        expect_error: regular expression the server's ``unisono error:`` text must match; None for
            a valid scan (no error allowed); ``""`` for "any error".
        recorded: acquisitions the raw HDF5 file of this connection must hold; None when no raw file
            can exist (the header never arrived intact).
        measurement_id: put in the header's ``measurementInformation.measurementID`` so the raw file
            can be matched to its connection.
        expect_images: a valid scan must return at least one image.
    """

    name: str
    steps: tuple[tuple[Any, ...], ...]
    expect_error: str | None
    recorded: int | None
    measurement_id: str = ""
    expect_images: bool = False


@dataclass
class PlanResult:
    """What came back over the socket.

    Attributes:
        items: every message received (images, text, acquisitions...).
        errors: the ``unisono error:`` texts among them (prefix removed).
        closed: the server ended with a close message (id 4).
        failure: why reading stopped otherwise (a reset, a timeout), else "".
        seconds: wall time of the whole exchange.
    """

    items: list[Any] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    closed: bool = False
    failure: str = ""
    seconds: float = 0.0

    @property
    def images(self) -> list[ismrmrd.Image]:
        return [i for i in self.items if isinstance(i, ismrmrd.Image)]


def scan_data(
    matrix: int = 32, n_coils: int = 2, measurement_id: str = "", seed: int = 0
) -> tuple[Any, list[ismrmrd.Acquisition]]:
    """A small 2x-oversampled Cartesian scan of a disk phantom: (header, acquisitions).

    The k-space is the FFT of a disk with smooth coil sensitivities, so the shipped
    ``cartesian`` chain gives a real image.
    """
    header = make_header((matrix, matrix), n_coils=n_coils, readout_oversampling=2)
    if measurement_id:
        header.measurementInformation = ismrmrd.xsd.measurementInformationType(
            measurementID=measurement_id, patientPosition=ismrmrd.xsd.patientPositionType.HFS
        )
    nx, ny = 2 * matrix, matrix
    y, x = np.mgrid[-ny / 2 : ny / 2, -nx / 2 : nx / 2]
    img = ((x / (nx / 4)) ** 2 + (y / (ny / 2.5)) ** 2 < 1).astype(np.complex64)
    rng = np.random.default_rng(seed)
    coils = []
    for c in range(n_coils):
        angle = 2 * np.pi * c / max(n_coils, 1)
        sens = np.exp(-(((x - 10 * np.cos(angle)) / nx) ** 2 + ((y - 10 * np.sin(angle)) / ny) ** 2))
        k = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(img * sens), norm="ortho"))
        k = k + 0.01 * (rng.standard_normal(k.shape) + 1j * rng.standard_normal(k.shape))
        coils.append(k)
    return header, cartesian_acquisitions(np.stack(coils).astype(np.complex64))


def encode(*items: Any, close: bool = False) -> bytes:
    """MRD v1 bytes of ``items`` (ConfigFile/ConfigText/header/acquisitions/str), optionally closed."""
    buf = io.BytesIO()
    ser = ProtocolSerializer(buf)
    for item in items:
        ser.serialize(item)
    if close:
        ser.close()
    return buf.getvalue()


def _config(chain: str | None, chain_text: str | None) -> Any:
    return ConfigText(chain_text) if chain_text is not None else ConfigFile(chain or "cartesian")


def valid_plan(
    measurement_id: str = "valid", chain: str = "cartesian", matrix: int = 32, n_coils: int = 2
) -> ClientPlan:
    """A good scan: config, header, every readout, close; images must come back, nothing lost."""
    header, acqs = scan_data(matrix, n_coils, measurement_id)
    data = encode(ConfigFile(chain), header, *acqs, close=True)
    return ClientPlan(
        "valid", (("send", data),), None, len(acqs), measurement_id, expect_images=chain != "passthrough"
    )


# -- the faults ------------------------------------------------------------------------------------
# Each builder gets (measurement id, options) and returns a plan; ``n_ok`` readouts go first.

_N_OK = 4


def _prefix(
    mid: str, chain: str = "cartesian", chain_text: str | None = None
) -> tuple[bytes, list[Any], Any]:
    header, acqs = scan_data(measurement_id=mid)
    return encode(_config(chain, chain_text), header, *acqs[:_N_OK]), acqs, header


def _garbage(mid: str, opts: dict[str, Any]) -> ClientPlan:
    pre, _, _ = _prefix(mid)
    rng = np.random.default_rng(opts.get("seed", 0))
    # the first two bytes are an id no MRD message has, so the outcome is known; the rest is noise
    junk = struct.pack("<H", 0xBEEF) + rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    return ClientPlan("garbage", (("send", pre + junk),), "unknown message id 48879", _N_OK, mid)


def _oversized_text(mid: str, opts: dict[str, Any]) -> ClientPlan:
    pre, _, _ = _prefix(mid)
    return ClientPlan(
        "oversized-text",
        (("send", pre + struct.pack("<HI", 5, 0xFFFFFFF0)),),
        r"text message is 4294967280 bytes; the limit is \d+ bytes",
        _N_OK,
        mid,
    )


def _oversized_acquisition(mid: str, opts: dict[str, Any]) -> ClientPlan:
    pre, acqs, _ = _prefix(mid)
    head = ismrmrd.AcquisitionHeader.from_buffer_copy(acqs[_N_OK].to_bytes())
    head.number_of_samples = 65535
    head.active_channels = 65535
    return ClientPlan(
        "oversized-acquisition",
        (("send", pre + struct.pack("<H", 1008) + bytes(head)),),
        r"acquisition \(65535 channels x 65535 samples.*the limit is",
        _N_OK,
        mid,
    )


def _truncated(mid: str, opts: dict[str, Any]) -> ClientPlan:
    pre, acqs, _ = _prefix(mid)
    half = encode(acqs[_N_OK])[:200]
    return ClientPlan("truncated", (("send", pre + half), ("shutdown",)), "truncated message", _N_OK, mid)


def _disconnect(mid: str, opts: dict[str, Any]) -> ClientPlan:
    pre, acqs, _ = _prefix(mid)
    # a client that dies mid-scan: the error cannot reach it, the data must still be on disk
    return ClientPlan("disconnect", (("send", pre), ("sleep", 0.05), ("vanish",)), None, _N_OK, mid)


def _invalid_xml(mid: str, opts: dict[str, Any]) -> ClientPlan:
    xml = b'<?xml version="1.0"?><ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"><encoding><oops'
    data = encode(ConfigFile("cartesian")) + struct.pack("<HI", 3, len(xml)) + xml
    return ClientPlan("invalid-xml", (("send", data),), "not valid ISMRMRD XML", None, mid)


def _xml_entity(mid: str, opts: dict[str, Any]) -> ClientPlan:
    xml = (
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
        b'<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"><version>&e;</version></ismrmrdHeader>'
    )
    data = encode(ConfigFile("cartesian")) + struct.pack("<HI", 3, len(xml)) + xml
    return ClientPlan("xml-entity", (("send", data),), "contains a DTD", None, mid)


def _header_without_encoding(mid: str, opts: dict[str, Any]) -> ClientPlan:
    header, _ = scan_data(measurement_id=mid)
    header.encoding = []
    data = encode(ConfigFile("cartesian"), header)
    return ClientPlan("no-encoding", (("send", data),), "no <encoding> element", None, mid)


def _data_before_header(mid: str, opts: dict[str, Any]) -> ClientPlan:
    _, acqs = scan_data(measurement_id=mid)
    data = encode(ConfigFile("cartesian"), acqs[0])
    return ClientPlan("out-of-order", (("send", data),), "arrived before the MRD header", None, mid)


def _header_first(mid: str, opts: dict[str, Any]) -> ClientPlan:
    header, acqs = scan_data(measurement_id=mid)
    data = encode(header, *acqs, close=True)  # no config: nothing to run, but the scan is kept
    return ClientPlan("header-first", (("send", data),), "header arrived before a config", len(acqs), mid)


def _huge_matrix(mid: str, opts: dict[str, Any]) -> ClientPlan:
    header, _ = scan_data(measurement_id=mid)
    m = header.encoding[0].encodedSpace.matrixSize
    m.x, m.y, m.z = 65535, 65535, 64
    data = encode(ConfigFile("cartesian"), header)
    return ClientPlan(
        "huge-matrix", (("send", data),), r"voxels; the limit is \d+ \(--max-voxels\)", None, mid
    )


def _second_config(mid: str, opts: dict[str, Any]) -> ClientPlan:
    header, acqs = scan_data(measurement_id=mid)
    items = [ConfigFile("passthrough"), header, *acqs[:_N_OK], ConfigFile("cartesian"), *acqs[_N_OK:]]
    data = encode(*items, close=True)
    return ClientPlan("second-config", (("send", data),), "a second config message", len(acqs), mid)


def _second_header(mid: str, opts: dict[str, Any]) -> ClientPlan:
    header, acqs = scan_data(measurement_id=mid)
    data = encode(ConfigFile("passthrough"), header, *acqs[:_N_OK], header)
    return ClientPlan("second-header", (("send", data),), "second MRD header", _N_OK, mid)


def _inconsistent(mid: str, opts: dict[str, Any]) -> ClientPlan:
    header, acqs = scan_data(n_coils=2, measurement_id=mid)
    bad = ismrmrd.Acquisition.from_array(np.zeros((4, acqs[0].number_of_samples), np.complex64))
    bad.scan_counter = _N_OK
    items = [*acqs[:_N_OK], bad, *acqs[_N_OK:]]
    data = encode(ConfigFile("cartesian"), header, *items, close=True)
    # recorded in full: the readout is kept as data, only kept out of the reconstruction
    return ClientPlan(
        "inconsistent",
        (("send", data),),
        r"active_channels is 4 but the header's receiverChannels is 2",
        len(items),
        mid,
    )


def _unknown_chain(mid: str, opts: dict[str, Any]) -> ClientPlan:
    header, acqs = scan_data(measurement_id=mid)
    data = encode(ConfigFile("no-such-chain"), header, *acqs, close=True)
    return ClientPlan("unknown-chain", (("send", data),), "unknown chain 'no-such-chain'", len(acqs), mid)


def _path_traversal_chain(mid: str, opts: dict[str, Any]) -> ClientPlan:
    header, acqs = scan_data(measurement_id=mid)
    data = encode(ConfigFile("../../etc/passwd"), header, *acqs, close=True)
    return ClientPlan("chain-path", (("send", data),), "plain name", len(acqs), mid)


def _code_injection(mid: str, opts: dict[str, Any]) -> ClientPlan:
    header, acqs = scan_data(measurement_id=mid)
    text = 'name = "x"\n[[gadget]]\nmodule = "os"\ntarget = "system"\n'
    data = encode(ConfigText(text), header, *acqs, close=True)
    return ClientPlan("code-injection", (("send", data),), "registered gadget", len(acqs), mid)


def _path_parameter(mid: str, opts: dict[str, Any]) -> ClientPlan:
    header, acqs = scan_data(measurement_id=mid)
    text = (
        'name = "x"\n[[gadget]]\nname = "harmonize"\ngadget = "Harmonize"\n'
        '[gadget.params]\nprofile = "/etc/passwd"\n'
    )
    data = encode(ConfigText(text), header, *acqs, close=True)
    return ClientPlan("path-parameter", (("send", data),), "not a plain name", len(acqs), mid)


def _gadget_raises(mid: str, opts: dict[str, Any]) -> ClientPlan:
    header, acqs = scan_data(measurement_id=mid)
    acqs[5].idx.kspace_encode_step_1 = 500  # outside the matrix: the accumulator raises
    data = encode(ConfigFile("cartesian"), header, *acqs, close=True)
    return ClientPlan("gadget-raises", (("send", data),), "gadget 'accumulate' failed", len(acqs), mid)


def _slow_client(mid: str, opts: dict[str, Any]) -> ClientPlan:
    pre, acqs, _ = _prefix(mid)
    part = encode(acqs[_N_OK])
    wait = float(opts.get("message_timeout_s", 1.0)) + 0.5
    return ClientPlan(
        "slow-client",
        (("send", pre + part[:100]), ("sleep", wait), ("send", part[100:110])),
        "not complete within .* s \\(message timeout\\)",
        _N_OK,
        mid,
    )


def _idle_client(mid: str, opts: dict[str, Any]) -> ClientPlan:
    pre, _, _ = _prefix(mid)
    wait = float(opts.get("idle_timeout_s", 1.0)) + 0.5
    return ClientPlan("idle", (("send", pre), ("sleep", wait)), r"idle timeout", _N_OK, mid)


#: fault name -> plan builder ``(measurement_id, options) -> ClientPlan``
FAULTS: dict[str, Callable[[str, dict[str, Any]], ClientPlan]] = {
    "garbage": _garbage,
    "oversized-text": _oversized_text,
    "oversized-acquisition": _oversized_acquisition,
    "truncated": _truncated,
    "disconnect": _disconnect,
    "invalid-xml": _invalid_xml,
    "xml-entity": _xml_entity,
    "no-encoding": _header_without_encoding,
    "out-of-order": _data_before_header,
    "header-first": _header_first,
    "huge-matrix": _huge_matrix,
    "second-header": _second_header,
    "second-config": _second_config,
    "inconsistent": _inconsistent,
    "unknown-chain": _unknown_chain,
    "chain-path": _path_traversal_chain,
    "code-injection": _code_injection,
    "path-parameter": _path_parameter,
    "gadget-raises": _gadget_raises,
    "slow-client": _slow_client,
    "idle": _idle_client,
}


def fault_plan(name: str, measurement_id: str = "", **options: Any) -> ClientPlan:
    """The plan of fault ``name`` (see :data:`FAULTS`); options: ``message_timeout_s``, ``idle_timeout_s``."""
    try:
        builder = FAULTS[name]
    except KeyError:
        raise ValueError(f"unknown fault '{name}'; known faults: {', '.join(FAULTS)}") from None
    return builder(measurement_id or name, options)


def run_plan(port: int, plan: ClientPlan, timeout_s: float = 30.0, host: str = "127.0.0.1") -> PlanResult:
    """Play ``plan`` against the server at ``host:port`` (loopback) and collect the reply.

    Sending and reading are interleaved by a reader thread, as a scanner does; ``timeout_s``
    bounds the whole exchange.
    """
    import threading

    result = PlanResult()
    done = threading.Event()  # the server ended the exchange: pauses stop early
    t0 = time.perf_counter()
    sock = socket.create_connection((host, port), timeout=timeout_s)
    sock.settimeout(timeout_s)

    def read() -> None:
        try:
            with sock.makefile("rb") as rfile:
                for item in ProtocolDeserializer(rfile).deserialize():
                    result.items.append(item)
                    if isinstance(item, str) and item.startswith(ERROR_PREFIX):
                        result.errors.append(item[len(ERROR_PREFIX) :])
            result.closed = True
        except (OSError, EOFError, ValueError) as exc:
            result.failure = f"{type(exc).__name__}: {exc}"
        finally:
            done.set()

    reader = threading.Thread(target=read, name="fault-client-read", daemon=True)
    # a client that crashes reads nothing; a reader's file object would also keep the socket open
    vanishes = any(step[0] == "vanish" for step in plan.steps)
    vanished = False
    try:
        if not vanishes:
            reader.start()
        for step in plan.steps:
            if step[0] == "send":
                try:
                    sock.sendall(step[1])
                except OSError as exc:  # the server may end a bad stream before all of it is sent
                    result.failure = result.failure or f"send: {exc}"
                    break
            elif step[0] == "sleep":
                if done.wait(step[1]):
                    break
            elif step[0] == "shutdown":
                sock.shutdown(socket.SHUT_WR)
            elif step[0] == "vanish":
                vanished = True
                # RST instead of FIN: a client that crashed
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
                break
        if not vanished:
            reader.join(timeout_s)
    finally:
        if not vanished:
            sock.close()
    result.seconds = time.perf_counter() - t0
    return result
