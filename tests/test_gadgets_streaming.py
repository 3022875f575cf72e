"""The streaming fast paths: batched stage hand-offs, in-place parsing, span recording, bulk HDF5
conversion in a child process, and the client's scatter-gather sends."""

from __future__ import annotations

import io
import shutil
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import h5py
import ismrmrd
import numpy as np
import pytest
from ismrmrd.serialization import ConfigFile, ProtocolDeserializer, ProtocolSerializer

from gadgets.chain import Chain, GadgetSpec
from gadgets.client import _Sender, send_stream
from gadgets.faults import encode, scan_data
from gadgets.limits import ServerLimits
from gadgets.mrdfile import RawWriter, read_raw
from gadgets.recorder import Converter, scan_stream, stream_to_h5
from gadgets.runtime import RunningChain, run_chain
from gadgets.server import MRDServer
from gadgets.wire import Disconnected, MessageReader, StreamSource

HEADER, ACQS = scan_data(matrix=16, n_coils=2, measurement_id="streaming")


# --- runtime: batching ----------------------------------------------------------------------------


def forward(connection) -> None:
    for item in connection:
        connection.send(item)


def image_then_wait(connection, *, hold_s: float = 0.5) -> None:
    """Sends an image for the first readout, then sits on the rest of its (waiting) input."""
    for i, item in enumerate(connection):
        if i == 0:
            connection.send(ismrmrd.Image.from_array(np.zeros((2, 2), np.float32)))
            time.sleep(hold_s)
        connection.send(item)


def _chain(*targets: str, queue_size: int = 64) -> Chain:
    specs = tuple(GadgetSpec(f"g{i}", __name__, t, {}) for i, t in enumerate(targets))
    return Chain(name="streaming-test", version="1", gadgets=specs, queue_size=queue_size)


def test_batched_hand_offs_keep_order_of_mixed_items() -> None:
    items: list[object] = []
    for i, a in enumerate(ACQS * 8):
        items.append(a)
        if i % 7 == 0:
            items.append(f"text {i}")
    out = run_chain(_chain("forward", "forward", "forward", queue_size=5), HEADER, items, images_only=False)
    assert len(out) == len(items)
    assert all(a is b for a, b in zip(out, items, strict=True))


def test_queued_items_never_exceed_the_bound() -> None:
    rc = RunningChain(_chain("forward", queue_size=3), HEADER)
    seen: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.extend(p.waiting() for p in rc._pipes)

    w = threading.Thread(target=watch)
    w.start()
    feeder = threading.Thread(target=rc.feed, args=(list(ACQS * 10),))
    feeder.start()
    out = []
    for item in rc:
        out.append(item)
        time.sleep(0.001)
    feeder.join()
    stop.set()
    w.join()
    assert len(out) == len(ACQS) * 10
    assert max(seen) <= 3


def test_images_are_not_held_back_by_batching() -> None:
    # the first stage sends an image and then works on for 0.5 s: the image must arrive first
    rc = RunningChain(_chain("image_then_wait", "forward"), HEADER)
    rc.put_many(list(ACQS[:4]))
    rc.close()
    t0 = time.perf_counter()
    first = next(iter(rc.batches()))
    assert isinstance(first[0], ismrmrd.Image) and time.perf_counter() - t0 < 0.4
    rest = [i for b in rc.batches() for i in b]
    assert len(first) + len(rest) == 5


# --- wire: in-place parsing and span recording ----------------------------------------------------


