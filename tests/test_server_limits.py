"""Server limits: validated values, CLI flags, connection cap, message size, bounded queues."""

from __future__ import annotations

import re
import socket
import threading
import time
from pathlib import Path

import ismrmrd
import numpy as np
import pytest
from ismrmrd.serialization import ConfigFile

from gadgets import MRDServer, read_raw
from gadgets.faults import encode, run_plan, scan_data, valid_plan
from gadgets.limits import MIB, ServerLimits
from gadgets.synthetic import make_header
from unisono.cli import build_parser
from unisono.commands.serve import limits_from_args


@pytest.mark.parametrize(
    ("field", "value", "text"),
    [
        ("max_message_bytes", 10, "max_message_bytes must be an integer in 1024.."),
        ("max_text_bytes", 2.5, "max_text_bytes must be an integer"),
        ("max_connections", 0, "max_connections must be an integer in 1..10000, got 0"),
        ("idle_timeout_s", float("nan"), "idle_timeout_s must be a number of seconds"),
        ("message_timeout_s", -1, "message_timeout_s must be a number of seconds in 0.05.."),
        ("max_queue_items", True, "max_queue_items must be an integer"),
        ("shutdown_grace_s", "5", "shutdown_grace_s must be a number of seconds"),
        ("strict_counters", 1, "strict_counters must be true or false"),
    ],
)
def test_bad_limit_names_field_and_range(field: str, value: object, text: str) -> None:
    with pytest.raises(ValueError, match=re.escape(text)):
        ServerLimits(**{field: value})


def test_serve_flags_build_limits_and_help_shows_the_real_defaults() -> None:
    parser = build_parser()
    args = parser.parse_args(
        "serve --max-message-mb 2 --max-text-mb 0.5 --max-connections 3 --idle-timeout 7 "
        "--message-timeout 9 --queue-size 5 --shutdown-grace 11 --max-voxels 4096 --strict-counters".split()
    )
    assert limits_from_args(args) == ServerLimits(
        max_message_bytes=2 * MIB,
        max_text_bytes=MIB // 2,
        max_connections=3,
        idle_timeout_s=7,
        message_timeout_s=9,
        max_queue_items=5,
        shutdown_grace_s=11,
        max_encoded_voxels=4096,
        strict_counters=True,
    )
    assert limits_from_args(parser.parse_args(["serve"])) == ServerLimits()
    assert parser.parse_args(["serve"]).host == "127.0.0.1"
    with pytest.raises(ValueError, match="--max-message-mb must be a positive number of MiB, got -1"):
        limits_from_args(parser.parse_args("serve --max-message-mb -1".split()))
    with pytest.raises(ValueError, match="--idle-timeout: idle_timeout_s must be a number of seconds"):
        limits_from_args(parser.parse_args("serve --idle-timeout 0".split()))
    # the numbers printed by --help are the dataclass defaults
    serve = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "serve")[1]
    helps = {a.dest: a.help for a in serve._actions}
    d = ServerLimits()
    expected = {
        "max_message_mb": d.max_message_bytes / MIB,
        "max_text_mb": d.max_text_bytes / MIB,
        "max_connections": d.max_connections,
        "idle_timeout": d.idle_timeout_s,
        "message_timeout": d.message_timeout_s,
        "queue_size": d.max_queue_items,
        "shutdown_grace": d.shutdown_grace_s,
        "max_voxels": d.max_encoded_voxels,
    }
    for dest, value in expected.items():
        shown = float(re.search(r"\(([\d.]+)\)$", helps[dest]).group(1))
        assert shown == value, f"--{dest} help says {shown}, ServerLimits says {value}"


def test_connections_over_the_cap_are_refused_with_an_error(tmp_path: Path) -> None:
    header, acqs = scan_data(measurement_id="held")
    limits = ServerLimits(max_connections=2, idle_timeout_s=10)
    with MRDServer(port=0, raw_dir=tmp_path, limits=limits) as server:
        held = []
        for _ in range(2):  # two scans in progress, holding their slots
            s = socket.create_connection(("127.0.0.1", server.port))
            s.sendall(encode(ConfigFile("passthrough"), header, acqs[0]))
            held.append(s)
        deadline = time.monotonic() + 5
        while server.active_connections < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        refused = run_plan(server.port, valid_plan("refused", chain="passthrough"), timeout_s=10)
        assert refused.closed and len(refused.errors) == 1
        assert "server busy: 2 connections are being served (max_connections)" in refused.errors[0]
        for s in held:
            s.sendall(encode(*acqs[1:], close=True))
            s.shutdown(socket.SHUT_WR)
            while s.recv(65536):
                pass
            s.close()
        deadline = time.monotonic() + 10
        while server.active_connections and time.monotonic() < deadline:
            time.sleep(0.01)
        ok = run_plan(server.port, valid_plan("after", chain="passthrough"))
        assert ok.closed and not ok.errors and len(ok.items) == len(acqs)
    # the held scans were served completely and recorded
    counts = sorted(len(read_raw(p)[1]) for p in server.raw_files)
    assert counts == [len(acqs)] * 3


