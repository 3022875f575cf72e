"""Resource limits of the MRD server: one dataclass, sane defaults, one clear error per bad value.

Why these limits exist: the server sits on the scanner's network and reads
lengths that the client chooses.  Without a cap, one 4-byte length field can
ask for 4 GiB (a text message) or 34 GiB (an acquisition with 65535 samples
and 65535 channels); without timeouts, a client that stops sending holds a
thread and an open raw file forever; without a connection cap, a flood of
connections starts a chain (several threads and a device context) per socket.

The defaults are generous for real scans — a 128-channel readout of 8192
complex samples is 8 MiB, a Siemens-converted MRD header a few hundred kB —
and small enough that a hostile client cannot exhaust a recon host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

__all__ = ["ServerLimits", "MIB"]

#: bytes in a mebibyte (the unit of the ``--max-*-mb`` flags)
MIB = 1 << 20


@dataclass(frozen=True)
class ServerLimits:
    """Limits applied to every connection of :class:`gadgets.server.MRDServer`.

    Attributes:
        max_message_bytes: largest acquisition / waveform / image / array message accepted (bytes).
            The size is computed from the message's own header before its payload is read, so an
            oversized message costs no memory.
        max_text_bytes: largest XML header, config text or text message (bytes).
        max_connections: connections served at once; one more gets an MRD text error and is closed.
        idle_timeout_s: seconds a connection may stay silent between messages (and the longest a
            send to a client that stopped reading may block) before it is ended.
        message_timeout_s: seconds allowed to receive one message once its first byte arrived
            (ends slow-drip clients that never go fully idle).
        max_queue_items: cap on the items queued in front of each gadget: a chain file's
            ``queue_size`` above this is lowered, so a slow chain slows the client (TCP back-pressure)
            instead of filling memory.
        shutdown_grace_s: on stop (SIGTERM/SIGINT) in-flight connections get this long to finish
            before they are ended with an error message; their raw data are kept either way.
        max_encoded_voxels: largest encoded matrix (x*y*z of any ``<encoding>``) a header may
            announce; the accumulating gadgets allocate k-space of that size per coil (8 bytes a
            voxel), so an absurd header would otherwise make the server allocate gigabytes.
        strict_counters: also reject acquisitions whose encoding counters fall outside the header's
            ``encodingLimits`` (off by default: some converters write limits that do not cover
            calibration or navigator lines; the chain then reports the gadget that cannot use them).
    """

    max_message_bytes: int = 64 * MIB
    max_text_bytes: int = 4 * MIB
    max_connections: int = 16
    idle_timeout_s: float = 300.0
    message_timeout_s: float = 120.0
    max_queue_items: int = 64
    shutdown_grace_s: float = 30.0
    max_encoded_voxels: int = 1 << 28
    strict_counters: bool = False

    def __post_init__(self) -> None:
        _check_int("max_message_bytes", self.max_message_bytes, 1024, 1 << 40)
        _check_int("max_text_bytes", self.max_text_bytes, 1024, 1 << 32)
        _check_int("max_connections", self.max_connections, 1, 10_000)
        _check_int("max_queue_items", self.max_queue_items, 1, 100_000)
        _check_int("max_encoded_voxels", self.max_encoded_voxels, 1, 65535**3)
        _check_seconds("idle_timeout_s", self.idle_timeout_s, 0.05, 7 * 86400)
        _check_seconds("message_timeout_s", self.message_timeout_s, 0.05, 7 * 86400)
        _check_seconds("shutdown_grace_s", self.shutdown_grace_s, 0.0, 86400)
        if not isinstance(self.strict_counters, bool):
            raise ValueError(f"strict_counters must be true or false, got {self.strict_counters!r}")

    def describe(self) -> str:
        """One line for the server log: every limit with its value."""
        return ", ".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self))


def _check_int(name: str, value: object, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in {lo}..{hi}, got {value!r}")


def _check_seconds(name: str, value: object, lo: float, hi: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not lo <= value <= hi
    ):
        raise ValueError(f"{name} must be a number of seconds in {lo}..{hi}, got {value!r}")
