"""Record a connection's MRD stream as it arrives, then convert it to an MRD HDF5 raw file.

Writing HDF5 variable-length rows costs ~100 µs per 64 kB readout in h5py,
which would cap the server below the streaming goal.  The server's
:class:`gadgets.wire.MessageReader` therefore copies every complete message,
unchanged, into ``<name>.mrd`` (the MRD v1 stream format, the same bytes
``ismrmrd``'s stream tools read); after the connection has been answered and
closed, this module converts the stream file to ``<name>.h5`` (``/dataset/xml``, ``/dataset/data``,
``/dataset/waveforms``) and removed.  If the client or the chain fails
mid-scan, everything received up to that point is converted.
"""

from __future__ import annotations

import logging
from pathlib import Path

import ismrmrd
from ismrmrd.serialization import ProtocolDeserializer

from gadgets.mrdfile import RawWriter

__all__ = ["stream_to_h5"]

log = logging.getLogger(__name__)


def stream_to_h5(stream_path: str | Path, h5_path: str | Path, remove_stream: bool = True) -> int:
    """Convert a recorded MRD v1 stream file to an MRD HDF5 raw file.

    Args:
        stream_path: the ``.mrd`` stream recording (may end mid-message).
        h5_path: the HDF5 file to write.
        remove_stream: delete the stream file after a successful conversion.

    Returns:
        The number of acquisitions written (0 and no HDF5 file when no header was received).
    """
    stream_path, h5_path = Path(stream_path), Path(h5_path)
    writer: RawWriter | None = None
    try:
        with open(stream_path, "rb") as f:
            try:
                for msg in ProtocolDeserializer(f).deserialize():
                    if isinstance(msg, ismrmrd.xsd.ismrmrdHeader) and writer is None:
                        writer = RawWriter(h5_path, msg, batch=1024)
                    elif isinstance(msg, ismrmrd.Acquisition | ismrmrd.Waveform) and writer is not None:
                        writer.append(msg)
            except (EOFError, ValueError):
                # a short final message surfaces as EOFError or, for acquisitions, as a numpy
                # reshape ValueError inside ismrmrd: keep every complete message before it
                log.warning("raw stream %s ends mid-message; kept what arrived", stream_path)
    finally:
        if writer is not None:
            writer.close()
    count = writer.count if writer is not None else 0
    if writer is None:
        log.warning("raw stream %s has no MRD header; no HDF5 file written", stream_path)
    elif remove_stream:
        stream_path.unlink(missing_ok=True)
    return count
