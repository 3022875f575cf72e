"""Rigid head motion during a scan, and prospective correction from feedback.

A :class:`RigidTransform` maps a point of the head at rest to scanner coordinates:
p_scanner = R p + t. A :class:`MotionTrajectory` gives the transform against sequence time
(keyframes, linearly interpolated; built-in drift / step / jerk generators or a text file).

Prospective correction (what a scanner with PMC does): with the latest estimate (R, t) the
following blocks run with gradients rotated by R (the logical axes follow the head) and with the
RF and receiver phase advanced by theta(t) = 2 pi ∫ G.t dτ, accumulated while a correction is
in force with the translation t in force at each moment (so the phase stays continuous when the
estimate changes); theta's time derivative is the usual frequency offset G.t during slice
selection and readout. For a perfect estimate the encoding then sees the head at rest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch


def rotation_matrix(rx_deg: float, ry_deg: float, rz_deg: float) -> np.ndarray:
    """R = Rz Ry Rx for rotations (degrees) about the scanner x, y, z axes."""
    ax, ay, az = (math.radians(v) for v in (rx_deg, ry_deg, rz_deg))
    cx, sx, cy, sy, cz, sz = (
        math.cos(ax),
        math.sin(ax),
        math.cos(ay),
        math.sin(ay),
        math.cos(az),
        math.sin(az),
    )
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class RigidTransform:
    """p' = R p + t with translation in mm and rotations in degrees (about x, y, z; R = Rz Ry Rx)."""

    translation_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def matrix(self) -> np.ndarray:
        """Rotation (3, 3)."""
        return rotation_matrix(*self.rotation_deg)

    @property
    def t_m(self) -> np.ndarray:
        """Translation (3,) in m."""
        return np.asarray(self.translation_mm, dtype=np.float64) * 1e-3

    def apply(self, points: torch.Tensor) -> torch.Tensor:
        """Transform points (N, 3) m."""
        r = torch.as_tensor(self.matrix, dtype=points.dtype, device=points.device)
        t = torch.as_tensor(self.t_m, dtype=points.dtype, device=points.device)
        return points @ r.T + t

    def close_to(self, other: RigidTransform, tol_mm: float = 0.01, tol_deg: float = 0.01) -> bool:
        """True when both differ by less than the tolerances in every component."""
        dt = np.abs(np.subtract(self.translation_mm, other.translation_mm)).max()
        dr = np.abs(np.subtract(self.rotation_deg, other.rotation_deg)).max()
        return bool(dt < tol_mm and dr < tol_deg)

    def is_identity(self) -> bool:
        return self.close_to(RigidTransform(), 1e-9, 1e-9)


