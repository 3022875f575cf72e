"""Export MRD images as a DICOM MR Image Storage series (one file per 2D slice / partition).

Geometry (DICOM uses the same LPS patient coordinates as MRD):
``ImageOrientationPatient`` = read_dir (along a row, increasing column) then
phase_dir (down a column, increasing row); ``ImagePositionPatient`` is the
centre of pixel (row 0, column 0), i.e. ``position − (nx//2)·Δx·read −
(ny//2)·Δy·phase`` (see gadgets/export.py for why ``n//2`` is the centre);
``PixelSpacing`` is [row spacing Δy, column spacing Δx] in mm.

Intensities are stored as uint16 with ``RescaleSlope`` so that
``stored × slope`` gives back the float image to 1/65535 of its maximum.
The chain name, version and sha256 go into ``ImageComments`` and
``SoftwareVersions``.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from pathlib import Path

import ismrmrd
import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

__all__ = ["MR_IMAGE_STORAGE", "export_dicom", "pixel_position"]

#: SOP class UID of MR Image Storage
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def _dirs(img: ismrmrd.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r, p, s = (np.asarray(v, dtype=np.float64) for v in (img.read_dir, img.phase_dir, img.slice_dir))
    if not (np.any(r) and np.any(p)):
        r, p, s = np.eye(3)
    return r, p, s


def pixel_position(img: ismrmrd.Image, partition: int = 0) -> np.ndarray:
    """LPS centre (mm) of pixel (row 0, column 0) of one partition of an MRD image."""
    r, p, s = _dirs(img)
    nx, ny, nz = img.matrix_size
    dx, dy, dz = (f / n for f, n in zip(img.field_of_view, img.matrix_size, strict=True))
    centre = np.asarray(img.position, dtype=np.float64)
    return centre - (nx // 2) * dx * r - (ny // 2) * dy * p + (partition - nz // 2) * dz * s


def export_dicom(
    images: Sequence[ismrmrd.Image],
    out_dir: str | Path,
    patient_name: str = "UNISONO^PHANTOM",
    patient_id: str = "UNISONO0001",
    study_uid: str | None = None,
) -> list[Path]:
    """Write every image (each partition of 3D images) as one DICOM MR file.

    Images of one ``image_series_index`` form one series.  Complex images
    are written as magnitude.

    Returns:
        The file paths written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    frame_uid = generate_uid()
    now = _dt.datetime.now()
    series_uids: dict[int, str] = {}
    peaks: dict[int, float] = {}
    for img in images:
        peaks[img.image_series_index] = max(
            peaks.get(img.image_series_index, 0.0), float(np.abs(img.data).max())
        )
    written: list[Path] = []
    instance = 0
    for img in images:
        series = img.image_series_index
        series_uid = series_uids.setdefault(series, generate_uid())
        slope = peaks[series] / 65535.0 if peaks[series] > 0 else 1.0
        mag = np.abs(img.data[0])  # (z, y, x)
        r, p, s = _dirs(img)
        nx, ny, nz = img.matrix_size
        dx, dy, dz = (float(f) / n for f, n in zip(img.field_of_view, img.matrix_size, strict=True))
        chain = str(img.meta.get("unisono.chain", ""))
        version = str(img.meta.get("unisono.version", ""))
        sha = str(img.meta.get("unisono.chain_sha256", ""))
        for z in range(nz):
            instance += 1
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
            sop_uid = generate_uid()
            meta.MediaStorageSOPInstanceUID = sop_uid
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            path = out_dir / f"s{series:03d}_i{instance:05d}.dcm"
            ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
            ds.SOPClassUID = MR_IMAGE_STORAGE
            ds.SOPInstanceUID = sop_uid
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.FrameOfReferenceUID = frame_uid
            ds.Modality = "MR"
            ds.Manufacturer = "unisono"
            ds.SoftwareVersions = f"unisono {version}".strip()
            ds.PatientName = patient_name
            ds.PatientID = patient_id
            ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
            ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
            ds.SeriesNumber = int(series)
            ds.SeriesDescription = chain or "unisono"
            ds.InstanceNumber = instance
            ds.ImageType = ["DERIVED", "PRIMARY", "M"]
            ds.ImageComments = f"unisono chain={chain} sha256={sha}"[:10240]
            ds.ImagePositionPatient = [float(v) for v in pixel_position(img, z)]
            ds.ImageOrientationPatient = [float(v) for v in (*r, *p)]
            ds.PixelSpacing = [dy, dx]
            ds.SliceThickness = dz
            ds.SliceLocation = float(
                np.dot(pixel_position(img, z) + (nx // 2) * dx * r + (ny // 2) * dy * p, s)
            )
            ds.Rows, ds.Columns = int(ny), int(nx)
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.BitsAllocated = 16
            ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelRepresentation = 0
            ds.RescaleSlope = f"{slope:.10g}"
            ds.RescaleIntercept = "0"
            stored = np.clip(np.rint(mag[z] / slope), 0, 65535).astype(np.uint16)
            ds.PixelData = stored.tobytes()  # rows = y, columns = x
            ds.save_as(path, enforce_file_format=True)
            written.append(path)
    return written
