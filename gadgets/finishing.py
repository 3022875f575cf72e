"""ImageFinish gadget: tensors → ``ismrmrd.Image`` with geometry from the acquisition headers."""

from __future__ import annotations

from typing import Any

import ismrmrd
import numpy as np
import torch

from gadgets.buffers import ImageBuffer
from gadgets.encoding import encoding_info

__all__ = ["image_finish", "image_header_from_reference"]

_OUTPUTS = ("magnitude", "complex")


def image_header_from_reference(
    ref: ismrmrd.AcquisitionHeader,
    header: Any,
    encoding_index: int,
    shape_zyx: tuple[int, int, int],
) -> dict[str, Any]:
    """MRD image header fields for an image reconstructed from readouts like ``ref``.

    Position, orientation, table position, time stamps and counters come from
    the reference readout; ``field_of_view`` (mm) is the header's recon-space
    FOV (for a 2D slice its z entry is the slice thickness), and the matrix is
    the image's (x, y, z).
    """
    info = encoding_info(header, encoding_index)
    return {
        "measurement_uid": ref.measurement_uid,
        "position": tuple(ref.position),
        "read_dir": tuple(ref.read_dir),
        "phase_dir": tuple(ref.phase_dir),
        "slice_dir": tuple(ref.slice_dir),
        "patient_table_position": tuple(ref.patient_table_position),
        "acquisition_time_stamp": ref.acquisition_time_stamp,
        "physiology_time_stamp": tuple(ref.physiology_time_stamp),
        "average": ref.idx.average,
        "slice": ref.idx.slice,
        "contrast": ref.idx.contrast,
        "phase": ref.idx.phase,
        "repetition": ref.idx.repetition,
        "set": ref.idx.set,
        "field_of_view": info.recon_fov_mm,
    }


def image_finish(
    connection: Any, *, output: str = "magnitude", scale: float = 1.0, series_index: int = 1
) -> None:
    """Turn every :class:`ImageBuffer` into an ``ismrmrd.Image``.

    Params:
        output: ``magnitude`` (float32) or ``complex`` (complex64). Real-valued input (coil-
            combined RSS, harmonized intensities) is kept as it is; harmonized images are
            typed ``IMTYPE_REAL`` because their intensities are signed.
        scale: multiplies the intensities.
        series_index: ``image_series_index`` of the images (an upstream gadget may shift
            it with the meta ``unisono.series_offset``, e.g. the harmonizer's original
            series); ``image_index`` counts images from 1 within each series.
    """
    if output not in _OUTPUTS:
        raise ValueError(f"output must be one of {', '.join(_OUTPUTS)}, got '{output}'")
    if not 0 <= series_index < 65536:
        raise ValueError(f"series_index must be in 0..65535, got {series_index}")
    counters: dict[int, int] = {}
    for item in connection:
        if not isinstance(item, ImageBuffer):
            connection.send(item)
            continue
        data = item.data * scale
        if output == "magnitude" and data.is_complex():
            arr = data.abs().to(torch.float32)
            image_type = ismrmrd.IMTYPE_MAGNITUDE
        elif output == "magnitude":
            # already real (e.g. harmonized intensities, which are signed: z-scores, WhiteStripe
            # units): taking abs() would fold negative values up and invert the contrast
            arr = data.to(torch.float32)
            signed = "unisono.harmonization" in item.meta
            image_type = ismrmrd.IMTYPE_REAL if signed else ismrmrd.IMTYPE_MAGNITUDE
        else:
            arr = data.to(torch.complex64)
            image_type = ismrmrd.IMTYPE_COMPLEX
        arr_np = np.ascontiguousarray(arr.cpu().numpy())  # (channel, z, y, x)
        meta = dict(item.meta)
        series = series_index + int(meta.pop("unisono.series_offset", 0))
        if not 0 <= series < 65536:
            raise ValueError(f"series_index plus the series offset must be in 0..65535, got {series}")
        for ch in range(arr_np.shape[0]):
            counters[series] = index = counters.get(series, 0) + 1
            fields = image_header_from_reference(
                item.reference, connection.header, item.encoding_index, arr_np.shape[1:]
            )
            img = ismrmrd.Image.from_array(arr_np[ch])
            for key, value in fields.items():
                setattr(img, key, value)
            img.image_type = image_type
            img.image_index = index
            img.image_series_index = series
            for key, value in meta.items():
                img.meta[key] = value
            connection.send(img)