@dataclass
class MotionTrajectory:
    """Rigid pose against time: keyframe times (s, increasing) and poses, linear in between.

    Before the first keyframe the first pose holds, after the last the last pose holds.
    """

    times_s: np.ndarray
    translations_mm: np.ndarray  # (T, 3)
    rotations_deg: np.ndarray  # (T, 3)
    name: str = "custom"
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.times_s = np.asarray(self.times_s, dtype=np.float64).ravel()
        self.translations_mm = np.asarray(self.translations_mm, dtype=np.float64).reshape(-1, 3)
        self.rotations_deg = np.asarray(self.rotations_deg, dtype=np.float64).reshape(-1, 3)
        n = self.times_s.size
        if n == 0 or self.translations_mm.shape[0] != n or self.rotations_deg.shape[0] != n:
            raise ValueError(
                "motion: times, translations and rotations need the same (non-zero) number of rows"
            )
        if np.any(np.diff(self.times_s) < 0):
            raise ValueError("motion: keyframe times must be non-decreasing")
        if np.abs(self.translations_mm).max() > 100 or np.abs(self.rotations_deg).max() > 45:
            raise ValueError("motion: translations must stay within +-100 mm and rotations within +-45 deg")

    def transform_at(self, t_s: float) -> RigidTransform:
        """The pose at sequence time ``t_s`` (s)."""
        tr = [float(np.interp(t_s, self.times_s, self.translations_mm[:, i])) for i in range(3)]
        rot = [float(np.interp(t_s, self.times_s, self.rotations_deg[:, i])) for i in range(3)]
        return RigidTransform(tuple(tr), tuple(rot))  # type: ignore[arg-type]

    # -- generators ---------------------------------------------------------------------------
    @classmethod
    def still(cls) -> MotionTrajectory:
        return cls(np.zeros(1), np.zeros((1, 3)), np.zeros((1, 3)), name="still")

    @classmethod
    def drift(cls, duration_s: float, translation_mm=(0.0, 2.0, 0.0), rotation_deg=(0.0, 0.0, 1.0)):
        """Slow linear drift from rest to the given pose over ``duration_s``."""
        return cls([0.0, duration_s], [[0, 0, 0], translation_mm], [[0, 0, 0], rotation_deg], name="drift")

    @classmethod
    def step(cls, at_s: float, translation_mm=(0.0, 3.0, 0.0), rotation_deg=(0.0, 0.0, 3.0), ramp_s=0.05):
        """At rest, then a fast move (over ``ramp_s``) to a new pose that is kept."""
        return cls(
            [0.0, at_s, at_s + ramp_s],
            [[0, 0, 0], [0, 0, 0], translation_mm],
            [[0, 0, 0], [0, 0, 0], rotation_deg],
            name="step",
        )

    @classmethod
    def jerk(cls, at_s: float, translation_mm=(0.0, 4.0, 0.0), rotation_deg=(0.0, 0.0, 4.0), width_s=0.2):
        """A sudden move that returns to rest (a cough or a twitch)."""
        half = width_s / 2
        return cls(
            [0.0, at_s, at_s + half, at_s + width_s],
            [[0, 0, 0], [0, 0, 0], translation_mm, [0, 0, 0]],
            [[0, 0, 0], [0, 0, 0], rotation_deg, [0, 0, 0]],
            name="jerk",
        )

    @classmethod
    def from_file(cls, path: str | Path) -> MotionTrajectory:
        """Read a text/CSV file with rows ``t_s tx_mm ty_mm tz_mm rx_deg ry_deg rz_deg``.

        Lines starting with '#' are comments; commas or whitespace separate values.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"motion file {path} does not exist")
        rows = []
        for n, line in enumerate(path.read_text().splitlines(), start=1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.replace(",", " ").split()
            if len(parts) != 7:
                raise ValueError(
                    f"motion file {path}, line {n}: expected 7 values "
                    f"(t_s tx_mm ty_mm tz_mm rx_deg ry_deg rz_deg), got {len(parts)}"
                )
            try:
                rows.append([float(p) for p in parts])
            except ValueError as exc:
                raise ValueError(f"motion file {path}, line {n}: {exc}") from exc
        if not rows:
            raise ValueError(f"motion file {path} has no data rows")
        a = np.array(rows)
        return cls(a[:, 0], a[:, 1:4], a[:, 4:7], name=path.stem)

    def write(self, path: str | Path) -> None:
        """Write the keyframes in the format :meth:`from_file` reads."""
        a = np.column_stack([self.times_s, self.translations_mm, self.rotations_deg])
        np.savetxt(path, a, header="t_s tx_mm ty_mm tz_mm rx_deg ry_deg rz_deg", fmt="%.6g")


def parse_motion(spec: str, duration_s: float) -> MotionTrajectory:
    """A trajectory from a file path or a generator name: still, drift, step, jerk."""
    if spec == "still":
        return MotionTrajectory.still()
    if spec == "drift":
        return MotionTrajectory.drift(duration_s)
    if spec == "step":
        return MotionTrajectory.step(duration_s / 2)
    if spec == "jerk":
        return MotionTrajectory.jerk(duration_s / 2)
    return MotionTrajectory.from_file(spec)


class ProspectiveCorrection:
    """The scanner's current prospective-correction pose (identity until feedback arrives)."""

    def __init__(self) -> None:
        self.pose = RigidTransform()
        self.n_updates = 0

    def update(self, pose: RigidTransform) -> None:
        if not isinstance(pose, RigidTransform):
            raise TypeError(f"feedback must return a RigidTransform or None; got {type(pose).__name__}")
        self.pose = pose
        self.n_updates += 1

    @property
    def active(self) -> bool:
        return not self.pose.is_identity()
