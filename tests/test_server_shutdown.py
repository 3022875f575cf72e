"""Graceful shutdown of a real `unisono serve` process on SIGTERM / SIGINT."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from ismrmrd.serialization import ConfigFile

from gadgets import MRDServer, processes, read_raw
from gadgets.faults import ClientPlan, encode, run_plan, scan_data
from gadgets.limits import ServerLimits


def start_serve(raw_dir: Path, *extra: str) -> tuple[subprocess.Popen, int]:
    try:
        return processes.start_serve(
            "--device", "cpu", *extra, raw_dir=raw_dir, stderr=subprocess.PIPE, timeout_s=60
        )
    except RuntimeError as exc:
        pytest.fail(str(exc))


def held_scan(
    port: int, mid: str, n_first: int, then: list[tuple] | None = None
) -> tuple[threading.Thread, dict]:
    """A client that sends config, header and ``n_first`` readouts, then ``then`` steps (default: waits)."""
    header, acqs = scan_data(measurement_id=mid)
    steps = [("send", encode(ConfigFile("cartesian"), header, *acqs[:n_first]))]
    steps += then if then is not None else [("sleep", 60)]
    plan = ClientPlan(mid, tuple(steps), None, None, mid)
    box: dict = {}
    t = threading.Thread(
        target=lambda: box.setdefault("result", run_plan(port, plan, timeout_s=60)), daemon=True
    )
    t.start()
    return t, box


def raw_counts(raw_dir: Path) -> dict[str, int]:
    out = {}
    for path in raw_dir.glob("*.h5"):
        header, acqs = read_raw(path)
        out[header.measurementInformation.measurementID] = len(acqs)
    return out


def wait_connected(port: int) -> None:
    time.sleep(0.5)  # the held client has sent its first readouts (the server records as they arrive)


def test_sigterm_stops_accepting_lets_a_scan_finish_and_sigint_ends_the_rest(tmp_path: Path) -> None:
    proc, port = start_serve(tmp_path / "raw", "--shutdown-grace", "60")
    header, acqs = scan_data(measurement_id="finishing")
    try:
        rest = [("sleep", 1.0), ("send", encode(*acqs[10:], close=True))]
        finishing, fbox = held_scan(port, "finishing", n_first=10, then=rest)
        held, hbox = held_scan(port, "held", n_first=5)
        wait_connected(port)
        proc.send_signal(signal.SIGTERM)
        # no longer accepting, within a moment (the main loop notices the signal within 0.2 s)
        refused_after = None
        t_sig = time.monotonic()
        while refused_after is None and time.monotonic() - t_sig < 3:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
                time.sleep(0.05)
            except OSError:
                refused_after = time.monotonic() - t_sig
        assert refused_after is not None and refused_after < 2
        finishing.join(30)
        # the scan in flight during the grace completes normally: images, no error
        assert not fbox["result"].errors and fbox["result"].closed
        assert len(fbox["result"].images) == 2
        assert held.is_alive() and proc.poll() is None  # the grace (60 s) is still running
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)  # a second signal ends the rest now, cleanly
        held.join(30)
        assert hbox["result"].errors == ["the server is shutting down; the data received so far are saved"]
        assert hbox["result"].closed
        assert proc.wait(timeout=30) == 0
        assert time.monotonic() - t0 < 10
    finally:
        if proc.poll() is None:
            proc.kill()
    out = proc.stdout.read()
    # (the refused-connection probes above may have been accepted before the socket closed)
    assert re.search(r"SIGTERM: stopping; \d+ connection\(s\) in flight", out)
    assert "stopped; 2 raw file(s) recorded" in out
    assert "the server is shutting down" in proc.stderr.read()
    assert raw_counts(tmp_path / "raw") == {"finishing": len(acqs), "held": 5}
    assert not list((tmp_path / "raw").glob("*.mrd"))  # every stream file became HDF5


def test_connections_still_open_after_the_grace_are_ended_and_flushed(tmp_path: Path) -> None:
    server = MRDServer(port=0, raw_dir=tmp_path, limits=ServerLimits(shutdown_grace_s=0.3)).start()
    held, box = held_scan(server.port, "held", n_first=6)
    wait_connected(server.port)
    t0 = time.monotonic()
    server.stop()
    assert time.monotonic() - t0 < 5
    held.join(10)
    assert box["result"].errors == ["the server is shutting down; the data received so far are saved"]
    assert box["result"].closed
    assert raw_counts(tmp_path) == {"held": 6}


def stuck_gadget(connection, *, seconds: float = 4.0) -> None:
    """A trusted test gadget that hangs on its first item (a chain that never finishes)."""
    for _item in connection:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(0.05)


def test_a_stuck_chain_does_not_stop_the_shutdown_and_its_raw_data_are_saved(tmp_path: Path) -> None:
    chains = tmp_path / "chains"
    chains.mkdir()
    (chains / "stuck.toml").write_text(
        f'name = "stuck"\n[[gadget]]\nname = "stuck"\nmodule = "{__name__}"\ntarget = "stuck_gadget"\n'
    )
    header, acqs = scan_data(measurement_id="stuck")
    plan = ClientPlan(
        "stuck", (("send", encode(ConfigFile("stuck"), header, *acqs, close=True)),), None, None
    )
    server = MRDServer(
        port=0, raw_dir=tmp_path / "raw", chains_dir=chains, limits=ServerLimits(shutdown_grace_s=0.2)
    )
    server.start()
    box: dict = {}
    t = threading.Thread(target=lambda: box.setdefault("r", run_plan(server.port, plan, timeout_s=30)))
    t.start()
    time.sleep(0.5)  # everything sent; the chain hangs on the first readout
    t0 = time.monotonic()
    server.stop()
    t.join(10)
    assert time.monotonic() - t0 < 3  # not the 4 s the gadget hangs for
    assert box["r"].errors == ["the server is shutting down; the data received so far are saved"]
    assert box["r"].closed
    assert raw_counts(tmp_path / "raw") == {"stuck": len(acqs)}
