"""Streaming benchmark (``unisono bench stream``): MB/s through ``unisono serve`` over loopback, and latency.

* throughput: Debian's Shepp–Logan raw data (``ismrmrd_generate_cartesian_shepp_logan``,
  default 256 matrix, 16 coils, 20 repetitions ≈ 340 MB of samples) is read in
  bulk and streamed by :func:`gadgets.client.send_stream` to a ``unisono serve``
  **subprocess** (as in real use: client and server are separate processes),
  raw recording on, through the chosen chain and through ``passthrough``
  (transport only, every message comes back).  MB/s counts the acquisition
  samples sent (complex64 bytes) over the wall time of :func:`send_stream` (from
  connecting to receiving the server's close, which follows the last image), median
  over ``repeats``.  CPU seconds are recorded per run for the server process, its
  raw-file converter child (:class:`gadgets.recorder.Converter`) and the client
  (this process, its receiving thread included): on a shared machine they say
  more than the wall time.
* latency: in-process :class:`gadgets.runtime.RunningChain`; all readouts of a
  slice but the last are fed and allowed to settle, then the clock runs from
  putting the last readout to the slice's last image leaving the chain.

Threads: the caller's OMP/MKL settings apply to both processes (the project's
Makefile sets them to 1); the result records what was set.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import ismrmrd
import numpy as np

from gadgets.chain import load_chain
from gadgets.client import send_stream
from gadgets.memory import keep_large_blocks
from gadgets.mrdfile import read_raw
from gadgets.processes import reap, start_serve
from gadgets.runtime import RunningChain

__all__ = ["run_benchmark"]


def _make_data(tmp: Path, matrix: int, coils: int, repetitions: int) -> tuple[Any, list, str]:
    tool = shutil.which("ismrmrd_generate_cartesian_shepp_logan")
    if tool is not None:
        path = tmp / "sl.h5"
        subprocess.run(
            [tool, "-m", str(matrix), "-c", str(coils), "-r", str(repetitions), "-o", str(path)],
            check=True,
            capture_output=True,
            cwd=tmp,
        )
        header, acqs = read_raw(path)
        return header, acqs, f"ismrmrd_generate_cartesian_shepp_logan -m {matrix} -c {coils} -r {repetitions}"
    from gadgets.synthetic import cartesian_acquisitions, make_header

    rng = np.random.default_rng(0)
    header = make_header((matrix, matrix), n_coils=coils, readout_oversampling=2)
    acqs = []
    for r in range(repetitions):
        k = (rng.standard_normal((coils, matrix, 2 * matrix)) * 1j).astype(np.complex64)
        rep = cartesian_acquisitions(k)
        for a in rep:
            a.idx.repetition = r
        acqs += rep
    return header, acqs, "synthetic random k-space (ismrmrd-tools not installed)"


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process (Linux /proc), None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _children_cpu_seconds(pid: int) -> float:
    """CPU seconds of the live child processes of ``pid`` (the raw-file converter), 0 if none."""
    total = 0.0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids = [int(k) for k in f.read().split()]
        except (OSError, ValueError):
            continue
        total += sum(_cpu_seconds(k) or 0.0 for k in kids)
    return total


def _own_cpu_seconds() -> float:
    """User + system CPU seconds of this process (the client), all threads."""
    t = os.times()
    return t.user + t.system


def _stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)  # graceful: the server finishes its connections
    reap(proc)


def _settle(rc: RunningChain, quiet_s: float = 0.05, timeout_s: float = 30.0) -> None:
    """Wait until every queue of the chain has stayed empty for ``quiet_s`` (at least 0.2 s).

    A fixed pause is not enough on a shared machine: readouts still queued behind a busy
    stage would be counted in the next slice's latency.
    """
    time.sleep(0.2)
    deadline = time.perf_counter() + timeout_s
    quiet_since: float | None = None
    while time.perf_counter() < deadline:
        now = time.perf_counter()
        if rc.queued() == 0:
            quiet_since = quiet_since if quiet_since is not None else now
            if now - quiet_since >= quiet_s:
                return
        else:
            quiet_since = None
        time.sleep(0.005)


def _latency(chain_name: str, header: Any, slices: list[list], device: str) -> list[float]:
    """Seconds from putting each slice's last readout to its last image leaving the chain."""
    keep_large_blocks()  # the allocator settings of ``unisono serve`` (gadgets.memory)
    rc = RunningChain(load_chain(chain_name), header, device)
    out: queue.Queue[tuple[float, Any]] = queue.Queue()

    def collect() -> None:
        for item in rc:
            out.put((time.perf_counter(), item))
        out.put((time.perf_counter(), None))

    collector = threading.Thread(target=collect, daemon=True)
    collector.start()
    per_slice = None
    results = []
    for lines in slices:
        for a in lines[:-1]:
            rc.put(a)
        _settle(rc)  # the clock must see the last readout only, not a backlog of earlier ones
        while not out.empty():
            out.get()
        t0 = time.perf_counter()
        rc.put(lines[-1])
        got, t_last = 0, t0
        if per_slice is None:  # first slice: learn how many images a slice yields
            t_last, item = out.get(timeout=60)
            got = 1
            time.sleep(0.5)
            while not out.empty():
                t_last, item = out.get()
                got += 1
            per_slice = got
        else:
            while got < per_slice:
                t_last, item = out.get(timeout=60)
                if isinstance(item, ismrmrd.Image):
                    got += 1
        results.append(t_last - t0)
    rc.close()
    collector.join(60)
    return results[1:] if len(results) > 1 else results  # the first slice includes warm-up


