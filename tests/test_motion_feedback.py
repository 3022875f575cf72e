"""The feedback message schema: round trip, and one clear error per bad field."""

from __future__ import annotations

import json

import ismrmrd
import numpy as np
import pytest

from gadgets.feedback import (
    FEEDBACK_TYPE,
    FeedbackError,
    MotionFeedback,
    applied_pose,
    decode,
    encode,
    is_feedback,
    tag_applied_pose,
)


def sample() -> MotionFeedback:
    return MotionFeedback(
        seq=3,
        scan_counter=211,
        acquisition_time_stamp=342,
        translation_mm=(0.12, -2.5, 0.0),
        rotation_deg=(0.0, 0.0, 1.25),
        observed=(True, True, False, False, False, True),
        time_s=0.855,
        processing_ms=0.8,
        reference_time_s=0.27,
    )


def test_round_trip_keeps_every_field():
    fb = sample()
    text = encode(fb)
    assert is_feedback(text)
    assert json.loads(text)["type"] == FEEDBACK_TYPE
    assert decode(text) == fb
    assert decode(text.encode()) == fb


def _doc(**changes):
    doc = json.loads(encode(sample()))
    for key, value in changes.items():
        if value is _DROP:
            doc.pop(key)
        else:
            doc[key] = value
    return json.dumps(doc)


_DROP = object()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"type": "something.else"}, "field 'type' must be"),
        ({"version": 2}, "field 'version' must be 1"),
        ({"seq": _DROP}, "lacks the required field 'seq'"),
        ({"seq": -1}, "field 'seq' must be an integer >= 0"),
        ({"scan_counter": 1.5}, "field 'scan_counter' must be an integer"),
        ({"translation_mm": [1, 2]}, "field 'translation_mm' must be a list of 3 numbers"),
        ({"translation_mm": [1, 2, 500]}, r"field 'translation_mm' must hold 3 finite numbers within \+-100"),
        ({"rotation_deg": [0, "a", 0]}, "field 'rotation_deg' must hold 3 finite numbers"),
        ({"observed": [True] * 5}, "field 'observed' must be a list of 6 booleans"),
        ({"frame": "scanner"}, "field 'frame' must be one of"),
        ({"processing_ms": -3}, "field 'processing_ms' must be a number >= 0"),
        ({"colour": "red"}, "field 'colour' is not in schema version 1"),
    ],
)
def test_bad_fields_are_named(changes, message):
    with pytest.raises(FeedbackError, match=message):
        decode(_doc(**changes))


def test_non_json_and_non_object_are_rejected():
    with pytest.raises(FeedbackError, match="not JSON"):
        decode("{nope")
    with pytest.raises(FeedbackError, match="must be a JSON object"):
        decode("[1, 2]")
    assert not is_feedback("unisono error: chain failed")
    assert not is_feedback(b"{}")


def test_applied_pose_tag_round_trips_through_mrd_bytes():
    acq = ismrmrd.Acquisition.from_array(np.zeros((2, 16), np.complex64))
    tag_applied_pose(acq, (1.5, -2.0, 0.25), (0.0, 1.0, -3.0), 7)
    back = ismrmrd.Acquisition.from_bytes(acq.to_bytes())
    t, r, seq = applied_pose(back)
    assert np.allclose(t, (1.5, -2.0, 0.25)) and np.allclose(r, (0.0, 1.0, -3.0)) and seq == 7


def test_scanner_dead_band_applies_an_offset_that_persists_and_ignores_one_that_alternates():
    """Through the scanner's channel (encoded texts in, poses out at each block): a change within
    the dead band is not applied; with ``persist`` 3, three estimates in a row on one side of the
    running pose beyond half the band are, while estimates that change sides are not."""
    import dataclasses

    from unisono.scan import ScannerFeedback

    def send(channel, seq, rz):
        fb = dataclasses.replace(
            sample(), seq=seq, translation_mm=(0.0, 0.0, 0.0), rotation_deg=(0.0, 0.0, rz)
        )
        channel.on_item(encode(fb))
        return channel.poll()

    for persist, expected in ((0, 1.0), (3, 0.55)):
        ch = ScannerFeedback(apply=True, min_change_deg=0.8, persist=persist)
        assert send(ch, 0, 1.0).rotation_deg[2] == pytest.approx(1.0)  # beyond the band
        for seq, rz in enumerate((0.5, 0.45, 0.55), start=1):  # 0.45-0.55 below it, three in a row
            pose = send(ch, seq, rz)
        assert pose.rotation_deg[2] == pytest.approx(expected)
    ch = ScannerFeedback(apply=True, min_change_deg=0.8, persist=3)
    for seq, rz in enumerate((0.5, -0.5, 0.5, -0.5, 0.5)):  # alternating: noise, never applied
        assert send(ch, seq, rz) is None
    with pytest.raises(ValueError, match="'persist' must be an integer >= 0"):
        ScannerFeedback(apply=True, persist=-1)
