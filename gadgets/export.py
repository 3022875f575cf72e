"""Export MRD images as NIfTI volumes with the affine from the MRD image headers.

Coordinates.  MRD (like DICOM) gives ``position`` and the unit vectors
``read_dir``, ``phase_dir``, ``slice_dir`` in the *patient* coordinate system
LPS (+x towards the patient's left, +y posterior, +z superior), in mm.  NIfTI
(and nibabel) use RAS+ (+x towards the patient's right, +y anterior,
+z superior); the conversion flips the sign of x and y:
``RAS = diag(-1, -1, 1) · LPS``.

Voxel centres.  unisono reconstructs with centred FFTs, so the pixel at
index ``n // 2`` along each axis is the field-of-view centre, which is where
``position`` points.  Voxel ``(i, j, k)`` (x = read, y = phase, z = slice or
partition) of one image therefore sits at::

    position + (i - nx//2)·Δx·read_dir + (j - ny//2)·Δy·phase_dir + (k - nz//2)·Δz·slice_dir

with ``Δ = field_of_view / matrix_size``.  Several 2D slices are stacked along
their positions (sorted along ``slice_dir``); the slice step is the distance
between neighbouring slice positions (which includes any slice gap).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import ismrmrd
import nibabel as nib
import numpy as np

__all__ = ["LPS_TO_RAS", "image_affine", "volume_affine", "group_volumes", "export_nifti"]

#: multiply an LPS vector (or the top rows of an LPS affine) by this to get RAS
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _spacing(img: ismrmrd.Image) -> np.ndarray:
    fov = np.asarray(img.field_of_view, dtype=np.float64)
    n = np.asarray(img.matrix_size, dtype=np.float64)
    if np.any(fov <= 0) or np.any(n <= 0):
        raise ValueError(f"image field_of_view {tuple(fov)} mm and matrix_size {tuple(n)} must be positive")
    return fov / n


def _directions(img: ismrmrd.Image) -> np.ndarray:
    """(3, 3) columns read, phase, slice (LPS); identity when the header leaves them zero."""
    cols = np.stack(
        [np.asarray(d, dtype=np.float64) for d in (img.read_dir, img.phase_dir, img.slice_dir)], 1
    )
    if not np.any(cols):
        return np.eye(3)
    norms = np.linalg.norm(cols, axis=0)
    if np.any(norms < 1e-6):
        raise ValueError("image read_dir, phase_dir and slice_dir must be unit vectors (one is zero)")
    return cols / norms


def image_affine(img: ismrmrd.Image) -> np.ndarray:
    """4x4 RAS affine mapping voxel (i=x, j=y, k=z) of one MRD image to mm."""
    d = _spacing(img)
    R = _directions(img) * d[None, :]
    n = np.asarray(img.matrix_size)
    centre = np.asarray(img.position, dtype=np.float64)
    origin = centre - R @ (n // 2).astype(np.float64)
    A = np.eye(4)
    A[:3, :3] = R
    A[:3, 3] = origin
    return LPS_TO_RAS @ A


def volume_affine(slices: Sequence[ismrmrd.Image]) -> np.ndarray:
    """RAS affine of 2D slices stacked in the given order (k = list index)."""
    A = image_affine(slices[0])
    if len(slices) > 1:
        p0 = np.asarray(slices[0].position, dtype=np.float64)
        p1 = np.asarray(slices[-1].position, dtype=np.float64)
        step = (p1 - p0) / (len(slices) - 1)
        if np.linalg.norm(step) < 1e-6:
            raise ValueError("slices to stack share one position; give them distinct positions")
        A[:3, 2] = LPS_TO_RAS[:3, :3] @ step
        # origin: voxel (0, 0, 0) of the first slice (k = 0 is that slice itself)
        n = np.asarray(slices[0].matrix_size)
        R = _directions(slices[0]) * _spacing(slices[0])[None, :]
        origin = p0 - R[:, :2] @ (n[:2] // 2).astype(np.float64)
        A[:3, 3] = LPS_TO_RAS[:3, :3] @ origin
    return A


def group_volumes(images: Sequence[ismrmrd.Image]) -> dict[tuple[int, int, int, int], list[ismrmrd.Image]]:
    """Group images into volumes by (series, contrast, repetition, set), slices sorted along slice_dir."""
    groups: dict[tuple[int, int, int, int], list[ismrmrd.Image]] = {}
    for img in images:
        key = (img.image_series_index, img.contrast, img.repetition, img.set)
        groups.setdefault(key, []).append(img)
    for imgs in groups.values():
        normal = _directions(imgs[0])[:, 2]
        imgs.sort(key=lambda im, n=normal: (float(np.dot(np.asarray(im.position, float), n)), im.slice))
    return groups


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def export_nifti(images: Sequence[ismrmrd.Image], out_dir: str | Path, stem: str = "image") -> list[Path]:
    """Write one NIfTI-1 file (``.nii.gz``) per volume plus a JSON sidecar with the MRD meta.

    Args:
        images: MRD images (magnitude float or complex; one channel is exported).
        out_dir: output folder (created).
        stem: file name prefix.

    Returns:
        The NIfTI paths written.  3D images are written as they are; several 2D
        slices of one (series, contrast, repetition, set) are stacked.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for (series, contrast, rep, set_), imgs in group_volumes(images).items():
        if imgs[0].matrix_size[2] > 1:
            vols = [(im, im.data[0].transpose(2, 1, 0), image_affine(im)) for im in imgs]
        else:
            stack = np.stack([im.data[0, 0].T for im in imgs], axis=-1)  # (x, y, slice)
            vols = [(imgs[0], stack, volume_affine(imgs))]
        for n, (ref, arr, affine) in enumerate(vols):
            arr = np.asarray(arr)
            if np.iscomplexobj(arr):
                arr = arr.astype(np.complex64)
            else:
                arr = arr.astype(np.float32)
            nii = nib.Nifti1Image(arr, affine)
            nii.header.set_xyzt_units("mm", "sec")
            nii.set_sform(affine, code=1)  # 1 = scanner coordinates
            nii.set_qform(affine, code=1)
            chain = str(ref.meta.get("unisono.chain", ""))
            sha = str(ref.meta.get("unisono.chain_sha256", ""))
            nii.header["descrip"] = _safe(f"unisono {chain} {sha[:16]}")[:79].encode()
            name = f"{_safe(stem)}_s{series:02d}_c{contrast}_r{rep}_set{set_}" + (
                f"_{n}" if len(vols) > 1 else ""
            )
            path = out_dir / f"{name}.nii.gz"
            nib.save(nii, path)
            side = {k: ref.meta[k] for k in ref.meta}
            side["ImageOrientationConvention"] = "RAS (converted from MRD/DICOM LPS)"
            (out_dir / f"{name}.json").write_text(json.dumps(side, indent=2, default=str))
            written.append(path)
    return written
