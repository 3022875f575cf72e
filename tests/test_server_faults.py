"""Bad input and faults over loopback sockets: clear error, log line, clean end, data kept, others served."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import ismrmrd
import numpy as np
import pytest
from ismrmrd.serialization import ConfigFile

from gadgets import MRDServer, read_raw, run_chain
from gadgets.faults import FAULTS, ClientPlan, encode, fault_plan, run_plan, scan_data, valid_plan
from gadgets.limits import ServerLimits
from gadgets.mrdfile import read_header

TIMEOUT_S = 0.6  # idle and message timeouts of the test server: the slow-client faults wait just past them


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MRDServer]:
    limits = ServerLimits(idle_timeout_s=TIMEOUT_S, message_timeout_s=TIMEOUT_S, shutdown_grace_s=5)
    with MRDServer(port=0, raw_dir=tmp_path_factory.mktemp("raw"), limits=limits) as srv:
        yield srv


def wait_idle(server: MRDServer, timeout_s: float = 20.0) -> None:
    """Until every connection thread (and its raw-file conversion) has finished."""
    deadline = time.monotonic() + timeout_s
    while server.active_connections and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.active_connections == 0, "a connection did not end"


_IDS: dict[Path, str] = {}  # raw file -> its measurement id (read once: the list only grows)


def raw_file_of(server: MRDServer, measurement_id: str) -> Path | None:
    for path in list(server.raw_files):
        if path not in _IDS:
            info = read_header(path).measurementInformation
            _IDS[path] = info.measurementID if info is not None else ""
        if _IDS[path] == measurement_id:
            return path
    return None


def check_outcome(server: MRDServer, plan: ClientPlan, result, caplog: pytest.LogCaptureFixture) -> None:
    """The guarantees of issue 8 for one connection."""
    if plan.expect_error is None:
        assert not result.errors, f"{plan.name}: unexpected error {result.errors}"
    else:
        assert result.errors, f"{plan.name}: no error came back ({result.failure})"
        assert len(result.errors) == 1, f"{plan.name}: one error expected, got {result.errors}"
        assert re.search(plan.expect_error, result.errors[0]), result.errors[0]
        # the connection ended with a close message, not a reset
        assert result.closed, f"{plan.name}: {result.failure}"
        # and the log names the same problem
        assert result.errors[0] in caplog.text
    wait_idle(server)
    raw = raw_file_of(server, plan.measurement_id)
    if plan.recorded is None:
        assert raw is None
    else:
        assert raw is not None, f"{plan.name}: no raw file"
        header, acqs = read_raw(raw)
        assert len(acqs) == plan.recorded
        assert header.measurementInformation.measurementID == plan.measurement_id


@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_gets_clear_error_clean_close_and_raw_data_kept(
    server: MRDServer, fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    plan = fault_plan(fault, f"fault-{fault}", message_timeout_s=TIMEOUT_S, idle_timeout_s=TIMEOUT_S)
    result = run_plan(server.port, plan, timeout_s=20)
    check_outcome(server, plan, result, caplog)
    if fault == "disconnect":
        assert "disconnected without a close message" in caplog.text
    # the server keeps serving
    ok = run_plan(server.port, valid_plan(f"after-{fault}", chain="passthrough"))
    assert ok.closed and not ok.errors and len(ok.items) == 32


def test_recorded_acquisitions_are_the_ones_sent(server: MRDServer) -> None:
    plan = fault_plan("truncated", "bytes-check")
    run_plan(server.port, plan)
    wait_idle(server)
    _, sent = scan_data(measurement_id="bytes-check")
    _, got = read_raw(raw_file_of(server, "bytes-check"))
    assert all(a == b for a, b in zip(got, sent[: plan.recorded], strict=True))


def test_faults_do_not_disturb_a_concurrent_scan(server: MRDServer, caplog: pytest.LogCaptureFixture) -> None:
    header, acqs = scan_data(matrix=32, n_coils=2, measurement_id="concurrent-valid")
    expected = run_chain("cartesian", header, acqs)
    data = encode(ConfigFile("cartesian"), header)
    # a scan that trickles in while the faulty clients come and go
    steps: list[tuple] = [("send", data)]
    for a in acqs:
        steps += [("send", encode(a)), ("sleep", 0.03)]
    steps.append(("send", encode(close=True)))
    scan = ClientPlan("valid", tuple(steps), None, len(acqs), "concurrent-valid", expect_images=True)
    box: dict = {}
    t = threading.Thread(target=lambda: box.setdefault("r", run_plan(server.port, scan, timeout_s=30)))
    t.start()
    for fault in (
        "garbage",
        "gadget-raises",
        "oversized-acquisition",
        "disconnect",
        "invalid-xml",
        "slow-client",
    ):
        bad = fault_plan(fault, f"concurrent-{fault}", message_timeout_s=TIMEOUT_S)
        assert bad.expect_error is None or run_plan(server.port, bad).errors
    t.join(30)
    result = box["r"]
    assert not result.errors and result.closed
    assert len(result.images) == len(expected) == 2
    for got, ref in zip(result.images, expected, strict=True):
        assert np.array_equal(got.data, ref.data)
    wait_idle(server)
    _, raw = read_raw(raw_file_of(server, "concurrent-valid"))
    assert all(a == b for a, b in zip(raw, acqs, strict=True))


def test_gadget_failure_reaches_client_and_log(server: MRDServer, caplog: pytest.LogCaptureFixture) -> None:
    plan = fault_plan("gadget-raises", "gadget-raises-2")
    result = run_plan(server.port, plan)
    assert result.errors == [e for e in result.errors if "gadget 'accumulate' failed" in e] and result.errors
    assert "gadget 'accumulate' failed" in caplog.text
    assert not result.images and result.closed
    wait_idle(server)
    header, acqs = read_raw(raw_file_of(server, "gadget-raises-2"))
    assert acqs[5].idx.kspace_encode_step_1 == 500  # the offending readout is kept as sent
    assert sum(not a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT) for a in acqs) == 32


def test_a_probe_that_sends_nothing_is_not_an_error(
    server: MRDServer, caplog: pytest.LogCaptureFixture
) -> None:
    import logging
    import socket

    caplog.set_level(logging.INFO, logger="gadgets.server")
    socket.create_connection(("127.0.0.1", server.port)).close()
    deadline = time.monotonic() + 10
    while "closed before sending anything" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.02)
    wait_idle(server)
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    assert "closed before sending anything" in caplog.text