def run_benchmark(
    device: str = "auto",
    repeats: int = 5,
    matrix: int = 256,
    coils: int = 16,
    repetitions: int = 20,
    chain: str = "cartesian",
    raw: bool = True,
    **_: Any,
) -> dict[str, Any]:
    """Run the streaming benchmark; returns a JSON-serialisable dict (see module docstring)."""
    from recon.device import resolve_device

    dev = str(resolve_device(device))
    with tempfile.TemporaryDirectory(prefix="unisono-bench-") as tmpname:
        tmp = Path(tmpname)
        header, acqs, source = _make_data(tmp, matrix, coils, repetitions)
        t0 = time.perf_counter()
        path = tmp / "sl.h5"
        if path.exists():
            read_raw(path)
        read_s = time.perf_counter() - t0
        nbytes = sum(a.data.nbytes for a in acqs)
        file_mb = path.stat().st_size / 1e6 if path.exists() else None
        result: dict[str, Any] = {
            "benchmark": "stream",
            "device": dev,
            "data": {
                "source": source,
                "acquisitions": len(acqs),
                "sample_MB": nbytes / 1e6,
                "file_MB": file_mb,
            },
            "read_raw": {"seconds": read_s, "MB_per_s": nbytes / 1e6 / read_s if path.exists() else None},
            "threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},
            "load_average_1min_at_start": os.getloadavg()[0],
            "cpu_count": os.cpu_count(),
        }
        per_rep = len(acqs) // max(1, repetitions)
        proc, port = start_serve("--device", dev, raw_dir=tmp / "raw" if raw else None)
        try:
            send_stream(header, acqs[: per_rep * 2], port=port, chain=chain)  # warm-up (imports, caches)
            stream: dict[str, Any] = {}
            for name, n in ((chain, repeats), ("passthrough", max(1, repeats // 2))):
                times, cpus, conv, client = [], [], [], []
                for _ in range(n):
                    c0, k0, o0 = _cpu_seconds(proc.pid), _children_cpu_seconds(proc.pid), _own_cpu_seconds()
                    t = time.perf_counter()
                    items = send_stream(header, acqs, port=port, chain=name)
                    times.append(time.perf_counter() - t)
                    c1, k1, o1 = _cpu_seconds(proc.pid), _children_cpu_seconds(proc.pid), _own_cpu_seconds()
                    client.append(o1 - o0)
                    # a converter that started or ended during the run is counted from 0
                    conv.append(max(0.0, k1 - k0))
                    if c0 is not None and c1 is not None:
                        cpus.append(c1 - c0)
                med = statistics.median(times)
                stream[name] = {
                    "seconds_median": med,
                    "seconds_all": times,
                    "MB_per_s": nbytes / 1e6 / med,
                    "items_returned": len(items),
                    # CPU the server process used while the stream ran: what it would sustain on
                    # otherwise idle cores
                    "server_cpu_seconds": cpus,
                    "MB_per_server_cpu_second": nbytes / 1e6 / statistics.median(cpus) if cpus else None,
                    # the raw-file converter process (HDF5 conversion of the previous connection's
                    # recording, low priority) during the run, and the client
                    "converter_cpu_seconds": conv,
                    "client_cpu_seconds": client,
                }
            result["stream"] = stream
            result["raw_recording"] = raw
        finally:
            _stop_server(proc)
        # the server converted its recordings on the way out: let the kernel write those GBs back
        # now, not while the latency below is being timed
        os.sync()
        slices = [acqs[i * per_rep : (i + 1) * per_rep] for i in range(min(repetitions, repeats + 1))]
        lat = _latency(chain, header, slices, dev)
        result["latency_last_readout_to_image_ms"] = {
            "chain": chain,
            "matrix": matrix,
            "coils": coils,
            "median": 1e3 * statistics.median(lat),
            "max": 1e3 * max(lat),
            "all": [1e3 * x for x in lat],
        }
        result["load_average_1min_at_end"] = os.getloadavg()[0]
        result["goals"] = {"stream_MB_per_s": 300, "latency_ms": 50}
    return result
