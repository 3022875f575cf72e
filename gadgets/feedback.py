"""The feedback message: rigid head pose sent from the reconstruction back to the scanner.

Neither MRD nor Gadgetron defines a return channel to the scanner; unisono sends
its motion estimates as MRD v1 text messages (message id 5) on the same
connection the raw data arrive on. The text is one JSON object (schema in
``docs/feedback.md``)::

    {"type": "unisono.feedback.motion", "version": 1, "seq": 3,
     "scan_counter": 211, "acquisition_time_stamp": 342, "time_s": 0.855,
     "translation_mm": [0.1, 2.3, 0.0], "rotation_deg": [0.0, 0.0, 0.0],
     "observed": [true, true, false, false, false, false],
     "frame": "patient", "method": "navigator-projection", "processing_ms": 0.8}

The pose is absolute (relative to the reference, the head at the first
navigator): a head point at rest ``p`` is now at ``R p + t`` in MRD patient
coordinates, ``R = Rz(rz) Ry(ry) Rx(rx)`` with angles in degrees about the x,
y, z axes, ``t`` in mm -- the convention of :class:`simulator.motion.RigidTransform`.

The scanner reports back which pose it applied to each readout in the
acquisition header: ``user_float[0:6]`` = (tx, ty, tz) mm, (rx, ry, rz) deg,
and ``user_int[7]`` = ``seq + 1`` of the message applied (0 = none). The
estimator needs that: a navigator acquired under prospective correction sees
only the residual motion, which it composes with the applied pose.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "FEEDBACK_TYPE",
    "FEEDBACK_VERSION",
    "APPLIED_POSE_FLOATS",
    "APPLIED_SEQ_INT",
    "FeedbackError",
    "MotionFeedback",
    "encode",
    "decode",
    "is_feedback",
    "applied_pose",
    "tag_applied_pose",
    "compose",
    "rotation_matrix",
    "angles_from_matrix",
]

FEEDBACK_TYPE = "unisono.feedback.motion"
FEEDBACK_VERSION = 1
#: acquisition ``user_float`` slots carrying the pose the scanner applied: tx ty tz mm, rx ry rz deg
APPLIED_POSE_FLOATS = slice(0, 6)
#: acquisition ``user_int`` slot carrying ``seq + 1`` of the feedback message applied (0 = none)
APPLIED_SEQ_INT = 7

_FRAMES = ("patient",)
_LIMIT_MM = 100.0  # the simulator's own bounds for rigid head motion
_LIMIT_DEG = 45.0
_REQUIRED = (
    "type",
    "version",
    "seq",
    "scan_counter",
    "acquisition_time_stamp",
    "translation_mm",
    "rotation_deg",
)
_OPTIONAL = ("time_s", "observed", "frame", "method", "processing_ms", "reference_time_s")


class FeedbackError(ValueError):
    """A feedback message that does not follow the schema (the text names the field)."""


@dataclass(frozen=True)
class MotionFeedback:
    """One motion estimate.

    Attributes:
        seq: message number on this connection (0, 1, 2, ...).
        scan_counter: ``scan_counter`` of the last readout the estimate used.
        acquisition_time_stamp: that readout's ``acquisition_time_stamp`` (scanner ticks, 2.5 ms).
        translation_mm: (tx, ty, tz) in mm, MRD patient coordinates.
        rotation_deg: (rx, ry, rz) in degrees about x, y, z (R = Rz Ry Rx).
        observed: which of the six components (tx, ty, tz, rx, ry, rz) the data determined;
            the others are held at their last applied value (usually 0).
        time_s: the readout's time in the sequence (s), when known.
        frame: coordinate frame; only ``"patient"`` is defined.
        method: how it was estimated (``navigator-projection``, ``image-registration``).
        processing_ms: time the estimator spent from that readout to this message (ms).
        reference_time_s: sequence time (s) of the reference data the pose is relative to.
    """

    seq: int
    scan_counter: int
    acquisition_time_stamp: int
    translation_mm: tuple[float, float, float]
    rotation_deg: tuple[float, float, float]
    observed: tuple[bool, bool, bool, bool, bool, bool] = (True,) * 6
    time_s: float | None = None
    frame: str = "patient"
    method: str = "navigator-projection"
    processing_ms: float | None = None
    reference_time_s: float | None = None

    def __post_init__(self) -> None:
        _check_int("seq", self.seq)
        _check_int("scan_counter", self.scan_counter)
        _check_int("acquisition_time_stamp", self.acquisition_time_stamp)
        object.__setattr__(self, "translation_mm", _triple("translation_mm", self.translation_mm, _LIMIT_MM))
        object.__setattr__(self, "rotation_deg", _triple("rotation_deg", self.rotation_deg, _LIMIT_DEG))
        obs = self.observed
        if not isinstance(obs, list | tuple) or len(obs) != 6 or not all(isinstance(v, bool) for v in obs):
            raise FeedbackError(f"feedback field 'observed' must be a list of 6 booleans, got {obs!r}")
        object.__setattr__(self, "observed", tuple(obs))
        if self.frame not in _FRAMES:
            raise FeedbackError(f"feedback field 'frame' must be one of {_FRAMES}, got {self.frame!r}")
        if self.time_s is not None and not _finite_number(self.time_s):
            raise FeedbackError(
                f"feedback field 'time_s' must be a finite number of seconds, got {self.time_s!r}"
            )
        if self.processing_ms is not None and not (
            _finite_number(self.processing_ms) and self.processing_ms >= 0
        ):
            raise FeedbackError(
                f"feedback field 'processing_ms' must be a number >= 0, got {self.processing_ms!r}"
            )
        if self.reference_time_s is not None and not _finite_number(self.reference_time_s):
            raise FeedbackError(
                "feedback field 'reference_time_s' must be a finite number of seconds, "
                f"got {self.reference_time_s!r}"
            )
        if not isinstance(self.method, str) or not self.method:
            raise FeedbackError(f"feedback field 'method' must be a non-empty string, got {self.method!r}")


def _finite_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _check_int(name: str, v: object) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise FeedbackError(f"feedback field '{name}' must be an integer >= 0, got {v!r}")


def _triple(name: str, v: object, limit: float) -> tuple[float, float, float]:
    if not isinstance(v, list | tuple | np.ndarray) or len(v) != 3:
        raise FeedbackError(f"feedback field '{name}' must be a list of 3 numbers, got {v!r}")
    vals = [float(x) if _finite_number(x) or isinstance(x, np.floating) else math.nan for x in v]
    if not all(math.isfinite(x) and abs(x) <= limit for x in vals):
        raise FeedbackError(
            f"feedback field '{name}' must hold 3 finite numbers within +-{limit:g}, got {v!r}"
        )
    return (vals[0], vals[1], vals[2])


def encode(fb: MotionFeedback) -> str:
    """The JSON text of a feedback message (MRD text message payload)."""
    doc: dict[str, Any] = {
        "type": FEEDBACK_TYPE,
        "version": FEEDBACK_VERSION,
        "seq": fb.seq,
        "scan_counter": fb.scan_counter,
        "acquisition_time_stamp": fb.acquisition_time_stamp,
        "translation_mm": [round(x, 6) for x in fb.translation_mm],
        "rotation_deg": [round(x, 6) for x in fb.rotation_deg],
        "observed": list(fb.observed),
        "frame": fb.frame,
        "method": fb.method,
    }
    if fb.time_s is not None:
        doc["time_s"] = fb.time_s
    if fb.processing_ms is not None:
        doc["processing_ms"] = round(fb.processing_ms, 4)
    if fb.reference_time_s is not None:
        doc["reference_time_s"] = fb.reference_time_s
    return json.dumps(doc, separators=(",", ":"))


def is_feedback(text: object) -> bool:
    """True for text that claims to be a unisono motion feedback message (cheap prefix check)."""
    return isinstance(text, str) and text.lstrip().startswith("{") and FEEDBACK_TYPE in text[:200]


def decode(text: str | bytes) -> MotionFeedback:
    """Parse and validate a feedback message.

    Raises:
        FeedbackError: naming the field at fault and what is allowed.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FeedbackError(f"feedback message is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise FeedbackError(f"feedback message must be a JSON object, got {type(doc).__name__}")
    if doc.get("type") != FEEDBACK_TYPE:
        raise FeedbackError(f"feedback field 'type' must be {FEEDBACK_TYPE!r}, got {doc.get('type')!r}")
    if doc.get("version") != FEEDBACK_VERSION:
        raise FeedbackError(
            f"feedback field 'version' must be {FEEDBACK_VERSION}, got {doc.get('version')!r}"
        )
    missing = [k for k in _REQUIRED if k not in doc]
    if missing:
        raise FeedbackError(f"feedback message lacks the required field '{missing[0]}'")
    unknown = sorted(set(doc) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        allowed = ", ".join(_REQUIRED + _OPTIONAL)
        raise FeedbackError(f"feedback field '{unknown[0]}' is not in schema version 1 (allowed: {allowed})")
    return MotionFeedback(
        seq=doc["seq"],
        scan_counter=doc["scan_counter"],
        acquisition_time_stamp=doc["acquisition_time_stamp"],
        translation_mm=doc["translation_mm"],
        rotation_deg=doc["rotation_deg"],
        observed=doc.get("observed", [True] * 6),
        time_s=doc.get("time_s"),
        frame=doc.get("frame", "patient"),
        method=doc.get("method", "navigator-projection"),
        processing_ms=doc.get("processing_ms"),
        reference_time_s=doc.get("reference_time_s"),
    )


# -- pose bookkeeping shared by scanner and estimator ------------------------------------------
def rotation_matrix(rotation_deg: tuple[float, float, float] | np.ndarray) -> np.ndarray:
    """R = Rz Ry Rx (3, 3) for angles in degrees about x, y, z."""
    ax, ay, az = np.radians(np.asarray(rotation_deg, dtype=np.float64))
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def angles_from_matrix(r: np.ndarray) -> tuple[float, float, float]:
    """(rx, ry, rz) degrees of R = Rz Ry Rx (inverse of :func:`rotation_matrix` for |ry| < 90 deg)."""
    ry = math.asin(max(-1.0, min(1.0, -float(r[2, 0]))))
    rx = math.atan2(float(r[2, 1]), float(r[2, 2]))
    rz = math.atan2(float(r[1, 0]), float(r[0, 0]))
    return (math.degrees(rx), math.degrees(ry), math.degrees(rz))


def compose(
    outer: tuple[np.ndarray | tuple, np.ndarray | tuple], inner: tuple[np.ndarray | tuple, np.ndarray | tuple]
) -> tuple[np.ndarray, np.ndarray]:
    """Pose ``outer ∘ inner`` as (translation_mm (3,), rotation_deg (3,)): p -> Ro (Ri p + ti) + to.

    Under a prospective correction ``a`` the encoding sees the residual ``r`` with head = a ∘ r
    (the encoding frame is the scanner frame moved by ``a``), so the head pose is compose(a, r).
    """
    to, ao = (np.asarray(v, dtype=np.float64) for v in outer)
    ti, ai = (np.asarray(v, dtype=np.float64) for v in inner)
    ro = rotation_matrix(ao)
    r = ro @ rotation_matrix(ai)
    return ro @ ti + to, np.asarray(angles_from_matrix(r))


def applied_pose(acq: Any) -> tuple[np.ndarray, np.ndarray, int]:
    """(translation_mm (3,), rotation_deg (3,), seq + 1 or 0) the scanner applied to ``acq``."""
    f = np.asarray(acq.user_float, dtype=np.float64)[APPLIED_POSE_FLOATS]
    return f[:3].copy(), f[3:6].copy(), int(acq.user_int[APPLIED_SEQ_INT])


def tag_applied_pose(acq: Any, translation_mm: Any, rotation_deg: Any, seq_plus_one: int) -> None:
    """Record in ``acq`` the prospective-correction pose it was acquired with (see module doc)."""
    vals = list(map(float, translation_mm)) + list(map(float, rotation_deg))
    for i, v in zip(range(APPLIED_POSE_FLOATS.start, APPLIED_POSE_FLOATS.stop), vals, strict=True):
        acq.user_float[i] = v
    acq.user_int[APPLIED_SEQ_INT] = int(seq_plus_one)