def test_message_size_limit_is_configurable(tmp_path: Path) -> None:
    header, acqs = scan_data(n_coils=8, measurement_id="big")  # 340 + 8 x 64 x 8 bytes per readout
    limits = ServerLimits(max_message_bytes=4096)
    with MRDServer(port=0, raw_dir=tmp_path, limits=limits) as server:
        r = run_plan(server.port, valid_plan("big", chain="passthrough", n_coils=8))
        assert r.errors == [
            "the acquisition (8 channels x 64 samples, trajectory 0-D) message is 4436 bytes; "
            "the limit is 4096 bytes (--max-message-mb)"
        ]
        assert r.closed
        small = run_plan(server.port, valid_plan("small", chain="passthrough", n_coils=2))
        assert not small.errors and len(small.items) == 32
    assert sorted(len(read_raw(p)[1]) for p in server.raw_files) == [0, 32]


# --- back-pressure --------------------------------------------------------------------------------

_processed: list[float] = []


def slow_gadget(connection, *, delay_s: float = 0.02) -> None:
    """A trusted test gadget (loaded from a chains_dir file): consumes items slowly, sends nothing."""
    for _item in connection:
        time.sleep(delay_s)
        _processed.append(time.perf_counter())


def _send_time(tmp_path: Path, max_queue_items: int, n: int = 40) -> float:
    """Seconds the client needed to hand ``n`` 1-MiB readouts to a server whose chain is slow."""
    chains = tmp_path / f"chains{max_queue_items}"
    chains.mkdir()
    (chains / "slow.toml").write_text(
        'name = "slow"\nqueue_size = 10000\n[[gadget]]\nname = "slow"\n'
        f'module = "{__name__}"\ntarget = "slow_gadget"\n'
    )
    header = make_header((512, n), n_coils=128, readout_oversampling=2)
    data = np.zeros((128, 1024), np.complex64)
    acqs = [ismrmrd.Acquisition.from_array(data) for _ in range(n)]
    limits = ServerLimits(max_queue_items=max_queue_items)
    _processed.clear()
    with MRDServer(port=0, raw_dir=None, chains_dir=chains, limits=limits) as server:
        s = socket.create_connection(("127.0.0.1", server.port))
        t0 = time.perf_counter()
        s.sendall(encode(ConfigFile("slow"), header))
        for a in acqs:
            s.sendall(encode(a))
        sent = time.perf_counter() - t0
        s.sendall(encode(close=True))
        s.shutdown(socket.SHUT_WR)
        while s.recv(65536):
            pass
        s.close()
    assert len(_processed) == n
    return sent


def test_slow_chain_slows_the_client_instead_of_queueing(tmp_path: Path) -> None:
    # the chain file asks for 10000-item queues; the server caps them
    capped = _send_time(tmp_path, max_queue_items=2)
    uncapped = _send_time(tmp_path, max_queue_items=10000)
    # 40 readouts x 20 ms in the chain: with the cap the client waits for the chain (allowing for
    # the few MiB that socket buffers and the 2-item queues hold); without it, it does not
    assert capped > 0.45, capped
    assert uncapped < capped / 2, (uncapped, capped)


