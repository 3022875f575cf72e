"""The Gadgetron external-gadget entry point, with the test playing the Gadgetron server's side."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import ismrmrd
import numpy as np
import pytest
from ismrmrd.serialization import ConfigText, ProtocolDeserializer, ProtocolSerializer

from gadgets import load_chain, read_raw, run_chain
from gadgets.external import properties_from_config

needs_tools = pytest.mark.skipif(
    shutil.which("ismrmrd_generate_cartesian_shepp_logan") is None,
    reason="Debian ismrmrd-tools are not installed",
)

CONFIG_XML = """<?xml version="1.0"?>
<configuration>
  <property name="harmonize.enabled" value="false"/>
  <property name="finish.series_index" value="7"/>
</configuration>
"""


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("ismrmrd_generate_cartesian_shepp_logan") is None:
        pytest.skip("Debian ismrmrd-tools are not installed")
    tmp = tmp_path_factory.mktemp("gt")
    path = tmp / "sl.h5"
    subprocess.run(
        ["ismrmrd_generate_cartesian_shepp_logan", "-m", "64", "-c", "4", "-C", "-o", str(path)],
        check=True,
        capture_output=True,
        cwd=tmp,
    )
    return path


def _play_gadgetron(sock: socket.socket, header: object, acqs: list, config: str = CONFIG_XML) -> list:
    """What Gadgetron's ExternalChannel does: config, header, data, close; then read until close."""
    received: list = []
    rfile, wfile = sock.makefile("rb"), sock.makefile("wb")

    def read() -> None:
        received.extend(ProtocolDeserializer(rfile).deserialize())

    reader = threading.Thread(target=read)
    reader.start()
    ser = ProtocolSerializer(wfile)
    try:
        ser.serialize(ConfigText(config))
        ser.serialize(header)
        for a in acqs:
            ser.serialize(a)
        ser.close()
        wfile.flush()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the external side may give up (and close) before all data are written
    reader.join(60)
    assert not reader.is_alive()
    for f in (wfile, rfile):
        # closing flushes what is still buffered, which fails the same way when the peer hung up
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            f.close()
    return received


@needs_tools
def test_python_m_gadgetron_runs_the_cartesian_chain(raw: Path) -> None:
    header, acqs = read_raw(raw)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(60)
    port = listener.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GADGETRON_EXTERNAL_LOG_LEVEL": "INFO"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gadgetron", str(port), "gadgets.external", "cartesian"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        conn, _ = listener.accept()
        with conn:
            received = _play_gadgetron(conn, header, acqs)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        listener.close()
    assert proc.returncode == 0, out.decode(errors="replace")
    images = [r for r in received if isinstance(r, ismrmrd.Image)]
    assert len(images) == 1
    img = images[0]
    # same reconstruction as unisono's own runtime with the same parameters
    chain = load_chain(
        "cartesian", overrides={"harmonize": {"enabled": False}, "finish": {"series_index": 7}}
    )
    expected = run_chain(chain, header, acqs)[0]
    assert np.array_equal(img.data, expected.data)
    assert img.image_series_index == 7
    assert img.meta["unisono.chain_sha256"] == chain.sha256


@needs_tools
def test_external_target_over_socketpair_reports_failure(raw: Path) -> None:
    from gadgetron.external import Connection

    from gadgets import external

    header, acqs = read_raw(raw)
    bad = CONFIG_XML.replace('name="finish.series_index"', 'name="finish.no_such_param"')
    ours, theirs = socket.socketpair()
    errors: list[BaseException] = []

    def gadget_side() -> None:
        try:
            with Connection(ours) as conn:
                external.cartesian(conn)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            errors.append(exc)

    t = threading.Thread(target=gadget_side)
    t.start()
    received = _play_gadgetron(theirs, header, acqs[:5], config=bad)
    t.join(30)
    theirs.close()
    assert not [r for r in received if isinstance(r, ismrmrd.Image)]
    assert errors
    chain_of_errors, exc = [], errors[0]
    while exc is not None:  # closing the connection may raise on top of the gadget's own error
        chain_of_errors.append(str(exc))
        exc = exc.__context__
    assert any("no_such_param" in text for text in chain_of_errors), chain_of_errors


def test_properties_from_config() -> None:
    assert properties_from_config(CONFIG_XML) == {"harmonize.enabled": "false", "finish.series_index": "7"}
    assert properties_from_config(None) == {}
    assert properties_from_config("not xml") == {}
