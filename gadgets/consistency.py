"""Is an MRD header usable, and does an acquisition agree with it?  One sentence per problem.

The MRD v1 reader (:mod:`gadgets.wire`) calls :func:`header_problem` on the
XML header of every connection and :meth:`HeaderRules.acquisition_problem` on
every acquisition.  The checks are the ones whose failure would otherwise
surface deep inside a gadget as an index error or, worse, as a wrong image:

* the header has at least one encoding, each with positive matrix sizes and
  finite fields of view;
* an acquisition names an encoding that exists (``encoding_space_ref``), has
  at least one channel and no more than ``receiverChannels`` when the header
  gives it, a trajectory of at most 3 dimensions, ``center_sample`` and the
  discard counts inside its readout, and finite geometry and dwell time;
* optionally (``strict``), every encoding counter lies inside the header's
  ``encodingLimits``.  Off by default because real converters write limits
  that leave out calibration or navigator lines; the chain then reports the
  gadget that cannot place the line, naming it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import ismrmrd

__all__ = ["HeaderRules", "header_problem"]

#: (acquisition idx field, encodingLimits element) pairs checked in strict mode
_COUNTERS = (
    ("kspace_encode_step_1", "kspace_encoding_step_1"),
    ("kspace_encode_step_2", "kspace_encoding_step_2"),
    ("average", "average"),
    ("slice", "slice"),
    ("contrast", "contrast"),
    ("phase", "phase"),
    ("repetition", "repetition"),
    ("set", "set"),
    ("segment", "segment"),
)


def header_problem(header: Any, max_voxels: int | None = None) -> str | None:
    """The first reason the parsed header cannot drive a reconstruction, or None when it can.

    Args:
        header: an ``ismrmrd.xsd.ismrmrdHeader``.
        max_voxels: largest encoded matrix (x*y*z) allowed, None for no limit.
    """
    encs = getattr(header, "encoding", None) or []
    if not encs:
        return "the MRD header has no <encoding> element; MRD requires at least one"
    for i, enc in enumerate(encs):
        for space in ("encodedSpace", "reconSpace"):
            sp = getattr(enc, space, None)
            if sp is None or sp.matrixSize is None or sp.fieldOfView_mm is None:
                return f"header encoding[{i}].{space} needs matrixSize and fieldOfView_mm"
            for axis in ("x", "y", "z"):
                m = getattr(sp.matrixSize, axis)
                if _as_number(m, int) is None or not 1 <= int(m) <= 65535:
                    return f"header encoding[{i}].{space}.matrixSize.{axis} must be in 1..65535, got {m!r}"
                f = _as_number(getattr(sp.fieldOfView_mm, axis), float)
                if f is None or not math.isfinite(f) or f < 0:
                    return (
                        f"header encoding[{i}].{space}.fieldOfView_mm.{axis} must be a finite "
                        f"length >= 0 mm, got {getattr(sp.fieldOfView_mm, axis)!r}"
                    )
        m = enc.encodedSpace.matrixSize
        voxels = int(m.x) * int(m.y) * int(m.z)
        if max_voxels is not None and voxels > max_voxels:
            return (
                f"header encoding[{i}].encodedSpace.matrixSize {m.x}x{m.y}x{m.z} is {voxels} voxels; "
                f"the limit is {max_voxels} (--max-voxels)"
            )
    asi = getattr(header, "acquisitionSystemInformation", None)
    rc = getattr(asi, "receiverChannels", None) if asi is not None else None
    if rc is not None and (_as_number(rc, int) is None or not 1 <= int(rc) <= 65535):
        return f"header acquisitionSystemInformation.receiverChannels must be in 1..65535, got {rc!r}"
    return None


def _as_number(value: Any, kind: type[int] | type[float]) -> int | float | None:
    """``kind(value)``, or None where the XML let through something that is not a number ('')."""
    if value is None:
        return None
    try:
        return kind(value)
    except (TypeError, ValueError, OverflowError):
        return None


@dataclass(frozen=True)
class _Limit:
    minimum: int
    maximum: int


@dataclass(frozen=True)
class HeaderRules:
    """What a header allows an acquisition to be.

    Attributes:
        n_encodings: number of ``<encoding>`` elements (valid ``encoding_space_ref`` are 0..n-1).
        receiver_channels: ``receiverChannels`` when the header gives it, else None.
        limits: per encoding, counter name -> allowed (minimum, maximum), for counters the header limits.
        strict: check the counters against ``limits``.
    """

    n_encodings: int
    receiver_channels: int | None
    limits: tuple[dict[str, _Limit], ...]
    strict: bool = False

    @classmethod
    def from_header(cls, header: Any, strict: bool = False) -> HeaderRules:
        """Rules from a header that passed :func:`header_problem`."""
        encs = list(header.encoding or [])
        asi = header.acquisitionSystemInformation
        rc = asi.receiverChannels if asi is not None else None
        limits = []
        for enc in encs:
            lims: dict[str, _Limit] = {}
            el = enc.encodingLimits
            for field, element in _COUNTERS:
                lt = getattr(el, element, None) if el is not None else None
                if lt is not None and lt.minimum is not None and lt.maximum is not None:
                    lims[field] = _Limit(int(lt.minimum), int(lt.maximum))
            limits.append(lims)
        return cls(len(encs), int(rc) if rc is not None else None, tuple(limits), strict)

    def acquisition_problem(self, acq: Any, index: int) -> str | None:
        """The first way ``acq`` contradicts the header (one sentence naming the field), or None.

        Args:
            acq: an ``ismrmrd.Acquisition`` or its ``ismrmrd.AcquisitionHeader`` (the same field
                names; the bare header is cheaper to read, which matters at thousands of readouts/s).
            index: its position among this connection's acquisitions (0-based), for the message.
        """
        where = f"acquisition #{index} (scan_counter {acq.scan_counter})"
        ref = acq.encoding_space_ref
        if ref >= self.n_encodings:
            return (
                f"{where}: encoding_space_ref is {ref} but the header has {self.n_encodings} "
                f"encoding(s) (allowed 0..{self.n_encodings - 1})"
            )
        nc = acq.active_channels
        if nc < 1:
            return f"{where}: active_channels is 0; an acquisition needs at least one channel"
        if self.receiver_channels is not None and nc > self.receiver_channels:
            return (
                f"{where}: active_channels is {nc} but the header's receiverChannels is "
                f"{self.receiver_channels} (allowed 1..{self.receiver_channels})"
            )
        ns = acq.number_of_samples
        if acq.trajectory_dimensions > 3:
            return f"{where}: trajectory_dimensions is {acq.trajectory_dimensions}; allowed 0..3"
        if acq.center_sample > ns:
            return f"{where}: center_sample is {acq.center_sample}; allowed 0..{ns} (number_of_samples)"
        if acq.discard_pre + acq.discard_post > ns:
            return (
                f"{where}: discard_pre + discard_post is {acq.discard_pre + acq.discard_post}; "
                f"allowed 0..{ns} (number_of_samples)"
            )
        dwell = acq.sample_time_us
        if not math.isfinite(dwell) or dwell < 0:
            return f"{where}: sample_time_us is {dwell}; allowed a finite value >= 0"
        for name in ("position", "read_dir", "phase_dir", "slice_dir", "patient_table_position"):
            values = getattr(acq, name)
            # a sum of three float32 values cannot overflow a double: not finite iff one is nan/inf
            if not math.isfinite(values[0] + values[1] + values[2]):
                return f"{where}: {name} has a non-finite value {list(values)}"
        if self.strict and not _is_noise(acq):
            for field, lim in self.limits[ref].items():
                v = getattr(acq.idx, field)
                if not lim.minimum <= v <= lim.maximum:
                    return (
                        f"{where}: idx.{field} is {v} but the header's encodingLimits allow "
                        f"{lim.minimum}..{lim.maximum}"
                    )
        return None

    def counters_outside_limits(self, acq: Any) -> list[str]:
        """Counters outside ``encodingLimits`` (for a warning when not strict): ``['idx.slice=3 (0..1)']``."""
        if _is_noise(acq) or acq.encoding_space_ref >= self.n_encodings:
            return []
        out = []
        for field, lim in self.limits[acq.encoding_space_ref].items():
            v = getattr(acq.idx, field)
            if not lim.minimum <= v <= lim.maximum:
                out.append(f"idx.{field}={v} ({lim.minimum}..{lim.maximum})")
        return out


def _is_noise(acq: Any) -> bool:
    """The noise-measurement flag, read from the bit field (works on acquisitions and bare headers)."""
    return bool((int(acq.flags) >> (ismrmrd.ACQ_IS_NOISE_MEASUREMENT - 1)) & 1)
