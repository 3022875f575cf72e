"""NIfTI export geometry and MRD image files."""

from __future__ import annotations

from pathlib import Path

import ismrmrd
import nibabel as nib
import numpy as np
import pytest

from gadgets.export import LPS_TO_RAS, export_nifti, image_affine
from gadgets.mrdfile import read_images, write_images


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _slice_images(n_slices: int, gap_mm: float = 1.0) -> tuple[list[ismrmrd.Image], np.ndarray, float]:
    """Oblique 2D slices, nx=12, ny=10, FOV 240x200 mm, 4 mm thick, at distinct positions (LPS)."""
    R = _rotation(0.3, -0.2, 0.5)
    read, phase, normal = R[:, 0], R[:, 1], R[:, 2]
    centre = np.array([10.0, -25.0, 40.0])
    step = 4.0 + gap_mm
    images = []
    rng = np.random.default_rng(1)
    for s in range(n_slices):
        img = ismrmrd.Image.from_array(rng.random((1, 10, 12)).astype(np.float32))
        img.field_of_view = (240.0, 200.0, 4.0)
        img.position = tuple(centre + (s - 1) * step * normal)
        img.read_dir, img.phase_dir, img.slice_dir = tuple(read), tuple(phase), tuple(normal)
        img.slice = s
        img.image_series_index = 1
        img.meta["unisono.chain"] = "cartesian"
        images.append(img)
    return images, R, step


def _world(affine: np.ndarray, ijk: tuple[float, float, float]) -> np.ndarray:
    return (affine @ np.array([*ijk, 1.0]))[:3]


def test_single_image_affine_maps_centre_voxel_to_position() -> None:
    (img,), R, _ = _slice_images(1)
    A = image_affine(img)
    lps = np.diag([-1.0, -1.0, 1.0])
    assert np.allclose(_world(A, (6, 5, 0)), lps @ np.asarray(img.position), atol=1e-4)
    # one voxel along i moves by the pixel spacing along read_dir (20 mm), along j along phase_dir
    assert np.allclose(_world(A, (7, 5, 0)) - _world(A, (6, 5, 0)), lps @ (20.0 * R[:, 0]), atol=1e-4)
    assert np.allclose(_world(A, (6, 6, 0)) - _world(A, (6, 5, 0)), lps @ (20.0 * R[:, 1]), atol=1e-4)


def test_nifti_stack_affine_maps_voxel_centres_to_mrd_positions(tmp_path: Path) -> None:
    images, R, step = _slice_images(3)
    shuffled = [images[2], images[0], images[1]]  # export must sort slices along slice_dir
    (path,) = export_nifti(shuffled, tmp_path, stem="t")
    nii = nib.load(path)
    A = nii.affine
    assert nii.shape == (12, 10, 3)
    for k, img in enumerate(images):
        expected_ras = LPS_TO_RAS[:3, :3] @ np.asarray(img.position, dtype=np.float64)
        assert np.allclose(_world(A, (6, 5, k)), expected_ras, atol=1e-3)
        # data layout: voxel (i, j, k) holds image pixel (y=j, x=i)
        assert nii.get_fdata()[3, 7, k] == pytest.approx(float(img.data[0, 0, 7, 3]), rel=1e-6)
    # slice step includes the gap (positions), not just the thickness
    assert np.linalg.norm(A[:3, 2]) == pytest.approx(step)
    assert int(nii.header["sform_code"]) == 1 and int(nii.header["qform_code"]) == 1
    assert (tmp_path / "t_s01_c0_r0_set0.json").is_file()


def test_nifti_orientation_is_ras(tmp_path: Path) -> None:
    # A transverse slice with read = patient left (+x LPS), phase = posterior (+y LPS): RAS axis codes L, P.
    img = ismrmrd.Image.from_array(np.zeros((1, 4, 4), np.float32))
    img.field_of_view = (40.0, 40.0, 5.0)
    img.read_dir, img.phase_dir, img.slice_dir = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)
    (path,) = export_nifti([img], tmp_path)
    assert nib.aff2axcodes(nib.load(path).affine) == ("L", "P", "S")


def test_mrd_image_file_round_trip(tmp_path: Path) -> None:
    images, _, _ = _slice_images(3)
    cplx = ismrmrd.Image.from_array((np.ones((1, 4, 4)) * (1 + 2j)).astype(np.complex64))
    cplx.image_series_index = 2
    path = tmp_path / "img.h5"
    groups = write_images(path, None, images + [cplx])
    assert groups == ["image_1", "image_2"]
    back = read_images(path)
    assert len(back) == 4
    for a, b in zip(back[:3], images, strict=True):
        assert np.array_equal(a.data, b.data)
        assert tuple(a.position) == pytest.approx(tuple(b.position))
        assert a.meta["unisono.chain"] == "cartesian"
    assert np.array_equal(back[3].data, cplx.data)


def test_dicom_geometry_agrees_with_nifti_and_values_round_trip(tmp_path: Path) -> None:
    import pydicom

    from gadgets.dicom import MR_IMAGE_STORAGE, export_dicom

    images, _, _ = _slice_images(3)
    files = export_dicom(images, tmp_path / "dcm")
    (nii_path,) = export_nifti(images, tmp_path / "nii")
    A = nib.load(nii_path).affine
    assert len(files) == 3
    for k, path in enumerate(files):
        ds = pydicom.dcmread(path)
        assert ds.SOPClassUID == MR_IMAGE_STORAGE and ds.Modality == "MR"
        ipp = np.array(ds.ImagePositionPatient, dtype=float)
        row_dir, col_dir = np.array(ds.ImageOrientationPatient[:3]), np.array(ds.ImageOrientationPatient[3:])
        dy, dx = (float(v) for v in ds.PixelSpacing)
        for r, c in [(0, 0), (4, 7), (9, 11)]:
            lps = ipp + c * dx * row_dir + r * dy * col_dir  # DICOM PS3.3 C.7.6.2.1.1
            assert np.allclose(LPS_TO_RAS[:3, :3] @ lps, _world(A, (c, r, k)), atol=1e-3)
        values = ds.pixel_array * float(ds.RescaleSlope)
        peak = max(float(im.data.max()) for im in images)
        assert np.allclose(values, images[k].data[0, 0], atol=peak / 65535)
        assert "sha256=" in ds.ImageComments
    assert len({pydicom.dcmread(f).SeriesInstanceUID for f in files}) == 1
