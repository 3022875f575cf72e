"""The ISMRMRD (MRD) XML header that describes a built sequence's encoding.

The simulator and recon read this header instead of guessing matrix sizes,
oversampling or trajectories. MRD wants mm for fields of view, ms for TE/TR/TI
and degrees for flip angles; everything else in unisono is SI, so the
conversion happens here and only here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ismrmrd.xsd as mx
import numpy as np

#: limits that :class:`EncodingInfo` may set (MRD encodingLimits element names)
LIMIT_NAMES = (
    "kspace_encoding_step_0",
    "kspace_encoding_step_1",
    "kspace_encoding_step_2",
    "average",
    "slice",
    "contrast",
    "phase",
    "repetition",
    "set",
    "segment",
)


@dataclass
class EncodingInfo:
    """One MRD encoding: spaces (matrix; FOV in m), limits (min, max, centre) and trajectory.

    ``encoded_fov_m``/``recon_fov_m`` are (x, y, z) in metres; they are written
    in mm. ``limits`` maps MRD limit names to (minimum, maximum, center).
    """

    trajectory: str
    encoded_matrix: tuple[int, int, int]
    encoded_fov_m: tuple[float, float, float]
    recon_matrix: tuple[int, int, int]
    recon_fov_m: tuple[float, float, float]
    limits: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    trajectory_id: str | None = None
    trajectory_long: dict[str, int] = field(default_factory=dict)
    trajectory_double: dict[str, float] = field(default_factory=dict)
    trajectory_comment: str | None = None
    echo_train_length: int | None = None


def planar_encoding(
    trajectory: str,
    n_read: int,
    n: int,
    fov: float,
    thickness: float,
    readout_oversampling: int,
    p: Mapping[str, int],
    kspace_limits: Mapping[str, tuple[int, int, int]],
    **extra: object,
) -> EncodingInfo:
    """A slice-by-slice 2-D encoding: ``n_read`` samples over ``fov * readout_oversampling``
    by ``n`` lines over ``fov`` (m), reconstructed ``n`` x ``n``, one slice ``thickness`` (m) thick.

    Slice, average and repetition limits come from the protocol parameters ``p``
    (``n_slices``, ``n_averages``, ``n_repetitions``); ``kspace_limits`` adds the k-space and
    any other limits; ``extra`` sets the remaining :class:`EncodingInfo` fields.
    """
    return EncodingInfo(
        trajectory=trajectory,
        encoded_matrix=(n_read, n, 1),
        encoded_fov_m=(fov * readout_oversampling, fov, thickness),
        recon_matrix=(n, n, 1),
        recon_fov_m=(fov, fov, thickness),
        limits={
            **kspace_limits,
            "slice": (0, p["n_slices"] - 1, 0),
            "average": (0, p["n_averages"] - 1, 0),
            "repetition": (0, p["n_repetitions"] - 1, 0),
        },
        **extra,  # type: ignore[arg-type]
    )


def make_header(
    *,
    protocol_name: str,
    system_name: str,
    B0: float,
    gamma: float,
    encodings: Sequence[EncodingInfo],
    TR: Sequence[float],
    TE: Sequence[float],
    flip_angle: Sequence[float],
    TI: Sequence[float] = (),
    echo_spacing: Sequence[float] = (),
    sequence_type: str | None = None,
    user_long: Mapping[str, int] | None = None,
    user_double: Mapping[str, float] | None = None,
    user_string: Mapping[str, str] | None = None,
) -> mx.ismrmrdHeader:
    """Assemble an MRD header. Times in s, angles in rad, fields in T (converted to MRD units here).

    ``receiverChannels`` is left unset: the scanner (or the simulator) knows
    its coils, the sequence does not. Diffusion encodings go into user
    parameters (see :mod:`sequences.epi`): the ``diffusion`` elements of MRD
    >= 1.13 are not in the 1.8 schema that Debian's tools validate against.
    """
    enc_list = [_encoding(e) for e in encodings]

    def ms(values: Sequence[float]) -> list[float]:
        return [round(float(t) * 1e3, 9) for t in values]  # drop float noise below 1 ps

    seq_params = mx.sequenceParametersType(
        TR=ms(TR),
        TE=ms(TE),
        TI=ms(TI),
        flipAngle_deg=[round(float(np.degrees(a)), 9) for a in flip_angle],
        sequence_type=sequence_type,
        echo_spacing=ms(echo_spacing),
    )
    users = mx.userParametersType(
        userParameterLong=[
            mx.userParameterLongType(name=k, value=int(v)) for k, v in (user_long or {}).items()
        ],
        userParameterDouble=[
            mx.userParameterDoubleType(name=k, value=float(v)) for k, v in (user_double or {}).items()
        ],
        userParameterString=[
            mx.userParameterStringType(name=k, value=str(v)) for k, v in (user_string or {}).items()
        ],
    )
    return mx.ismrmrdHeader(
        version=2,
        measurementInformation=mx.measurementInformationType(
            patientPosition=mx.patientPositionType.HFS,
            protocolName=protocol_name,  # (no sequenceName: the 1.8 schema Debian ships lacks it)
        ),
        acquisitionSystemInformation=mx.acquisitionSystemInformationType(
            systemVendor="unisono",
            systemModel=system_name,
            systemFieldStrength_T=float(B0),
        ),
        experimentalConditions=mx.experimentalConditionsType(H1resonanceFrequency_Hz=int(round(gamma * B0))),
        encoding=enc_list,
        sequenceParameters=seq_params,
        userParameters=users,
    )


def _encoding(e: EncodingInfo) -> mx.encodingType:
    def space(matrix, fov_m):
        return mx.encodingSpaceType(
            matrixSize=mx.matrixSizeType(x=int(matrix[0]), y=int(matrix[1]), z=int(matrix[2])),
            fieldOfView_mm=mx.fieldOfViewMm(x=fov_m[0] * 1e3, y=fov_m[1] * 1e3, z=fov_m[2] * 1e3),
        )

    limits = {name: mx.limitType(minimum=0, maximum=0, center=0) for name in LIMIT_NAMES}
    for name, (lo, hi, c) in e.limits.items():
        if name not in LIMIT_NAMES:
            raise ValueError(
                f"encoding limit {name!r} is not an MRD limit; allowed: {', '.join(LIMIT_NAMES)}."
            )
        limits[name] = mx.limitType(minimum=int(lo), maximum=int(hi), center=int(c))
    description = None
    if e.trajectory_id is not None:
        description = mx.trajectoryDescriptionType(
            identifier=e.trajectory_id,
            userParameterLong=[
                mx.userParameterLongType(name=k, value=int(v)) for k, v in e.trajectory_long.items()
            ],
            userParameterDouble=[
                mx.userParameterDoubleType(name=k, value=float(v)) for k, v in e.trajectory_double.items()
            ],
            comment=e.trajectory_comment,
        )
    return mx.encodingType(
        encodedSpace=space(e.encoded_matrix, e.encoded_fov_m),
        reconSpace=space(e.recon_matrix, e.recon_fov_m),
        encodingLimits=mx.encodingLimitsType(**limits),
        trajectory=mx.trajectoryType(e.trajectory),
        trajectoryDescription=description,
        echoTrainLength=e.echo_train_length,
    )


def header_xml_path(seq_path: str | Path) -> Path:
    """``X.seq`` -> ``X.mrd.xml`` (the header written beside a sequence)."""
    p = Path(seq_path)
    return p.with_name(p.stem + ".mrd.xml") if p.suffix == ".seq" else p.with_name(p.name + ".mrd.xml")


def header_to_xml(header: mx.ismrmrdHeader) -> str:
    """Serialise a header to the MRD XML text."""
    return mx.ToXML(header)


def header_from_xml(text: str) -> mx.ismrmrdHeader:
    """Parse MRD XML text into a header."""
    return mx.CreateFromDocument(text)


def header_for_seq_file(seq_path: str | Path) -> mx.ismrmrdHeader:
    """The MRD header for a Pulseq file.

    Uses ``X.mrd.xml`` beside ``X.seq`` when present (unisono wrote it);
    otherwise builds a minimal header from the file's ``[DEFINITIONS]``
    (Name, FOV, matrix, TE, TR, flip angle, B0) and its ADC events and labels,
    so that files written by other tools can still be simulated and
    reconstructed. Raises FileNotFoundError when the .seq is missing.
    """
    seq_path = Path(seq_path)
    xml = header_xml_path(seq_path)
    if xml.exists():
        return header_from_xml(xml.read_text())
    if not seq_path.exists():
        raise FileNotFoundError(f"sequence file {seq_path} does not exist.")
    import pypulseq as pp

    seq = pp.Sequence()
    seq.read(str(seq_path))
    return header_from_definitions(seq, name=seq_path.stem)


def _definition(seq, *keys: str):
    for key in keys:
        v = seq.definitions.get(key)
        if v is not None:
            return v
    return None


def _as_list(v) -> list[float]:
    if v is None:
        return []
    if isinstance(v, str):
        return [float(x) for x in v.split()]
    return [float(x) for x in np.atleast_1d(v)]


def header_from_definitions(seq, name: str = "unknown") -> mx.ismrmrdHeader:
    """A minimal MRD header from a pypulseq Sequence's definitions, ADCs and labels.

    The readout matrix comes from ``Matrix``/``MatrixSize`` when defined, else
    from the imaging ADC sample count and the LIN/PAR label ranges. FOV (m) from
    ``FOV``; B0 from ``B0`` (else 3 T, stated in a user parameter).
    """
    protocol = _definition(seq, "Name", "name")
    protocol = str(protocol) if protocol is not None else name
    fov = _as_list(_definition(seq, "FOV", "fov"))
    if len(fov) < 3:
        fov = (fov + [0.0, 0.0, 0.0])[:3] if fov else [0.0, 0.0, 0.0]
        if fov[1] == 0.0:
            fov[1] = fov[0]
    matrix = [int(x) for x in _as_list(_definition(seq, "Matrix", "MatrixSize", "matrix"))]
    os_factor = _as_list(_definition(seq, "ReadoutOversamplingFactor"))
    os_factor = int(os_factor[0]) if os_factor else 1

    n_samples = []
    for block_id in seq.block_events:
        if seq.block_events[block_id][5]:  # column 5 is the ADC event id
            n_samples.append(int(seq.adc_library.data[seq.block_events[block_id][5]][0]))
    lab = (
        seq.evaluate_labels(evolution="adc")
        if seq.label_set_library.data or seq.label_inc_library.data
        else {}
    )
    n_lin = int(np.max(lab["LIN"])) + 1 if "LIN" in lab and len(lab["LIN"]) else max(len(n_samples), 1)
    n_par = int(np.max(lab["PAR"])) + 1 if "PAR" in lab and len(lab["PAR"]) else 1
    n_slc = int(np.max(lab["SLC"])) + 1 if "SLC" in lab and len(lab["SLC"]) else 1
    if len(matrix) < 2:
        nx = int(np.median(n_samples)) if n_samples else 1
        matrix = [nx // os_factor, n_lin, n_par]
    matrix = (matrix + [1, 1, 1])[:3]
    matrix[2] = max(matrix[2], 1)
    # without a TrajectoryType definition, LIN-labelled readouts mean line-by-line Cartesian encoding
    labelled_lines = "LIN" in lab and len(np.unique(lab["LIN"])) > 1
    enc = EncodingInfo(
        trajectory=str(_definition(seq, "TrajectoryType") or ("cartesian" if labelled_lines else "other")),
        encoded_matrix=(matrix[0] * os_factor, matrix[1], matrix[2]),
        encoded_fov_m=(fov[0] * os_factor, fov[1], fov[2]),
        recon_matrix=(matrix[0], matrix[1], matrix[2]),
        recon_fov_m=(fov[0], fov[1], fov[2]),
        limits={
            "kspace_encoding_step_1": (0, max(n_lin - 1, 0), n_lin // 2),
            "kspace_encoding_step_2": (0, max(n_par - 1, 0), n_par // 2),
            "slice": (0, max(n_slc - 1, 0), 0),
        },
    )
    if enc.trajectory not in {t.value for t in mx.trajectoryType}:
        enc.trajectory = "other"
    b0_def = _as_list(_definition(seq, "B0"))
    B0 = b0_def[0] if b0_def else 3.0
    flip = _as_list(_definition(seq, "FlipAngle"))
    return make_header(
        protocol_name=protocol,
        system_name=str(_definition(seq, "System") or "unknown"),
        B0=B0,
        gamma=42.576e6,
        encodings=[enc],
        TR=_as_list(_definition(seq, "TR")),
        TE=_as_list(_definition(seq, "TE")),
        TI=_as_list(_definition(seq, "TI")),
        flip_angle=[np.radians(a) for a in flip],
        user_string={"unisono.header_source": "seq-definitions" + ("" if b0_def else " (B0 assumed 3 T)")},
    )


def protocol_header(
    protocol: str,
    system: Any,
    encodings: Sequence[EncodingInfo],
    *,
    TR: float,
    TE: float,
    flip_angle: float,
    slice_positions: Sequence[float],
    readout_dwell: float,
    user_double: Mapping[str, float] | None = None,
    user_long: Mapping[str, int] | None = None,
    user_string: Mapping[str, str] | None = None,
    **extra: Any,
) -> mx.ismrmrdHeader:
    """:func:`make_header` for a unisono protocol built for ``system`` (a SystemProfile).

    Fills what every builder records: the system's name, B0 and gamma; the slice positions
    (``slice_position_mm_<i>``, mm) and readout dwell (``readout_dwell_us``); and the
    ``unisono.protocol`` / ``unisono.system`` names. Times in s, the flip angle in rad;
    ``extra`` goes to :func:`make_header` (TI, echo_spacing, sequence_type).
    """
    doubles = {
        **{f"slice_position_mm_{i}": float(z) * 1e3 for i, z in enumerate(slice_positions)},
        "readout_dwell_us": readout_dwell * 1e6,
        **(user_double or {}),
    }
    strings = {"unisono.protocol": protocol, "unisono.system": system.name, **(user_string or {})}
    return make_header(
        protocol_name=protocol,
        system_name=system.name,
        B0=system.B0,
        gamma=system.gamma,
        encodings=encodings,
        TR=[TR],
        TE=[TE],
        flip_angle=[flip_angle],
        user_double=doubles,
        user_long=user_long,
        user_string=strings,
        **extra,
    )
