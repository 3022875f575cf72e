"""Raw recording: a connection's MRD stream file, converted to an MRD HDF5 raw file in bulk.

Writing HDF5 variable-length rows as readouts arrive costs ~100 µs per 64 kB
readout in h5py (and holds the GIL), which would cap the server below the
streaming goal.  The server's :class:`gadgets.wire.MessageReader` therefore
copies every complete message, unchanged, into ``<name>.mrd`` (the MRD v1
stream format, the same bytes ``ismrmrd``'s stream tools read) as it arrives;
after the connection has been answered and closed, the stream file is
converted to ``<name>.h5`` (``/dataset/xml``, ``/dataset/data``,
``/dataset/waveforms``, the layout of :mod:`gadgets.mrdfile`) and removed.  If
the client or the chain fails mid-scan, everything received up to that point
is converted.

The conversion (:func:`stream_to_h5`) reads the stream file in blocks and
walks its message ids only; acquisition rows are written 256 at a time
straight from the block's bytes (no per-readout objects), ~3x less CPU than
deserializing each message.  :class:`Converter` runs conversions in a child
process at low CPU priority, so they neither hold the server's GIL nor take
CPU from a scan that is streaming in meanwhile; if the child cannot run,
conversions run in the calling thread.  Both the recording
(:class:`DirectFile`) and the conversion's reads (:class:`BlockReader`) go
around the page cache where the file system allows.

This module imports only numpy, h5py and ismrmrd (not the ``gadgets``
package), so the converter process starts light (run as a file, see
:class:`Converter`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import logging
import mmap
import os
import signal
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Self

import h5py
import ismrmrd
import numpy as np
from ismrmrd.hdf5 import acquisition_dtype, acquisition_header_dtype, waveform_dtype, waveform_header_dtype

__all__ = ["stream_to_h5", "scan_stream", "StreamIndex", "Converter", "DirectFile", "BlockReader"]

log = logging.getLogger(__name__)

_ACQ_HEADER = acquisition_header_dtype.itemsize  # 340 bytes, as ismrmrd.AcquisitionHeader
_WAVE_HEADER = waveform_header_dtype.itemsize  # 40 bytes
_IMAGE_HEADER = ctypes.sizeof(ismrmrd.ImageHeader)
_ITEMSIZE = {1: 2, 2: 2, 3: 4, 4: 4, 5: 4, 6: 8, 7: 8, 8: 16}  # MRD data type -> bytes
#: rows per HDF5 write (and chunk): ~16 MB of 16-coil 512-sample readouts; larger single
#: writes of variable-length rows got slower in h5py, smaller ones pay per-call overhead
_ROWS = 256
#: bytes the converter reads at a time
_READ_BLOCK = 16 << 20
#: alignment of O_DIRECT transfers (the largest logical block size in use; page size)
_ALIGN = 4096
_O_DIRECT = getattr(os, "O_DIRECT", 0)


# --- file I/O without the page cache ---------------------------------------------------------------
#
# The recording is written once and read once, sequentially, by the converter; keeping it in the
# page cache buys nothing.  On the project's virtual machines it costs much: fresh page-cache pages
# are expensive (the host reclaims free guest memory), so writing 335 MB through the page cache
# took 0.16-0.9 s of kernel CPU and reading it back cold 0.7 s, against 0.03 s each with O_DIRECT
# (`dd`, same disk).  Where O_DIRECT is not available (other systems, some file systems) both
# classes fall back to ordinary I/O.


class _DirectIO:
    """What :class:`DirectFile` and :class:`BlockReader` share: a file descriptor opened with
    ``O_DIRECT`` where the file system takes it, and a page-aligned buffer (``_buf``, viewed as
    ``_view``) that direct transfers need."""

    _fd: int
    direct: bool
    _buf: mmap.mmap
    _view: memoryview

    def _attach_buffer(self, size: int) -> None:
        self._buf = mmap.mmap(-1, size)  # anonymous maps are page-aligned
        self._view = memoryview(self._buf)

    def _drop_direct(self) -> None:
        """The file system took the flag at open but refuses direct transfers: go on without."""
        fcntl.fcntl(self._fd, fcntl.F_SETFL, fcntl.fcntl(self._fd, fcntl.F_GETFL) & ~_O_DIRECT)
        self.direct = False

    def _release(self) -> None:
        os.close(self._fd)
        self._fd = -1
        self._view.release()
        self._buf.close()

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._fd >= 0:
            self._release()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DirectFile(_DirectIO):
    """An append-only binary file written with ``O_DIRECT`` (page-cache free) where possible.

    ``write`` copies into a page-aligned staging buffer, which goes to disk in one write
    whenever it is full: a direct write waits for the device, ~0.1-0.2 ms whatever its
    size up to a megabyte, so one write per received buffer (~100 kB) kept the server's
    reader blocked for 0.7 s per 335 MB, against ~0.1 s in 1 MB writes. :meth:`drain`
    writes every whole 4 kB block held (the reader calls it whenever the client pauses),
    so at most one partial block (< 4 kB) is held back; ``flush`` writes that block
    zero-padded and cuts the file to its exact size, so the file always ends with the
    last byte written after a flush (the padding is overwritten by the next write).

    Args:
        path: the file to create (truncated if it exists).
        staging: bytes of the staging buffer (a multiple of 4096): the most that is held
            in memory, not yet on disk, while data keep arriving.
    """

    def __init__(self, path: str | Path, staging: int = 1 << 20):
        self.path = Path(path)
        self._fd = -1
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _O_DIRECT, 0o644)
            self.direct = bool(_O_DIRECT)
        except OSError as exc:
            if not _O_DIRECT or exc.errno != errno.EINVAL:
                raise
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            self.direct = False
        self._attach_buffer(max(_ALIGN, staging - staging % _ALIGN))
        self._fill = 0  # bytes in the staging buffer
        self._disk = 0  # file offset of the staging buffer's first byte (a multiple of 4096)
        #: bytes written so far (the file's size after a flush)
        self.size = 0

    def _pwrite(self, view: memoryview, offset: int) -> None:
        while view:
            try:
                k = os.pwrite(self._fd, view, offset)
            except OSError as exc:
                if not (self.direct and exc.errno == errno.EINVAL):
                    raise
                self._drop_direct()
                continue
            view, offset = view[k:], offset + k

    def _write_blocks(self) -> None:
        whole = self._fill - self._fill % _ALIGN
        if whole:
            self._pwrite(self._view[:whole], self._disk)
            rest = self._fill - whole
            self._view[:rest] = self._view[whole : self._fill]  # rest < 4096 <= whole: no overlap
            self._fill = rest
            self._disk += whole

    @property
    def pending(self) -> int:
        """Bytes written to this object but not yet to the file."""
        return self._fill

    def write(self, data: Any) -> int:
        """Append ``data`` (bytes-like); the staging buffer goes to disk each time it fills."""
        mv = memoryview(data).cast("B")
        n, i, room = len(mv), 0, len(self._view)
        while i < n:
            k = min(n - i, room - self._fill)
            self._view[self._fill : self._fill + k] = mv[i : i + k]
            self._fill += k
            i += k
            if self._fill == room:
                self._write_blocks()
        self.size += n
        return n

    def drain(self) -> None:
        """Put every whole 4 kB block held on disk now (at most 4095 bytes stay behind)."""
        if self._fd >= 0:
            self._write_blocks()

    def flush(self) -> None:
        """Put the partial last block on disk too; the file then has exactly :attr:`size` bytes."""
        if self._fd < 0:
            return
        if self._fill:
            pad = -self._fill % _ALIGN
            self._view[self._fill : self._fill + pad] = bytes(pad)
            self._pwrite(self._view[: self._fill + pad], self._disk)
        os.ftruncate(self._fd, self.size)

    def close(self) -> None:
        """Flush and close (idempotent)."""
        if self._fd < 0:
            return
        try:
            self.flush()
        finally:
            self._release()


class BlockReader(_DirectIO):
    """Reads a file sequentially in blocks, with ``O_DIRECT`` (page-cache free) where possible.

    Args:
        path: the file.
        block: bytes per read at most (a multiple of 4096); a smaller file gets a buffer of its
            own size (a direct read maps the whole buffer, so a 16 MB buffer for a 0.5 MB file
            cost 20 ms).

    Attributes:
        block: the bytes one read returns at most.
    """

    def __init__(self, path: str | Path, block: int = _READ_BLOCK):
        self._fd = -1
        self.direct = False
        if _O_DIRECT:
            with contextlib.suppress(OSError):
                self._fd = os.open(path, os.O_RDONLY | _O_DIRECT)
                self.direct = True
        if self._fd < 0:
            self._fd = os.open(path, os.O_RDONLY)
        size = os.fstat(self._fd).st_size
        self.block = max(_ALIGN, min(block - block % _ALIGN, size + (-size % _ALIGN)))
        self._attach_buffer(self.block)

    def _read(self) -> int:
        while True:
            try:
                # sequential reads: with O_DIRECT every read but the last returns whole blocks,
                # so the file offset stays aligned
                return os.readv(self._fd, [self._view])
            except OSError as exc:
                if not (self.direct and exc.errno == errno.EINVAL):
                    raise
                self._drop_direct()

    def read_into(self, out: np.ndarray) -> int:
        """Read the next block into ``out`` (uint8, at least a block long); 0 at the end of the file."""
        n = self._read()
        out[:n] = np.frombuffer(self._buf, np.uint8, count=n)
        return n


class StreamIndex:
    """Where the messages of an MRD v1 stream file are (:func:`scan_stream`).

    Attributes:
        xml: the first XML header (bytes), or None.
        acquisitions: int64 (n, 4) rows of (header offset, samples, channels, trajectory dims).
        waveforms: int64 (m, 3) rows of (header offset, samples, channels).
        end: offset just after the last whole message indexed (after the close message, if any).
        state: ``closed`` (a close message, id 4), ``eof`` (the data end between messages),
            ``partial`` (the data end inside a message, at ``end``) or ``unknown`` (an unknown
            message id at ``end``).
    """

    def __init__(
        self, xml: bytes | None, acquisitions: np.ndarray, waveforms: np.ndarray, end: int, state: str
    ):
        self.xml = xml
        self.acquisitions = acquisitions
        self.waveforms = waveforms
        self.end = end
        self.state = state

    @property
    def complete(self) -> bool:
        """True when the stream ended at a message boundary (closed or not)."""
        return self.state in ("closed", "eof")


def scan_stream(buf: np.ndarray) -> StreamIndex:
    """Index an MRD v1 stream held in ``buf`` (uint8, e.g. a memory map) without parsing payloads.

    Only ids, lengths and the size fields of fixed headers are read; the scan stops at the
    close message (id 4), at the end of the data, or at the first message that does not fit
    (a cut-short recording) or has an unknown id.
    """
    mv = memoryview(buf)
    size = len(buf)
    u16, u32, u64 = struct.Struct("<H"), struct.Struct("<I"), struct.Struct("<Q")
    acq_shape = struct.Struct("<HHH")  # number_of_samples, available_channels, active_channels
    acq_td = struct.Struct("<H")
    xml: bytes | None = None
    acqs: list[tuple[int, int, int, int]] = []
    waves: list[tuple[int, int, int]] = []
    pos = 0
    state = "eof"
    # field offsets inside the packed headers, from the numpy dtypes ismrmrd ships
    ns_at = acquisition_header_dtype.fields["number_of_samples"][1]
    td_at = acquisition_header_dtype.fields["trajectory_dimensions"][1]
    wns_at = waveform_header_dtype.fields["number_of_samples"][1]
    while True:
        if pos + 2 > size:
            state = "eof" if pos == size else "partial"
            break
        mid = u16.unpack_from(mv, pos)[0]
        body = pos + 2
        if mid == 4:
            pos, state = body, "closed"
            break
        if mid == 1:
            end = body + 1024
        elif mid in (2, 3, 5):
            if body + 4 > size:
                end = size + 1
            else:
                end = body + 4 + u32.unpack_from(mv, body)[0]
                if mid == 3 and xml is None and end <= size:
                    xml = bytes(mv[body + 4 : end]).rstrip(b"\x00")
        elif mid == 1008:
            if body + _ACQ_HEADER > size:
                end = size + 1
            else:
                ns, _, nc = acq_shape.unpack_from(mv, body + ns_at)
                td = acq_td.unpack_from(mv, body + td_at)[0]
                end = body + _ACQ_HEADER + ns * td * 4 + ns * nc * 8
                if end <= size:
                    acqs.append((body, ns, nc, td))
        elif mid == 1026:
            if body + _WAVE_HEADER > size:
                end = size + 1
            else:
                ns, nch = struct.unpack_from("<HH", mv, body + wns_at)
                end = body + _WAVE_HEADER + ns * nch * 4
                if end <= size:
                    waves.append((body, ns, nch))
        elif mid == 1022:
            if body + _IMAGE_HEADER + 8 > size:
                end = size + 1
            else:
                head = ismrmrd.ImageHeader.from_buffer_copy(mv[body : body + _IMAGE_HEADER])
                n_attr = u64.unpack_from(mv, body + _IMAGE_HEADER)[0]
                nx, ny, nz = head.matrix_size
                n_data = int(head.channels) * nx * ny * nz * _ITEMSIZE.get(head.data_type, 0)
                end = body + _IMAGE_HEADER + 8 + n_attr + n_data
        elif mid == 1030:
            if body + 6 > size:
                end = size + 1
            else:
                dtype, _, ndim = struct.unpack_from("<HHH", mv, body)
                if body + 6 + 8 * ndim > size:
                    end = size + 1
                else:
                    n = _ITEMSIZE.get(dtype, 0)
                    for d in struct.unpack_from("<" + "Q" * ndim, mv, body + 6):
                        n *= d
                    end = body + 6 + 8 * ndim + n
        else:
            state = "unknown"
            break
        if end > size:
            state = "partial"
            break
        pos = end
    return StreamIndex(
        xml,
        np.array(acqs, dtype=np.int64).reshape(-1, 4),
        np.array(waves, dtype=np.int64).reshape(-1, 3),
        pos,
        state,
    )


def _vlen_column(buf: np.ndarray, starts: np.ndarray, counts: np.ndarray, dtype: type) -> np.ndarray:
    """Object array of views ``buf[start : start + count * itemsize]`` as ``dtype`` (no copies)."""
    col = np.empty(len(starts), dtype=object)
    for i, (start, count) in enumerate(zip(starts.tolist(), counts.tolist(), strict=True)):
        col[i] = np.frombuffer(buf, dtype, count=count, offset=start)
    return col


def _heads(buf: np.ndarray, offsets: np.ndarray, size: int) -> np.ndarray:
    """The ``size``-byte headers at ``offsets`` of ``buf``, as (n, size) uint8 rows."""
    return buf[offsets[:, None] + np.arange(size)]


def _append(group: h5py.Group, name: str, rows: np.ndarray, dtype: np.dtype) -> None:
    # mrdfile.RawWriter grows the same layout; importing it would load the gadgets package
    # (and torch) into the converter process, which this module keeps light
    if name not in group:
        group.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(_ROWS,))
    d = group[name]
    n = d.shape[0]
    d.resize(n + len(rows), axis=0)
    d[n:] = rows


def _write_rows(group: h5py.Group, buf: np.ndarray, index: StreamIndex) -> None:
    """Append the acquisitions and waveforms ``index`` found in ``buf`` to ``group``."""
    acqs, waves = index.acquisitions, index.waveforms
    for i in range(0, len(acqs), _ROWS):
        part = acqs[i : i + _ROWS]
        off, ns, nc, td = part.T
        rows = np.empty(len(part), dtype=acquisition_dtype)
        rows["head"] = _heads(buf, off, _ACQ_HEADER).view(acquisition_header_dtype)[:, 0]
        traj_at = off + _ACQ_HEADER
        rows["traj"] = _vlen_column(buf, traj_at, ns * td, np.float32)
        rows["data"] = _vlen_column(buf, traj_at + 4 * ns * td, 2 * ns * nc, np.float32)
        _append(group, "data", rows, acquisition_dtype)
    for i in range(0, len(waves), _ROWS):
        part = waves[i : i + _ROWS]
        off, ns, nch = part.T
        rows = np.empty(len(part), dtype=waveform_dtype)
        rows["head"] = _heads(buf, off, _WAVE_HEADER).view(waveform_header_dtype)[:, 0]
        rows["data"] = _vlen_column(buf, off + _WAVE_HEADER, ns * nch, np.uint32)
        _append(group, "waveforms", rows, waveform_dtype)


def stream_to_h5(
    stream_path: str | Path, h5_path: str | Path, remove_stream: bool = True, block: int = _READ_BLOCK
) -> int:
    """Convert a recorded MRD v1 stream file to an MRD HDF5 raw file.

    The stream is read in blocks of ``block`` bytes (without the page cache where the
    file system allows, see :class:`BlockReader`); the whole messages of each block are
    written, and a message cut by the block's end is carried over to the next.

    Args:
        stream_path: the ``.mrd`` stream recording (may end mid-message).
        h5_path: the HDF5 file to write (same layout as :func:`gadgets.mrdfile.write_raw`).
        remove_stream: delete the stream file after a successful conversion.
        block: bytes read at a time (a multiple of 4096; larger messages get a larger buffer).

    Returns:
        The number of acquisitions written (0 and no HDF5 file when no header was received).
    """
    stream_path, h5_path = Path(stream_path), Path(h5_path)
    f: h5py.File | None = None
    count = 0
    state = "eof"
    try:
        with BlockReader(stream_path, block) as reader:
            block = reader.block
            buf = np.empty(2 * block, np.uint8)  # carried-over bytes, then the next block
            have = 0
            while True:
                if len(buf) - have < block:  # a message longer than what is free: grow
                    buf = np.concatenate((buf[:have], np.empty(max(len(buf), block), np.uint8)))
                got = reader.read_into(buf[have : have + block])
                have += got
                index = scan_stream(buf[:have])
                if f is None and index.xml is not None:
                    f = h5py.File(h5_path, "w")
                    g = f.require_group("dataset")
                    g.create_dataset(
                        "xml", shape=(1,), dtype=h5py.special_dtype(vlen=bytes), data=[index.xml]
                    )
                if f is not None:
                    _write_rows(f["dataset"], buf, index)
                    count += len(index.acquisitions)
                state = index.state
                if state in ("closed", "unknown") or got == 0:
                    break
                # keep the unfinished message for the next round
                rest = have - index.end
                buf[:rest] = buf[index.end : have]
                have = rest
    finally:
        if f is not None:
            f.close()
    if f is None:
        log.warning("raw stream %s has no MRD header; no HDF5 file written", stream_path)
        return 0
    if state == "partial":
        log.warning("raw stream %s ends mid-message; kept what arrived", stream_path)
    elif state == "unknown":
        log.warning("raw stream %s holds an unknown message id; kept what precedes it", stream_path)
    if remove_stream:
        stream_path.unlink(missing_ok=True)
    return count


# --- the converter process -----------------------------------------------------------------------

#: how the child process is started: this file run as a script (not ``-m gadgets.recorder``,
#: which would import the whole ``gadgets`` package and torch for nothing)
_WORKER_ARGS = ("-c", "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__unisono_converter__')")


class Converter:
    """Runs :func:`stream_to_h5` jobs in a child process, one at a time, at low CPU priority.

    The child (this file, run with nothing but numpy, h5py and ismrmrd imported) reads
    one JSON job per line on its stdin and answers one JSON line; it ignores Ctrl-C (the
    server decides when conversions stop) and ends when its stdin closes, so it never
    outlives the server.  If it cannot be started or dies, the job runs in the calling
    thread instead, and the next job starts a new child.

    Args:
        process: False runs every conversion in the calling thread.
        nice: CPU niceness increment of the child (lower priority than the streaming server);
            where Linux allows, the child also runs under ``SCHED_IDLE``.
    """

    def __init__(self, process: bool = True, nice: int = 10):
        self.process = process
        self.nice = nice
        self._proc: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs (for CPU accounting), else None."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def _start(self) -> subprocess.Popen[str]:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(
                [sys.executable, *_WORKER_ARGS, __file__, str(self.nice)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                bufsize=1,
                start_new_session=True,  # a terminal's Ctrl-C goes to the server, which finishes up
            )
        return self._proc

    def convert(self, stream_path: str | Path, h5_path: str | Path) -> int:
        """Convert one stream file (blocks until done); the number of acquisitions written.

        Raises:
            Exception: what :func:`stream_to_h5` raised (in the child it comes back as RuntimeError).
        """
        if not self.process:
            return stream_to_h5(stream_path, h5_path)
        with self._lock:
            try:
                proc = self._start()
                assert proc.stdin is not None and proc.stdout is not None
                proc.stdin.write(json.dumps({"stream": str(stream_path), "h5": str(h5_path)}) + "\n")
                proc.stdin.flush()
                line = proc.stdout.readline()
                if not line:
                    raise OSError("the converter process ended")
                reply = json.loads(line)
            except (OSError, ValueError) as exc:
                log.warning("raw-file converter process unavailable (%s); converting in the server", exc)
                self._kill()
                return stream_to_h5(stream_path, h5_path)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return int(reply["count"])

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(OSError):
                proc.kill()
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                proc.wait(5)

    def close(self) -> None:
        """End the child after its current job (idempotent)."""
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.close()
        from gadgets.processes import reap  # here: the child runs this file without the package

        reap(proc)


def _worker(nice: int) -> None:
    """The child's loop: one JSON job per stdin line, one JSON answer per stdout line."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.nice(nice)
    # Linux: run only when no other task wants the CPU, so conversion never slows a stream
    # (nice alone still takes a share of a busy core); the recording itself is already on disk
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    logging.basicConfig(level=logging.WARNING, format="unisono raw converter: %(message)s")
    for line in sys.stdin:
        try:
            job = json.loads(line)
            reply: dict[str, Any] = {"count": stream_to_h5(job["stream"], job["h5"])}
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the server
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__unisono_converter__":
    _worker(int(sys.argv[2]) if len(sys.argv) > 2 else 10)
