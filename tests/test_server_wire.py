"""The defensive MRD v1 reader (gadgets.wire): one clear error per problem, no trust in lengths, fuzzed."""

from __future__ import annotations

import copy
import io
import struct
import tracemalloc

import ismrmrd
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ismrmrd.serialization import ConfigFile, ConfigText, ProtocolDeserializer

from gadgets.faults import encode, scan_data
from gadgets.limits import ServerLimits
from gadgets.wire import Disconnected, MessageReader, Rejected, WireError

HEADER, ACQS = scan_data(matrix=16, n_coils=2, measurement_id="wire")
LIMITS = ServerLimits(max_message_bytes=64 * 1024, max_text_bytes=16 * 1024)


def read_all(data: bytes, limits: ServerLimits = LIMITS) -> tuple[list, bytes]:
    """Items read from ``data`` and the recording made of them."""
    rec = io.BytesIO()
    items = list(MessageReader(io.BytesIO(data), limits, record=rec))
    return items, rec.getvalue()


def error_of(data: bytes, limits: ServerLimits = LIMITS) -> WireError | Disconnected:
    with pytest.raises((WireError, Disconnected)) as info:
        read_all(data, limits)
    return info.value


def test_valid_stream_round_trips_and_is_recorded_byte_for_byte() -> None:
    data = encode(ConfigFile("cartesian"), HEADER, "hello", *ACQS, close=True)
    items, recording = read_all(data)
    assert isinstance(items[0], ConfigFile) and items[0] == "cartesian"
    assert items[1].encoding[0].encodedSpace.matrixSize.x == 32
    assert items[2] == "hello"
    got = [i for i in items if isinstance(i, ismrmrd.Acquisition)]
    assert len(got) == len(ACQS) and all(a == b for a, b in zip(got, ACQS, strict=True))
    assert recording == data


def test_waveform_image_and_ndarray_are_read_with_limits() -> None:
    wave = ismrmrd.Waveform.from_array(np.arange(12, dtype=np.uint32).reshape(3, 4))
    image = ismrmrd.Image.from_array(np.ones((4, 5), np.float32))
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    items, _ = read_all(encode(ConfigFile("x"), HEADER, wave, image, arr, close=True))
    assert np.array_equal(items[2].data, wave.data)
    assert np.array_equal(items[3].data, image.data)
    assert np.array_equal(items[4], arr)


@pytest.mark.parametrize(
    ("tail", "kind", "text"),
    [
        (struct.pack("<H", 77), "unknown-id", "unknown message id 77; MRD v1 ids are 1, 2, 3, 4, 5"),
        (
            struct.pack("<HI", 5, 2**32 - 1),
            "oversized",
            "text message is 4294967295 bytes; the limit is 16384",
        ),
        (struct.pack("<HI", 2, 20000), "oversized", "config text message is 20000 bytes"),
        (struct.pack("<HI", 5, 2) + b"\xff\xfe", "malformed", "text message is not valid UTF-8"),
        (struct.pack("<H", 1) + b"a\x01b".ljust(1024, b"\0"), "malformed", "control characters"),
        (encode(HEADER), "out-of-order", "second MRD header"),
    ],
)
def test_each_problem_gets_one_error_naming_it(tail: bytes, kind: str, text: str) -> None:
    err = error_of(encode(ConfigFile("c"), HEADER, ACQS[0]) + tail)
    assert isinstance(err, WireError) and err.kind == kind
    assert text in str(err)


def test_oversized_acquisition_is_refused_before_its_payload_is_read() -> None:
    head = ismrmrd.AcquisitionHeader.from_buffer_copy(ACQS[0].to_bytes())
    head.number_of_samples, head.active_channels = 65535, 65535
    data = encode(ConfigFile("c"), HEADER) + struct.pack("<H", 1008) + bytes(head)  # no payload at all
    tracemalloc.start()
    err = error_of(data)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert err.kind == "oversized"
    assert "65535 channels x 65535 samples" in str(err) and "34358690140 bytes" in str(err)
    assert "--max-message-mb" in str(err)
    assert peak < 4 << 20  # nowhere near the 34 GB the header asks for


def test_oversized_image_and_ndarray() -> None:
    image = ismrmrd.Image.from_array(np.ones((200, 200), np.complex64))  # 320 kB > 64 kB
    assert "image (1 channels x 200x200x1)" in str(error_of(encode(ConfigFile("c"), HEADER, image)))
    dims = struct.pack("<HHH", 5, 0, 2) + struct.pack("<QQ", 2**40, 2**40)
    err = error_of(encode(ConfigFile("c"), HEADER) + struct.pack("<H", 1030) + dims)
    assert err.kind == "oversized" and "ndarray" in str(err)
    err = error_of(encode(ConfigFile("c"), HEADER) + struct.pack("<H", 1030) + struct.pack("<HHH", 99, 0, 1))
    assert err.kind == "malformed" and "data type 99" in str(err)


