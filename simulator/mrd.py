"""Filling MRD headers and acquisitions as a scanner does, and writing MRD HDF5 files."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path

import ismrmrd
import ismrmrd.xsd as mx
import numpy as np

from simulator.events import Readout
from simulator.site import Site

#: acquisition_time_stamp tick (s), as Siemens and the ISMRMRD converters use
TIME_TICK_S = 2.5e-3

_COUNTER_TO_IDX = {
    "LIN": "kspace_encode_step_1",
    "PAR": "kspace_encode_step_2",
    "SLC": "slice",
    "AVG": "average",
    "REP": "repetition",
    "SET": "set",
    "ECO": "contrast",
    "PHS": "phase",
    "SEG": "segment",
}


def minimal_header(seq, site: Site) -> mx.ismrmrdHeader:
    """A header from the sequence definitions for files that come without one.

    Prefers ``sequences.header.header_from_definitions`` (the project's reader of Pulseq
    definitions); falls back to FOV + ADC size + label ranges.
    """
    try:
        from sequences.header import header_from_definitions

        return with_site(header_from_definitions(seq, name=str(seq.definitions.get("Name", "seq"))), site)
    except (ImportError, AttributeError):
        pass
    fov = np.asarray(seq.definitions.get("FOV", [0.256, 0.256, 0.005]), dtype=float).ravel()
    n_read = 1
    lin = par = 0
    for i in seq.block_events:
        b = seq.get_block(i)
        if b.adc is not None:
            n_read = max(n_read, int(b.adc.num_samples))
        for lab in (b.label or {}).values():
            if lab.label == "LIN":
                lin = max(lin, int(lab.value))
            if lab.label == "PAR":
                par = max(par, int(lab.value))
    fov_mm = [float(v) * 1e3 for v in (list(fov) + [0.005] * 3)[:3]]
    matrix = mx.matrixSizeType(x=n_read, y=max(lin + 1, 1), z=max(par + 1, 1))
    space = mx.encodingSpaceType(
        matrixSize=matrix, fieldOfView_mm=mx.fieldOfViewMm(x=fov_mm[0], y=fov_mm[1], z=fov_mm[2])
    )
    limits = mx.encodingLimitsType(
        kspace_encoding_step_1=mx.limitType(minimum=0, maximum=max(lin, 0), center=max(lin, 0) // 2),
        kspace_encoding_step_2=mx.limitType(minimum=0, maximum=max(par, 0), center=max(par, 0) // 2),
    )
    enc = mx.encodingType(
        encodedSpace=space,
        reconSpace=copy.deepcopy(space),
        encodingLimits=limits,
        trajectory=mx.trajectoryType("cartesian" if lin > 0 else "other"),
    )
    header = mx.ismrmrdHeader(
        experimentalConditions=mx.experimentalConditionsType(H1resonanceFrequency_Hz=int(site.larmor_hz)),
        encoding=[enc],
    )
    return with_site(header, site)


def with_site(header: mx.ismrmrdHeader, site: Site) -> mx.ismrmrdHeader:
    """A copy of ``header`` with the site's receiver channels, field, Larmor frequency and name.

    The site's name goes into ``stationName``, the scanner's identity by which per-site
    harmonization curves are chosen (harmonize.site_contrast).
    """
    h = copy.deepcopy(header)
    if h.acquisitionSystemInformation is None:
        h.acquisitionSystemInformation = mx.acquisitionSystemInformationType()
    asi = h.acquisitionSystemInformation
    asi.receiverChannels = site.n_coils
    asi.systemFieldStrength_T = float(site.field_T)
    asi.systemVendor = site.vendor
    asi.systemModel = f"unisono virtual scanner ({site.name})"
    asi.stationName = site.name
    if h.experimentalConditions is None:
        h.experimentalConditions = mx.experimentalConditionsType(H1resonanceFrequency_Hz=int(site.larmor_hz))
    else:
        h.experimentalConditions.H1resonanceFrequency_Hz = int(site.larmor_hz)
    return h


def trajectory_type(header: mx.ismrmrdHeader | None) -> str:
    """'cartesian', 'radial', 'epi', ... from the first encoding (cartesian when unknown)."""
    if header is None or not header.encoding:
        return "cartesian"
    t = header.encoding[0].trajectory
    return str(getattr(t, "value", t))


def traj_scale(header: mx.ismrmrdHeader | None) -> np.ndarray:
    """Factor (3,) from k (cycles/m) to the ISMRMRD normalised trajectory (k_max = 0.5)."""
    if header is None or not header.encoding:
        return np.ones(3)
    es = header.encoding[0].encodedSpace
    fov = np.array([es.fieldOfView_mm.x, es.fieldOfView_mm.y, es.fieldOfView_mm.z], dtype=float) * 1e-3
    mat = np.array([es.matrixSize.x, es.matrixSize.y, es.matrixSize.z], dtype=float)
    return np.where(mat > 0, fov / np.maximum(mat, 1), 1.0)


def make_acquisition(
    data: np.ndarray,
    ro: Readout,
    flags: list[int],
    scan_counter: int,
    time_s: float,
    k_start: np.ndarray,
    directions: tuple[np.ndarray, np.ndarray, np.ndarray],
    position_mm: np.ndarray,
    traj: np.ndarray | None,
) -> ismrmrd.Acquisition:
    """One ``ismrmrd.Acquisition`` (data (C, K) complex64) with headers filled like a scanner's."""
    acq = ismrmrd.Acquisition.from_array(
        np.ascontiguousarray(data, dtype=np.complex64),
        None if traj is None else np.ascontiguousarray(traj, dtype=np.float32),
    )
    n_coils, n_samp = data.shape
    acq.version = 1
    acq.scan_counter = scan_counter
    acq.acquisition_time_stamp = int(round(time_s / TIME_TICK_S))
    acq.sample_time_us = float(ro.dwell * 1e6)
    acq.available_channels = n_coils
    acq.center_sample = _centre_sample(ro, k_start)
    read, phase, slc = directions
    acq.read_dir[:] = read.astype(np.float32)
    acq.phase_dir[:] = phase.astype(np.float32)
    acq.slice_dir[:] = slc.astype(np.float32)
    acq.position[:] = position_mm.astype(np.float32)
    for name, value in ro.labels.items():
        if name in _COUNTER_TO_IDX:
            setattr(acq.idx, _COUNTER_TO_IDX[name], max(int(value), 0))
    for flag in flags:
        acq.set_flag(flag)
    return acq


def _centre_sample(ro: Readout, k_start: np.ndarray) -> int:
    """The sample nearest k = 0 along the readout (0 for readouts with no gradient)."""
    g = ro.grad_dir
    norm = float(np.linalg.norm(g))
    if norm == 0.0:
        return 0
    k_read = (k_start[:, None] + ro.kmom).T @ (g / norm)
    return int(np.argmin(np.abs(k_read)))


def write_raw(
    path: str | Path, header: mx.ismrmrdHeader | str, acquisitions: Iterable[ismrmrd.Acquisition]
) -> int:
    """Write an MRD HDF5 file (``dataset/xml`` + ``dataset/data``); returns the acquisition count.

    ``acquisitions`` may be a generator (e.g. :func:`simulator.simulate`): items are written
    as they come, so a long scan is never held in memory.
    """
    path = Path(path)
    if path.exists():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    xml = header if isinstance(header, str) else mx.ToXML(header)
    ds = ismrmrd.Dataset(str(path), "dataset", create_if_needed=True)
    try:
        ds.write_xml_header(xml)
        n = 0
        for acq in acquisitions:
            ds.append_acquisition(acq)
            n += 1
    finally:
        ds.close()
    return n