def test_client_that_stops_reading_is_ended_by_the_send_timeout(tmp_path: Path) -> None:
    # passthrough echoes everything; a client that never reads fills the socket and is cut off
    header, acqs = scan_data(n_coils=8, measurement_id="deaf")
    limits = ServerLimits(idle_timeout_s=0.5, message_timeout_s=5)
    with MRDServer(port=0, raw_dir=tmp_path, limits=limits) as server:
        s = socket.create_connection(("127.0.0.1", server.port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stop = threading.Event()

        def feed() -> None:
            try:
                s.sendall(encode(ConfigFile("passthrough"), header))
                while not stop.is_set():
                    s.sendall(encode(*acqs))
            except OSError:
                pass

        t = threading.Thread(target=feed, daemon=True)
        t.start()
        deadline = time.monotonic() + 15
        while server.active_connections == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        while server.active_connections and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.active_connections == 0, "the server kept waiting on a client that does not read"
        stop.set()
        s.close()
        t.join(5)
    # what arrived before the cut is on disk
    assert len(server.raw_files) == 1 and len(read_raw(server.raw_files[0])[1]) > 0


def test_header_announcing_a_huge_matrix_is_refused_before_any_allocation(tmp_path: Path) -> None:
    header, acqs = scan_data(measurement_id="huge")  # 64 x 32 x 1 encoded
    with MRDServer(port=0, raw_dir=tmp_path, limits=ServerLimits(max_encoded_voxels=1024)) as server:
        r = run_plan(server.port, valid_plan("huge", chain="passthrough"))
    assert r.errors == [
        "header encoding[0].encodedSpace.matrixSize 64x32x1 is 2048 voxels; the limit is 1024 (--max-voxels)"
    ]
    assert server.raw_files == []  # the header never arrived intact: nothing to convert


def test_scan_is_refused_with_a_reason_when_raw_data_cannot_be_recorded(tmp_path: Path) -> None:
    raw_dir = tmp_path / "raw"
    with MRDServer(port=0, raw_dir=raw_dir) as server:
        raw_dir.rmdir()
        raw_dir.write_text("not a folder any more")  # every open() below it now fails
        r = run_plan(server.port, valid_plan("nowhere", chain="passthrough"))
        assert len(r.errors) == 1 and r.errors[0].startswith("cannot record raw data (")
        assert r.errors[0].endswith("the scan is refused") and r.closed
        assert not [i for i in r.items if isinstance(i, ismrmrd.Acquisition)]  # nothing was processed


def test_memory_freed_by_finished_threads_is_returned_to_the_os() -> None:
    import os
    import platform

    from gadgets.memory import release_free_memory

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("malloc_trim is glibc's")

    def rss_mb() -> float:
        with open(f"/proc/{os.getpid()}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024

    keep: list[bytearray] = []

    def connection_like_work() -> None:
        blocks = [bytearray(b"x" * 60_000) for _ in range(1000)]  # ~60 MB in this thread's arena
        keep.extend(blocks[::10])  # scattered survivors: the holes between them stay resident
        del blocks

    t = threading.Thread(target=connection_like_work)
    t.start()
    t.join()
    before = rss_mb()
    assert release_free_memory()
    assert before - rss_mb() > 20  # most of the ~54 MB of holes went back to the kernel


_FAULTS_SCRIPT = """
import ctypes, resource, sys, threading
ctypes.CDLL(None).prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE: one fault per 4 kB page, not per 2 MB
import torch
from gadgets.memory import keep_large_blocks
if sys.argv[1] == "tuned":
    assert keep_large_blocks()

def connection():  # each connection's stages are new threads that allocate same-sized blocks
    for _ in range(10):
        a = torch.ones(16, 256, 256, dtype=torch.complex64)  # 8 MB, touched (as a k-space slice)
        b = torch.fft.ifftshift(a, dim=(-2, -1))
        del a, b

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

for _ in range(2):  # warm-up connections
    t = threading.Thread(target=connection); t.start(); t.join()
f0 = faults()
for _ in range(3):
    t = threading.Thread(target=connection); t.start(); t.join()
print(faults() - f0)
"""


def test_large_blocks_are_reused_instead_of_faulted_in_again() -> None:
    import platform
    import subprocess
    import sys

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")

    def faults(mode: str) -> int:
        out = subprocess.run(
            [sys.executable, "-c", _FAULTS_SCRIPT, mode], capture_output=True, text=True, check=True
        )
        return int(out.stdout.split()[-1])

    # 3 connections x 10 x two 8 MB blocks: ~123,000 pages if every block is fresh (what the
    # default does for most of them); reused blocks leave thread stacks and small allocations
    fresh = 3 * 10 * 2 * (8 << 20) // 4096
    default, tuned = faults("default"), faults("tuned")
    assert default > fresh // 3, (default, fresh)
    # (a loaded machine has shown up to ~8,200 faults with the setting, ~80,000 without)
    assert tuned < fresh // 4 and default > 3 * tuned, (default, tuned)