@pytest.mark.parametrize(
    ("xml", "text"),
    [
        (b"<ismrmrdHeader><oops", "not valid ISMRMRD XML"),
        (b"not xml at all", "not valid ISMRMRD XML"),
        (b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaa">]><ismrmrdHeader/>', "contains a DTD"),
        (
            b'<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"><experimentalConditions>'
            b"<H1resonanceFrequency_Hz>63500000</H1resonanceFrequency_Hz></experimentalConditions>"
            b"</ismrmrdHeader>",
            "no <encoding> element",
        ),
        (
            b'<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"><bogus/></ismrmrdHeader>',
            "not valid ISMRMRD",
        ),
    ],
)
def test_invalid_headers(xml: bytes, text: str) -> None:
    err = error_of(encode(ConfigFile("c")) + struct.pack("<HI", 3, len(xml)) + xml)
    assert err.kind == "invalid-header" and text in str(err)


def test_header_with_zero_matrix_is_refused() -> None:
    header, _ = scan_data(matrix=16)
    header.encoding[0].reconSpace.matrixSize.y = 0
    err = error_of(encode(ConfigFile("c"), header))
    assert "encoding[0].reconSpace.matrixSize.y must be in 1..65535, got 0" in str(err)


def test_data_before_header_is_out_of_order() -> None:
    err = error_of(encode(ConfigFile("c"), ACQS[0]))
    assert err.kind == "out-of-order" and "acquisition (id 1008) arrived before the MRD header" in str(err)


def test_truncation_and_disconnect_are_told_apart() -> None:
    full = encode(ConfigFile("c"), HEADER, ACQS[0], ACQS[1])
    cut = error_of(full[:-7])
    assert isinstance(cut, Disconnected) and cut.mid_message and "truncated message" in str(cut)
    assert "acquisition (id 1008)" in str(cut)
    gone = error_of(full)
    assert isinstance(gone, Disconnected) and not gone.mid_message and "without a close message" in str(gone)


def test_truncated_stream_recording_keeps_whole_messages_and_is_closed() -> None:
    full = encode(ConfigFile("c"), HEADER, *ACQS[:3])
    rec = io.BytesIO()
    reader = MessageReader(io.BytesIO(full[:-7]), LIMITS, record=rec)
    with pytest.raises(Disconnected):
        list(reader)
    items = list(ProtocolDeserializer(io.BytesIO(rec.getvalue())).deserialize())  # ends at CLOSE: no EOFError
    assert sum(isinstance(i, ismrmrd.Acquisition) for i in items) == 2


@pytest.mark.parametrize(
    ("change", "text"),
    [
        ({"active_channels": 3}, "active_channels is 3 but the header's receiverChannels is 2"),
        ({"encoding_space_ref": 2}, "encoding_space_ref is 2 but the header has 1 encoding(s)"),
        ({"center_sample": 999}, "center_sample is 999; allowed 0..32"),
        ({"sample_time_us": float("nan")}, "sample_time_us is nan"),
        ({"position": (0.0, float("inf"), 0.0)}, "position has a non-finite value"),
    ],
)
def test_inconsistent_acquisition_is_rejected_but_recorded(change: dict, text: str) -> None:
    bad = ismrmrd.Acquisition.from_array(np.zeros((change.get("active_channels", 2), 32), np.complex64))
    for key, value in change.items():
        if key != "active_channels":
            setattr(bad, key, value)
    items, recording = read_all(encode(ConfigFile("c"), HEADER, ACQS[0], bad, ACQS[1], close=True))
    rejected = [i for i in items if isinstance(i, Rejected)]
    assert len(rejected) == 1 and text in rejected[0].problem and "acquisition #1" in rejected[0].problem
    # the stream went on, and every readout is in the recording
    replay = list(ProtocolDeserializer(io.BytesIO(recording)).deserialize())
    assert sum(isinstance(i, ismrmrd.Acquisition) for i in replay) == 3


def test_counters_outside_limits_pass_unless_strict(caplog: pytest.LogCaptureFixture) -> None:
    bad = ismrmrd.Acquisition.from_array(ACQS[0].data.copy())
    bad.idx.kspace_encode_step_1 = 40
    data = encode(ConfigFile("c"), HEADER, bad, close=True)
    items, _ = read_all(data)
    assert isinstance(items[2], ismrmrd.Acquisition)
    assert "idx.kspace_encode_step_1=40 (0..15)" in caplog.text
    strict = ServerLimits(max_message_bytes=65536, max_text_bytes=16384, strict_counters=True)
    items, _ = read_all(data, strict)
    assert isinstance(items[2], Rejected)
    assert "idx.kspace_encode_step_1 is 40 but the header's encodingLimits allow 0..15" in items[2].problem


def test_config_text_and_header_with_trailing_nul_from_c_clients() -> None:
    xml = HEADER.toXML().encode() + b"\0"
    data = encode(ConfigText("abc")) + struct.pack("<HI", 3, len(xml)) + xml + struct.pack("<H", 4)
    items, recording = read_all(data)
    assert items[0] == "abc" and items[1].encoding
    assert isinstance(list(ProtocolDeserializer(io.BytesIO(recording)).deserialize())[1], type(HEADER))


# --- fuzzing ------------------------------------------------------------------------------------

_VALID = encode(ConfigFile("cartesian"), HEADER, "note", *ACQS[:3], close=True)
_FUZZ_LIMITS = ServerLimits(max_message_bytes=8192, max_text_bytes=8192)


def test_header_with_an_empty_number_is_one_invalid_header_error() -> None:
    # found by the fuzzer: a NUL for the "z" of the recon FOV's <z> tag, stream ending after the header
    # (parsed as '' there, and float('') raised a bare ValueError)
    data = bytearray(_VALID)
    data[data.find(b"<z>5.0</z>", data.find(b"<reconSpace>")) + 1] = 0
    end = data.find(b"</ismrmrdHeader>") + len(b"</ismrmrdHeader>")
    err = error_of(bytes(data[: end + 1]), _FUZZ_LIMITS)
    assert isinstance(err, WireError) and err.kind == "invalid-header"
    assert "fieldofview" in str(err).lower()  # the error names the field


def test_header_problem_names_a_field_that_is_not_a_number() -> None:
    from gadgets.consistency import header_problem

    header = copy.deepcopy(HEADER)
    header.encoding[0].encodedSpace.fieldOfView_mm.x = ""
    assert header_problem(header) == (
        "header encoding[0].encodedSpace.fieldOfView_mm.x must be a finite length >= 0 mm, got ''"
    )


def _check_reader_contract(data: bytes) -> None:
    """Only WireError/Disconnected may escape; the recording always replays as a valid MRD stream."""
    rec = io.BytesIO()
    try:
        for _ in MessageReader(io.BytesIO(data), _FUZZ_LIMITS, record=rec):
            pass
    except (WireError, Disconnected):
        pass
    if not rec.getvalue():
        return  # nothing arrived whole: nothing recorded (the server then removes the empty file)
    replay = list(ProtocolDeserializer(io.BytesIO(rec.getvalue())).deserialize())
    assert all(not isinstance(i, bytes) for i in replay)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_fuzz_random_bytes(data: bytes) -> None:
    _check_reader_contract(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.integers(0, 255)), min_size=1, max_size=8),
    st.integers(0, len(_VALID)),
)
def test_fuzz_mutated_valid_stream(flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(_VALID)
    for pos, value in flips:
        data[pos] = value
    _check_reader_contract(bytes(data[:cut]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([1, 2, 3, 5, 1008, 1022, 1026, 1030]), st.binary(max_size=600))
def test_fuzz_known_ids_with_random_bodies(mid: int, body: bytes) -> None:
    prefix = encode(ConfigFile("c"), HEADER) if mid in (1008, 1022, 1026, 1030) else b""
    _check_reader_contract(prefix + struct.pack("<H", mid) + body)


class _FullDisk(io.RawIOBase):
    """A raw-data file on a disk that filled up after ``room`` bytes."""

    def __init__(self, room: int):
        self.room = room

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:
        if len(b) > self.room:
            raise OSError(28, "No space left on device")
        self.room -= len(b)
        return len(b)


def test_a_failing_raw_recording_ends_the_stream_with_a_named_error() -> None:
    data = encode(ConfigFile("c"), HEADER, *ACQS, close=True)
    with pytest.raises(WireError) as info:
        list(MessageReader(io.BytesIO(data), LIMITS, record=_FullDisk(room=5000)))
    assert info.value.kind == "recording"
    assert "recording the raw data failed: [Errno 28] No space left on device" in str(info.value)
