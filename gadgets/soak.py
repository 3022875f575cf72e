"""Soak benchmark of ``unisono serve``: many loopback connections, some concurrent, a known share faulty.

``unisono bench soak --json`` runs the real server as a subprocess (so a crash
is a process exit and memory is the server's own RSS), plays a deterministic
schedule of good scans and faults from :mod:`gadgets.faults` against it from a
pool of client threads, then stops it with SIGTERM (the graceful path) and
checks every raw file it wrote.  Reported:

* ``connections`` / ``served``: connections made, and those the server
  answered as it must (images for a good scan, the right error for a fault);
* ``faults_injected`` (by kind) and ``faults_answered``;
* ``server_crashes``: 1 if the server process died before the SIGTERM or
  exited non-zero after it (goal 0);
* ``valid_with_images_pct``: good scans whose images came back (goal 100);
* ``raw_complete_pct``: connections whose raw HDF5 file exists, reads back and
  holds exactly the acquisitions that arrived whole (goal 100);
* ``peak_rss_mb`` (kernel high-water mark ``VmHWM``) and RSS after warm-up
  and at the end, to show that memory stays bounded.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from gadgets.faults import FAULTS, ClientPlan, PlanResult, fault_plan, run_plan, valid_plan
from gadgets.mrdfile import read_raw
from gadgets.processes import start_serve

__all__ = ["run_benchmark", "SoakOutcome"]


class SoakOutcome:
    """One connection of the soak: its plan, what came back and whether that was right."""

    def __init__(self, index: int, plan: ClientPlan, result: PlanResult):
        self.index = index
        self.plan = plan
        self.result = result
        self.ok = _answered_right(plan, result)


def _answered_right(plan: ClientPlan, result: PlanResult) -> bool:
    if plan.expect_error is None:
        if any(step[0] == "vanish" for step in plan.steps):
            return True  # nobody left to answer; judged by its raw file
        return result.closed and not result.errors and (not plan.expect_images or bool(result.images))
    return (
        result.closed
        and len(result.errors) == 1
        and re.search(plan.expect_error, result.errors[0]) is not None
    )


def _rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of ``pid`` from /proc (MiB); ``VmHWM`` is the peak. NaN when unavailable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def _schedule(connections: int, fault_share: float, seed: int) -> list[str]:
    """Which connection gets which fault: a shuffled list, every fault kind used in turn."""
    n_faulty = int(round(connections * fault_share))
    kinds = [list(FAULTS)[i % len(FAULTS)] for i in range(n_faulty)]
    out = kinds + ["valid"] * (connections - n_faulty)
    rng = np.random.default_rng(seed)
    rng.shuffle(out)
    return out


def _drain(stream: Any, sink: list[str]) -> None:
    for line in stream:
        sink.append(line)


def run_benchmark(
    device: str = "auto",
    repeats: int = 1,
    connections: int = 1500,
    concurrency: int = 8,
    fault_share: float = 0.3,
    timeout_s: float = 1.0,
    seed: int = 0,
    keep_dir: str | None = None,
    **_: Any,
) -> dict[str, Any]:
    """Run the soak once (``repeats`` is accepted for the ``unisono bench`` interface and ignored).

    Args:
        device: the server's ``--device`` (``auto`` runs on CPU: the soak measures robustness).
        connections: connections in total.
        concurrency: client threads connecting at once.
        fault_share: share of connections that are faulty (0..1), spread over every fault kind.
        timeout_s: the server's idle and message timeouts (the slow-client faults wait just past them).
        seed: shuffles which connection gets which fault.
        keep_dir: keep the raw files there (default: a temporary folder, removed afterwards).

    Returns:
        The JSON-able report described in the module docstring.
    """
    if not 1 <= int(connections) <= 100_000:
        raise ValueError(f"connections must be in 1..100000, got {connections}")
    if not 1 <= int(concurrency) <= 256:
        raise ValueError(f"concurrency must be in 1..256, got {concurrency}")
    if not 0.0 <= float(fault_share) <= 1.0:
        raise ValueError(f"fault_share must be in 0..1, got {fault_share}")
    work = Path(keep_dir) if keep_dir else Path(tempfile.mkdtemp(prefix="unisono-soak-"))
    raw_dir = work / "raw"
    schedule = _schedule(int(connections), float(fault_share), int(seed))
    max_connections = max(16, 2 * int(concurrency))
    t_start = time.perf_counter()
    proc, port = start_serve(
        "--host", "127.0.0.1", "--device", "cpu" if device == "auto" else device,
        "--idle-timeout", str(float(timeout_s)), "--message-timeout", str(float(timeout_s)),
        "--max-connections", str(max_connections), "--shutdown-grace", "30",
        raw_dir=raw_dir, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    stderr_lines: list[str] = []
    drains = [
        threading.Thread(target=_drain, args=(proc.stderr, stderr_lines), daemon=True),
        threading.Thread(target=_drain, args=(proc.stdout, []), daemon=True),
    ]
    for t in drains:
        t.start()
    startup_s = time.perf_counter() - t_start
    rss_samples: list[float] = []
    died_at: list[int] = []
    stop_sampling = threading.Event()

    finished = [0]  # connections done so far (read by the sampler)

    def sample() -> None:
        while not stop_sampling.is_set():
            if proc.poll() is not None:
                died_at.append(len(rss_samples))
                return
            rss_samples.append(_rss_mb(proc.pid))
            thread_samples.append(_rss_mb(proc.pid, "Threads") * 1024.0)  # a count, not kB
            progress.append(finished[0])
            stop_sampling.wait(0.2)

    progress: list[int] = []
    thread_samples: list[float] = []

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()

    def one(i: int) -> SoakOutcome:
        mid = f"soak-{i:05d}"
        kind = schedule[i]
        plan = (
            valid_plan(mid)
            if kind == "valid"
            else fault_plan(kind, mid, message_timeout_s=timeout_s, idle_timeout_s=timeout_s)
        )
        try:
            result = run_plan(port, plan, timeout_s=30.0 + 2 * timeout_s)
        except OSError as exc:  # could not even connect: the server is gone
            result = PlanResult(failure=f"connect: {exc}")
        finished[0] += 1
        return SoakOutcome(i, plan, result)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=int(concurrency), thread_name_prefix="soak-client") as pool:
        outcomes = list(pool.map(one, range(len(schedule))))
    clients_s = time.perf_counter() - t0
    rss_end = _rss_mb(proc.pid)
    peak = _rss_mb(proc.pid, "VmHWM")
    crashed_before_stop = proc.poll() is not None
    # the graceful path: SIGTERM, in-flight connections finish, raw files are flushed
    t1 = time.perf_counter()
    if not crashed_before_stop:
        proc.send_signal(signal.SIGTERM)
    try:
        exit_code = proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        exit_code = proc.wait()
    shutdown_s = time.perf_counter() - t1
    stop_sampling.set()
    sampler.join(2)
    for t in drains:
        t.join(5)
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()

    raw = _check_raw_files(raw_dir, outcomes)
    valid = [o for o in outcomes if o.plan.name == "valid"]
    faulty = [o for o in outcomes if o.plan.name != "valid"]
    by_kind: dict[str, dict[str, int]] = {}
    for o in faulty:
        d = by_kind.setdefault(o.plan.name, {"injected": 0, "answered": 0})
        d["injected"] += 1
        d["answered"] += int(o.ok)
    wrong = [
        {
            "connection": o.index,
            "kind": o.plan.name,
            "errors": o.result.errors[:2],
            "failure": o.result.failure,
        }
        for o in outcomes
        if not o.ok
    ][:10]
    warm = [r for r in rss_samples[5:] if r == r] or [r for r in rss_samples if r == r]
    report: dict[str, Any] = {
        "benchmark": "soak",
        "connections": len(outcomes),
        "served": sum(o.ok for o in outcomes),
        "concurrency": int(concurrency),
        "faults_injected": len(faulty),
        "faults_answered": sum(o.ok for o in faulty),
        "faults_by_kind": by_kind,
        "server_crashes": int(crashed_before_stop or exit_code != 0),
        "server_exit_code": exit_code,
        "valid_connections": len(valid),
        "valid_with_images": sum(o.ok for o in valid),
        "valid_with_images_pct": round(100.0 * sum(o.ok for o in valid) / max(len(valid), 1), 2),
        "raw_files_expected": raw["expected"],
        "raw_files_complete": raw["complete"],
        "raw_complete_pct": round(100.0 * raw["complete"] / max(raw["expected"], 1), 2),
        "raw_problems": raw["problems"][:10],
        "stray_stream_files": raw["stray"],
        "peak_rss_mb": round(peak, 1),
        "rss_after_warmup_mb": round(warm[0], 1) if warm else None,
        "rss_end_mb": round(rss_end, 1),
        "rss_mb_by_quarter": _by_quarter(rss_samples, progress, len(outcomes)),
        "server_threads_max": int(max((t for t in thread_samples if t == t), default=0)),
        "clients_s": round(clients_s, 2),
        "connections_per_s": round(len(outcomes) / clients_s, 2),
        "server_startup_s": round(startup_s, 2),
        "shutdown_s": round(shutdown_s, 2),
        "server_timeouts_s": float(timeout_s),
        "wrong_answers": wrong,
        "server_log_errors": sum(" ERROR " in line for line in stderr_lines),
        "settings": {
            "fault_share": float(fault_share),
            "seed": int(seed),
            "device": "cpu" if device == "auto" else device,
            "max_connections": max_connections,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "1"),
            "repeats": 1,
        },
    }
    if keep_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    return report


def _by_quarter(rss: list[float], progress: list[int], total: int) -> list[float | None]:
    """Server RSS (MiB) when 25, 50, 75 and 100 % of the connections were done: flat means bounded."""
    out: list[float | None] = []
    for q in (0.25, 0.5, 0.75, 1.0):
        vals = [r for r, p in zip(rss, progress, strict=False) if p <= q * total and r == r]
        out.append(round(vals[-1], 1) if vals else None)
    return out


def _check_raw_files(raw_dir: Path, outcomes: list[SoakOutcome]) -> dict[str, Any]:
    """Match raw HDF5 files to connections by measurement id and check their acquisition counts."""
    found: dict[str, tuple[Path, int]] = {}
    problems: list[str] = []
    for path in sorted(raw_dir.glob("*.h5")):
        try:
            header, acqs = read_raw(path)
        except Exception as exc:  # noqa: BLE001 - an unreadable file is exactly what we count
            problems.append(f"{path.name}: unreadable ({exc})")
            continue
        info = header.measurementInformation
        found[info.measurementID if info is not None else path.name] = (path, len(acqs))
    expected = complete = 0
    for o in outcomes:
        if o.plan.recorded is None:
            continue
        expected += 1
        mid = o.plan.measurement_id
        if mid not in found:
            problems.append(f"{mid} ({o.plan.name}): no raw file")
        elif found[mid][1] != o.plan.recorded:
            problems.append(
                f"{mid} ({o.plan.name}): {found[mid][1]} acquisitions, expected {o.plan.recorded}"
            )
        else:
            complete += 1
    # .mrd stream files left behind: only connections whose header never arrived may leave one
    headerless = sum(1 for o in outcomes if o.plan.recorded is None)
    stray = max(0, len(list(raw_dir.glob("*.mrd"))) - headerless)
    return {"expected": expected, "complete": complete, "problems": problems, "stray": stray}
