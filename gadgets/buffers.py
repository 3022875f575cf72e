"""Items that travel between gadgets inside a chain, besides MRD acquisitions and images.

Between the accumulator and the image finisher the data are torch tensors (on
the chain's device) so that the reconstruction never round-trips through
numpy.  Each buffer keeps the MRD acquisition header of a reference readout:
the finisher derives the image geometry (position, orientation, counters)
from it, as Gadgetron does from its reference acquisition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import ismrmrd
import torch

__all__ = ["KSpaceBuffer", "ImageBuffer"]


@dataclass
class KSpaceBuffer:
    """The accumulated k-space of one slice / contrast / repetition / set.

    Attributes:
        data: complex64 (coil, kz, ky, kx) k-space, zeros where not sampled;
            the k-space centre sits at index ``n // 2`` of each axis.
        sampled: bool (kz, ky) mask of the phase-encoding lines that were acquired
            for imaging.
        reference: header of the readout nearest the k-space centre.
        calibration: optional complex64 (coil, kz, ky, kx) parallel-imaging
            calibration lines (``ACQ_IS_PARALLEL_CALIBRATION``), zeros elsewhere.
        calibration_sampled: bool (kz, ky) mask of the calibration lines.
        trajectory: optional float32 (readouts, samples, dims) k-space
            coordinates for non-Cartesian data (in cycles per FOV as MRD stores them).
        encoding_index: index of the MRD encoding this buffer belongs to.
    """

    data: torch.Tensor
    sampled: torch.Tensor
    reference: ismrmrd.AcquisitionHeader
    calibration: torch.Tensor | None = None
    calibration_sampled: torch.Tensor | None = None
    trajectory: torch.Tensor | None = None
    encoding_index: int = 0


@dataclass
class ImageBuffer:
    """Reconstructed image data of one slice / contrast / repetition / set.

    Attributes:
        data: complex64 or float32 (channel, z, y, x) image; channel is the coil
            axis before coil combination and 1 afterwards.
        reference: header of the reference readout (geometry and counters).
        encoding_index: index of the MRD encoding the image was reconstructed from.
        meta: MRD meta attributes to attach to the finished image.
    """

    data: torch.Tensor
    reference: ismrmrd.AcquisitionHeader
    encoding_index: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