class _Trickle(io.RawIOBase):
    """A readable stream returning at most ``step`` bytes a read (as a socket may)."""

    def __init__(self, data: bytes, step: int):
        self._data, self._pos, self.step = data, 0, step

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        n = min(len(b), self.step, len(self._data) - self._pos)
        b[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


def _big_acquisitions(n: int, coils: int = 16, samples: int = 512) -> list[ismrmrd.Acquisition]:
    rng = np.random.default_rng(3)
    out = []
    for i in range(n):
        a = ismrmrd.Acquisition.from_array(
            (rng.standard_normal((coils, samples)) + 1j * rng.standard_normal((coils, samples))).astype(
                np.complex64
            )
        )
        a.idx.kspace_encode_step_1 = i % 16
        out.append(a)
    return out


@pytest.mark.parametrize("step", [7, 1000, 65536, 1 << 22])
def test_messages_spanning_receive_buffers_are_read_and_recorded_exactly(step: int) -> None:
    header, _ = scan_data(matrix=16, n_coils=16, measurement_id="big")
    header.encoding[0].encodedSpace.matrixSize.x = 512
    big = _big_acquisitions(40)  # 2.6 MB: several 1 MB receive buffers
    data = encode(ConfigFile("c"), header, "note", *big, close=True)
    rec = io.BytesIO()
    limits = ServerLimits(strict_counters=False)
    items = list(MessageReader(StreamSource(_Trickle(data, step)), limits, record=rec))
    got = [i for i in items if isinstance(i, ismrmrd.Acquisition)]
    assert len(got) == len(big) and all(a == b for a, b in zip(got, big, strict=True))
    assert all(g.data.flags.writeable for g in got)
    assert rec.getvalue() == data


def test_message_larger_than_the_receive_buffer() -> None:
    header, _ = scan_data(matrix=16, n_coils=16, measurement_id="huge")
    header.encoding[0].encodedSpace.matrixSize.x = 512
    (huge,) = _big_acquisitions(1, coils=16, samples=40000)  # 5 MB in one message
    data = encode(ConfigFile("c"), header, huge, close=True)
    rec = io.BytesIO()
    limits = ServerLimits(max_message_bytes=8 << 20)
    items = list(MessageReader(StreamSource(_Trickle(data, 300_000)), limits, record=rec))
    assert items[2] == huge and rec.getvalue() == data


def test_on_wait_runs_before_the_reader_blocks_on_the_socket() -> None:
    a, b = socket.socketpair()
    waits: list[int] = []
    reader_items: list[object] = []
    reader = MessageReader(b, ServerLimits(), on_wait=lambda: waits.append(len(reader_items)))
    t = threading.Thread(target=lambda: reader_items.extend(reader))
    t.start()
    a.sendall(encode(ConfigFile("c"), HEADER, *ACQS[:3]))
    time.sleep(0.3)
    assert waits and waits[-1] == 5  # everything sent was parsed and handed out before waiting
    a.sendall(encode(*ACQS[3:], close=True))
    t.join(5)
    a.close()
    b.close()
    assert len(reader_items) == 2 + len(ACQS)


def test_abrupt_disconnect_mid_stream_keeps_every_whole_message_in_the_recording() -> None:
    a, b = socket.socketpair()
    rec = io.BytesIO()
    whole = encode(ConfigFile("c"), HEADER, *ACQS[:5])
    a.sendall(whole + encode(ACQS[5])[:-10])  # the last readout is cut short
    a.close()
    with pytest.raises(Disconnected) as info:
        list(MessageReader(b, ServerLimits(), record=rec))
    b.close()
    assert info.value.mid_message
    assert rec.getvalue() == whole + struct.pack("<H", 4)  # closed, so it replays as a valid stream
    replay = list(ProtocolDeserializer(io.BytesIO(rec.getvalue())).deserialize())
    assert sum(isinstance(i, ismrmrd.Acquisition) for i in replay) == 5


# --- recorder: bulk conversion --------------------------------------------------------------------


@pytest.fixture(scope="module")
def shepp_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tool = shutil.which("ismrmrd_generate_cartesian_shepp_logan")
    if tool is None:
        pytest.fail("ismrmrd_generate_cartesian_shepp_logan is missing: install Debian's ismrmrd-tools")
    tmp = tmp_path_factory.mktemp("sl")
    path = tmp / "sl.h5"
    subprocess.run(
        [tool, "-m", "64", "-c", "4", "-r", "2", "-o", str(path)], check=True, capture_output=True, cwd=tmp
    )
    return path


def _stream_file(path: Path, header: object, items: list) -> Path:
    with open(path, "wb") as f:
        ser = ProtocolSerializer(f)
        ser.serialize(ConfigFile("cartesian"))
        ser.serialize(header)
        ser.serialize("a text message")
        for item in items:
            ser.serialize(item)
        ser.close()
    return path


def test_bulk_conversion_equals_per_message_conversion_on_a_real_file(
    shepp_file: Path, tmp_path: Path
) -> None:
    header, acqs = read_raw(shepp_file)
    wave = ismrmrd.Waveform.from_array(np.arange(20, dtype=np.uint32).reshape(2, 10))
    image = ismrmrd.Image.from_array(np.ones((3, 4), np.float32))
    items = [*acqs[:5], wave, image, np.arange(6, dtype=np.float32), *acqs[5:]]
    stream = _stream_file(tmp_path / "s.mrd", header, items)
    index = scan_stream(np.fromfile(stream, dtype=np.uint8))
    assert index.complete and len(index.acquisitions) == len(acqs) and len(index.waveforms) == 1
    assert stream_to_h5(stream, tmp_path / "bulk.h5") == len(acqs)
    assert not stream.exists()
    with RawWriter(tmp_path / "ref.h5", header) as w:  # the per-message writer
        for item in items:
            if isinstance(item, ismrmrd.Acquisition | ismrmrd.Waveform):
                w.append(item)
    with h5py.File(tmp_path / "bulk.h5") as f, h5py.File(tmp_path / "ref.h5") as g:
        for name in ("data", "waveforms"):
            a, b = f["dataset"][name][...], g["dataset"][name][...]
            assert a.dtype == b.dtype and (a["head"] == b["head"]).all()
            for field in [n for n in a.dtype.names if n != "head"]:
                assert all(np.array_equal(x, y) for x, y in zip(a[field], b[field], strict=True))
        assert f["dataset/xml"][0] == g["dataset/xml"][0]
    h, back = read_raw(tmp_path / "bulk.h5")
    assert all(x == y for x, y in zip(back, acqs, strict=True))


def _cpp_recon(tmp: Path, raw: Path) -> np.ndarray:
    """The ISMRMRD C++ reference recon's image of a copy of ``raw`` (it reads the file)."""
    ref = tmp / f"{raw.stem}_cpp.h5"
    shutil.copy(raw, ref)
    subprocess.run(["ismrmrd_recon_cartesian_2d", str(ref)], check=True, capture_output=True, cwd=tmp)
    with h5py.File(ref, "r") as f:
        return f["dataset/cpp/data"][...]


def test_bulk_conversion_is_read_by_the_cpp_tools(shepp_file: Path, tmp_path: Path) -> None:
    header, acqs = read_raw(shepp_file)
    stream_to_h5(_stream_file(tmp_path / "s.mrd", header, acqs), tmp_path / "out.h5")
    assert np.array_equal(_cpp_recon(tmp_path, tmp_path / "out.h5"), _cpp_recon(tmp_path, shepp_file))


@pytest.mark.parametrize("cut", [1, 7, 300, 5000])
def test_bulk_conversion_of_a_cut_short_stream_keeps_whole_messages(tmp_path: Path, cut: int) -> None:
    data = encode(ConfigFile("c"), HEADER, *ACQS)
    (tmp_path / "cut.mrd").write_bytes(data[:-cut])
    whole = sum(
        1 for i in range(len(ACQS)) if len(encode(ConfigFile("c"), HEADER, *ACQS[: i + 1])) <= len(data) - cut
    )
    assert stream_to_h5(tmp_path / "cut.mrd", tmp_path / "cut.h5") == whole
    assert all(a == b for a, b in zip(read_raw(tmp_path / "cut.h5")[1], ACQS, strict=False))


def test_stream_without_header_gives_no_file(tmp_path: Path) -> None:
    (tmp_path / "x.mrd").write_bytes(encode(ConfigFile("c"), close=True))
    assert stream_to_h5(tmp_path / "x.mrd", tmp_path / "x.h5") == 0
    assert not (tmp_path / "x.h5").exists()


def test_converter_process_converts_and_falls_back_when_it_dies(tmp_path: Path) -> None:
    conv = Converter()
    try:
        for i in range(2):
            (tmp_path / f"{i}.mrd").write_bytes(encode(ConfigFile("c"), HEADER, *ACQS, close=True))
        assert conv.convert(tmp_path / "0.mrd", tmp_path / "0.h5") == len(ACQS)
        pid = conv.pid
        assert pid is not None
        conv._proc.kill()  # type: ignore[union-attr]
        conv._proc.wait()  # type: ignore[union-attr]
        # the job still succeeds (in this process or a new child)
        assert conv.convert(tmp_path / "1.mrd", tmp_path / "1.h5") == len(ACQS)
        assert len(read_raw(tmp_path / "1.h5")[1]) == len(ACQS)
        with pytest.raises(RuntimeError, match="FileNotFoundError"):
            conv.convert(tmp_path / "missing.mrd", tmp_path / "m.h5")
    finally:
        conv.close()
    assert conv.pid is None


# --- server + client -----------------------------------------------------------------------------


def _drain_into(sock: socket.socket, out: bytearray) -> None:
    while chunk := sock.recv(1 << 16):
        out.extend(chunk)


def test_client_sends_the_bytes_protocol_serializer_would() -> None:
    ref = io.BytesIO()
    ser = ProtocolSerializer(ref)
    for item in (ConfigFile("c"), HEADER, *ACQS, "text"):
        ser.serialize(item)
    ser.close()
    for zero_copy in (True, False):
        a, b = socket.socketpair()
        got = bytearray()
        t = threading.Thread(target=_drain_into, args=(b, got))
        t.start()
        out = _Sender(a, zero_copy, flush_bytes=3000)
        for item in (ConfigFile("c"), HEADER, *ACQS, "text"):
            out.add(item)
        out.close()
        a.shutdown(socket.SHUT_WR)
        t.join(5)
        a.close()
        b.close()
        assert bytes(got) == ref.getvalue()


def test_server_recording_is_complete_after_an_abrupt_disconnect(tmp_path: Path) -> None:
    with MRDServer(port=0, raw_dir=tmp_path) as server:
        s = socket.create_connection(("127.0.0.1", server.port))
        s.sendall(encode(ConfigFile("cartesian"), HEADER, *ACQS[:6]) + encode(ACQS[6])[:100])
        time.sleep(0.3)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()  # a reset, mid-message
        deadline = time.monotonic() + 20
        while (server.active_connections or not server.raw_files) and time.monotonic() < deadline:
            time.sleep(0.05)
        (path,) = server.raw_files
        assert [a.idx.kspace_encode_step_1 for a in read_raw(path)[1]] == [
            a.idx.kspace_encode_step_1 for a in ACQS[:6]
        ]


def test_many_readouts_round_trip_through_passthrough_with_recording(tmp_path: Path) -> None:
    header, _ = scan_data(matrix=16, n_coils=16, measurement_id="bulk")
    header.encoding[0].encodedSpace.matrixSize.x = 512
    big = _big_acquisitions(300)
    with MRDServer(port=0, raw_dir=tmp_path, limits=ServerLimits(strict_counters=False)) as server:
        back = send_stream(header, big, port=server.port, chain="passthrough")
    acqs = [i for i in back if isinstance(i, ismrmrd.Acquisition)]
    assert len(acqs) == len(big) and all(a == b for a, b in zip(acqs, big, strict=True))
    (path,) = server.raw_files
    assert all(a == b for a, b in zip(read_raw(path)[1], big, strict=True))


def test_receive_buffers_are_reused_only_when_nothing_refers_to_them() -> None:
    header, _ = scan_data(matrix=16, n_coils=16, measurement_id="pool")
    header.encoding[0].encodedSpace.matrixSize.x = 512
    big = _big_acquisitions(80)  # 5.3 MB: six 1 MB receive buffers, two of them pinned below
    data = encode(ConfigFile("c"), header, *big, close=True)
    kept, bases_dropped = [], set()
    for i, item in enumerate(
        MessageReader(StreamSource(_Trickle(data, 1 << 20)), ServerLimits(strict_counters=False))
    ):
        if isinstance(item, ismrmrd.Acquisition):
            if i % 40 == 0:
                kept.append(item)  # pins its buffer
            else:
                bases_dropped.add(id(item.data.base))
    # buffers of dropped readouts came back for reuse; kept readouts were never overwritten
    assert len(bases_dropped) < 6
    expected = [a for i, a in enumerate(big) if (i + 2) % 40 == 0]
    assert all(a == b for a, b in zip(kept, expected, strict=True))


# --- page-cache-free recording I/O ----------------------------------------------------------------


@pytest.mark.parametrize("direct", [True, False])
def test_direct_file_holds_exactly_what_was_written_after_each_flush(
    tmp_path: Path, direct: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gadgets.recorder as recorder

    if not direct:
        monkeypatch.setattr(recorder, "_O_DIRECT", 0)  # as on a system without O_DIRECT
    rng = np.random.default_rng(5)
    expected = bytearray()
    path = tmp_path / "x.mrd"
    with recorder.DirectFile(path, staging=8192) as f:
        for size in (1, 4095, 4096, 5000, 20000, 3, 70000):
            part = rng.integers(0, 256, size, dtype=np.uint8)
            f.write(part if size % 2 else part.tobytes())
            expected += part.tobytes()
            if size % 3 == 0:
                f.flush()
                assert path.read_bytes() == bytes(expected)
        assert f.direct == direct
    assert path.read_bytes() == bytes(expected)


def test_direct_file_writes_whole_staging_buffers_and_drains_on_request(tmp_path: Path) -> None:
    import gadgets.recorder as recorder

    path = tmp_path / "x.mrd"
    data = np.random.default_rng(6).integers(0, 256, 3 * 8192 + 5000, dtype=np.uint8).tobytes()
    with recorder.DirectFile(path, staging=8192) as f:
        f.write(data[:6000])
        assert path.stat().st_size == 0 and f.pending == 6000  # held: not a write per call
        f.write(data[6000:12000])  # fills the staging buffer once: one whole-buffer write
        assert path.read_bytes() == data[:8192] and f.pending == 12000 - 8192
        f.write(data[12000:14000])
        f.drain()  # whole 4 kB blocks go, the partial block stays
        assert path.read_bytes() == data[:12288] and f.pending == 14000 - 12288
        f.write(data[14000:])
    assert path.read_bytes() == data


def test_reader_drains_the_recording_when_the_client_pauses(tmp_path: Path) -> None:
    from gadgets.recorder import DirectFile

    a, b = socket.socketpair()
    header, _ = scan_data(matrix=16, n_coils=16, measurement_id="pause")
    header.encoding[0].encodedSpace.matrixSize.x = 512
    big = _big_acquisitions(6)  # 390 kB: less than the staging buffer
    first = encode(ConfigFile("c"), header, *big)
    path = tmp_path / "rec.mrd"
    with DirectFile(path) as rec:
        reader = MessageReader(b, ServerLimits(strict_counters=False), record=rec)
        items: list[object] = []
        t = threading.Thread(target=lambda: items.extend(reader))
        t.start()
        a.sendall(first)
        time.sleep(0.3)  # the client pauses: all but the last partial 4 kB block is on disk
        on_disk = path.read_bytes()
        assert len(on_disk) == len(first) - len(first) % 4096 and on_disk == first[: len(on_disk)]
        a.sendall(encode(close=True))
        t.join(5)
    a.close()
    b.close()
    assert path.read_bytes() == first + encode(close=True)
    assert sum(isinstance(i, ismrmrd.Acquisition) for i in items) == len(big)


def test_conversion_in_small_blocks_carries_messages_across_them(tmp_path: Path) -> None:
    header, _ = scan_data(matrix=16, n_coils=16, measurement_id="blocks")
    header.encoding[0].encodedSpace.matrixSize.x = 512
    big = _big_acquisitions(12)  # 65 kB messages: each spans several 4 kB blocks
    wave = ismrmrd.Waveform.from_array(np.arange(20, dtype=np.uint32).reshape(2, 10))
    data = encode(ConfigFile("c"), header, *big[:5], wave, *big[5:], close=True)
    for name, block in (("small", 4096), ("default", 16 << 20)):
        (tmp_path / f"{name}.mrd").write_bytes(data)
        assert stream_to_h5(tmp_path / f"{name}.mrd", tmp_path / f"{name}.h5", block=block) == len(big)
    with h5py.File(tmp_path / "small.h5") as f, h5py.File(tmp_path / "default.h5") as g:
        for name in ("data", "waveforms"):
            a, b = f["dataset"][name][...], g["dataset"][name][...]
            assert (a["head"] == b["head"]).all()
            assert all(np.array_equal(x, y) for x, y in zip(a["data"], b["data"], strict=True))
    assert all(a == b for a, b in zip(read_raw(tmp_path / "small.h5")[1], big, strict=True))
