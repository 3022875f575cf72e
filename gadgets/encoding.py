"""Read the numbers a reconstruction needs out of an ISMRMRD XML header."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["EncodingInfo", "encoding_info"]


@dataclass(frozen=True)
class EncodingInfo:
    """Matrix sizes, fields of view and k-space centres of one MRD encoding.

    Attributes:
        encoded_matrix: (x, y, z) encoded matrix (readout oversampled).
        encoded_fov_mm: (x, y, z) encoded field of view in mm.
        recon_matrix: (x, y, z) reconstructed matrix.
        recon_fov_mm: (x, y, z) reconstructed field of view in mm.
        center_step1: k-space centre line of encoding step 1 (ky).
        center_step2: k-space centre partition of encoding step 2 (kz).
        trajectory: MRD trajectory name (``cartesian``, ``radial``, ``spiral``, ``epi``...).
    """

    encoded_matrix: tuple[int, int, int]
    encoded_fov_mm: tuple[float, float, float]
    recon_matrix: tuple[int, int, int]
    recon_fov_mm: tuple[float, float, float]
    center_step1: int
    center_step2: int
    trajectory: str

    @property
    def cartesian_like(self) -> bool:
        """True for trajectories reconstructed on the Cartesian grid (``cartesian``, ``epi``).

        EPI readouts may carry their k-space trajectory (the simulator stores it), but
        their samples lie on the Cartesian grid after flipping reversed echoes.
        """
        return self.trajectory in ("cartesian", "epi")

    @property
    def readout_oversampling(self) -> int:
        """Integer readout oversampling factor, encoded over recon matrix along x (1 when equal)."""
        ex, rx = self.encoded_matrix[0], self.recon_matrix[0]
        if rx <= 0 or ex % rx:
            return 1
        return max(1, ex // rx)


def _xyz(v: Any, cast: type) -> tuple:
    return (cast(v.x), cast(v.y), cast(v.z))


def encoding_info(header: Any, index: int = 0) -> EncodingInfo:
    """Summarise ``header.encoding[index]``.

    Raises:
        ValueError: when the header has no such encoding.
    """
    encs = getattr(header, "encoding", None) or []
    if not 0 <= index < len(encs):
        raise ValueError(
            f"the MRD header has {len(encs)} encoding(s); encoding_space_ref {index} does not exist"
        )
    e = encs[index]
    em = _xyz(e.encodedSpace.matrixSize, int)
    rm = _xyz(e.reconSpace.matrixSize, int)
    lim = e.encodingLimits
    c1 = (
        lim.kspace_encoding_step_1.center
        if lim is not None and lim.kspace_encoding_step_1 is not None
        else None
    )
    c2 = (
        lim.kspace_encoding_step_2.center
        if lim is not None and lim.kspace_encoding_step_2 is not None
        else None
    )
    traj = e.trajectory
    traj_name = getattr(traj, "value", traj)
    return EncodingInfo(
        encoded_matrix=em,
        encoded_fov_mm=_xyz(e.encodedSpace.fieldOfView_mm, float),
        recon_matrix=rm,
        recon_fov_mm=_xyz(e.reconSpace.fieldOfView_mm, float),
        center_step1=int(c1) if c1 is not None else em[1] // 2,
        center_step2=int(c2) if c2 is not None else em[2] // 2,
        trajectory=str(traj_name or "cartesian"),
    )
