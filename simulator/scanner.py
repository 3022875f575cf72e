"""The virtual scanner loop: run a Pulseq sequence on a phantom at a site, yield MRD acquisitions."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import ismrmrd
import numpy as np
import torch

from simulator.bloch import BlochEngine, SpinFields
from simulator.events import Free, Pulse, Readout, SequenceError, apply_labels, compile_block
from simulator.mrd import make_acquisition, minimal_header, traj_scale, trajectory_type, with_site
from simulator.phantom import Phantom
from simulator.site import NOISE_REF_DWELL_S, Site, load_site
from simulator.spins import Spins, build_spins

log = logging.getLogger(__name__)

#: motion is applied in pose steps: a new pose (and RF rotations recomputed for it) once the
#: trajectory has moved by more than this (mm, deg) since the last applied pose
MOTION_STEP_MM = 0.1
MOTION_STEP_DEG = 0.1
#: receive sensitivities are re-evaluated after spins moved by more than this (m)
SENS_UPDATE_M = 1e-3


def resolve_device(device: str | torch.device) -> torch.device:
    """'auto' -> CUDA when torch sees it, else CPU; 'cpu' / 'cuda' / 'cuda:N' as given."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device='{device}' was requested but torch sees no CUDA device; use cpu or auto")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device='{device}' is not allowed; use auto, cpu, cuda or cuda:N")
    return torch.device(device)


def load_sequence(seq_or_path):
    """A pypulseq Sequence from a Sequence, a ``.seq`` path, or a BuiltSequence (``.seq``)."""
    import pypulseq as pp

    if hasattr(seq_or_path, "block_events"):
        return seq_or_path
    if hasattr(seq_or_path, "seq") and hasattr(seq_or_path.seq, "block_events"):
        return seq_or_path.seq
    path = Path(seq_or_path)
    if not path.is_file():
        raise FileNotFoundError(f"sequence file {path} does not exist")
    seq = pp.Sequence()
    try:
        seq.read(str(path))
    except Exception as exc:  # pypulseq raises bare exceptions for malformed files
        raise SequenceError(f"sequence file {path} could not be read by pypulseq: {exc}") from exc
    return seq


def spin_fields(
    spins: Spins,
    site: Site,
    pose=None,
    device: torch.device | str = "cpu",
    sens: torch.Tensor | None = None,
) -> SpinFields:
    """Fields at the spins' scanner positions (rest positions moved by ``pose``, if any).

    The site's B0/B1+ maps and coils are fixed in the scanner, so a moving head sees them
    change. B0 and the coils are evaluated at the isochromat positions (the m spins of an
    isochromat share its frequency and sensitivity; both maps are smooth over a voxel), B1+ at
    every spin. ``sens`` (C, G) reuses already computed receive sensitivities.
    """
    device = torch.device(device)
    spin_pos = spins.voxel_pos if pose is None else pose.apply(spins.voxel_pos)
    group_pos = spins.group_pos if pose is None else pose.apply(spins.group_pos)
    spread_dir = np.array([0.0, 0.0, 1.0]) if pose is None else pose.matrix @ np.array([0.0, 0.0, 1.0])
    g32 = group_pos.to(torch.float32)
    if sens is None:
        sens = site.coil_sensitivities(g32)
    g_df = spins.df_tissue + site.b0_map(g32)
    return SpinFields(
        pos=spin_pos.to(torch.float32).to(device),
        pos64=spin_pos.to(torch.float64).to(device),
        df=spins.per_spin(g_df).to(device),
        b1=(spins.per_spin(spins.b1_object) * site.b1_map(spin_pos.to(torch.float32))).to(device),
        r1=spins.per_spin(spins.r1).to(device),
        r2=spins.per_spin(spins.r2).to(device),
        g_pos64=group_pos.to(torch.float64).to(device),
        g_df=g_df.to(device),
        g_r2=spins.r2.to(device),
        sens_m0=(sens * (spins.m0 / spins.m)[None, :] * site.receiver_gain).to(torch.complex64).to(device),
        m=spins.m,
        spread_dir=spread_dir,
        spread_m=spins.spread_m,
    )


@dataclass
class _AdcPlan:
    """Label state and flags of each ADC, found by a pass over the labels before simulating."""

    labels: list[dict[str, int]]
    flags: list[list[int]]


def plan_adcs(seq, header_trajectory: str) -> _AdcPlan:
    """Evaluate labels in block order and assign MRD flags as a scanner does.

    FIRST/LAST_IN_SLICE are per (slice, repetition) over imaging ADCs, which needs the whole
    label sequence: the scanner knows its loop structure in advance, here a label pass does.
    """
    state: dict[str, int] = {}
    labels: list[dict[str, int]] = []
    for i, ids in seq.block_events.items():
        if not ids[6] and not ids[5]:
            continue  # neither labels (extensions) nor an ADC: nothing to evaluate
        block = seq.get_block(i)
        apply_labels(block, int(i), state)
        if block.adc is not None:
            labels.append(dict(state))
    flags: list[list[int]] = [[] for _ in labels]
    first_seen: dict[tuple, int] = {}
    last_seen: dict[tuple, int] = {}
    last_rep: dict[int, int] = {}
    last_imaging = -1
    for j, lab in enumerate(labels):
        if lab.get("NOISE", 0):
            flags[j].append(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
            continue
        if lab.get("NAV", 0):
            flags[j].append(ismrmrd.ACQ_IS_NAVIGATION_DATA)
            if header_trajectory == "epi":
                flags[j].append(ismrmrd.ACQ_IS_PHASECORR_DATA)
        if lab.get("REV", 0):
            flags[j].append(ismrmrd.ACQ_IS_REVERSE)
        if lab.get("REF", 0):
            flags[j].append(
                ismrmrd.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING
                if lab.get("IMA", 0)
                else ismrmrd.ACQ_IS_PARALLEL_CALIBRATION
            )
        if lab.get("NAV", 0):
            continue
        key = (lab.get("SLC", 0), lab.get("REP", 0))
        first_seen.setdefault(key, j)
        last_seen[key] = j
        last_rep[lab.get("REP", 0)] = j
        last_imaging = j
    for j in first_seen.values():
        flags[j].append(ismrmrd.ACQ_FIRST_IN_SLICE)
    for j in last_seen.values():
        flags[j].append(ismrmrd.ACQ_LAST_IN_SLICE)
    for j in last_rep.values():
        flags[j].append(ismrmrd.ACQ_LAST_IN_REPETITION)
    if last_imaging >= 0:
        flags[last_imaging].append(ismrmrd.ACQ_LAST_IN_MEASUREMENT)
    elif labels:
        flags[-1].append(ismrmrd.ACQ_LAST_IN_MEASUREMENT)
    return _AdcPlan(labels=labels, flags=flags)


class _Geometry:
    """Tracks what a scanner knows about the current slice and k-space position."""

    def __init__(self) -> None:
        self.k = np.zeros(3)
        self.slice_dir = np.array([0.0, 0.0, 1.0])
        self.position_mm = np.zeros(3)

    def free(self, moment: np.ndarray) -> None:
        self.k = self.k + moment

    def pulse(self, p: Pulse) -> None:
        edges = np.concatenate([[0.0], np.cumsum(p.dt)])
        mids = 0.5 * (edges[1:] + edges[:-1])
        g = np.broadcast_to(p.grad, (p.dt.size, 3))
        before = (g * (p.dt * (mids < p.centre))[:, None]).sum(axis=0)
        after = (g * (p.dt * (mids >= p.centre))[:, None]).sum(axis=0)
        if p.use in ("excitation", "undefined", "saturation"):
            self.k = after
            gss = g.mean(axis=0)
            amp = float(np.linalg.norm(gss))
            if amp > 0:
                self.slice_dir = gss / amp
                self.position_mm = self.slice_dir * (p.freq_hz / amp) * 1e3
        elif p.use == "refocusing":
            self.k = -(self.k + before) + after
        else:
            self.k = self.k + before + after

    def directions(self, ro: Readout) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        g = ro.grad_dir
        n = float(np.linalg.norm(g))
        read = g / n if n > 0 else np.array([1.0, 0.0, 0.0])
        slc = self.slice_dir - read * float(read @ self.slice_dir)
        if np.linalg.norm(slc) < 1e-6:
            slc = np.array([0.0, 0.0, 1.0]) if abs(read[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
        slc = slc / np.linalg.norm(slc)
        phase = np.cross(slc, read)
        return read, phase, slc


def correct_pulse(p: Pulse, theta_acc: float, t_m: np.ndarray) -> Pulse:
    """RF phase-tracked for a head translated by ``t_m``: phase - theta during the pulse.

    In the frame M' = M e^{i theta}, theta = 2 pi ∫ G.t dτ, spins at p precess as if at p - t;
    the pulse must be the nominal one in that frame, so in the scanner frame it carries
    e^{-i theta}. ``theta_acc`` (rad) is that integral up to the pulse, accumulated with the
    translation in force at each moment, so the frame stays phase-continuous when the
    correction changes (a real scanner's update does not jump the phase of the magnetization
    already there).
    """
    g = np.broadcast_to(p.grad, (p.dt.size, 3))
    k_mid = np.cumsum(g * p.dt[:, None], axis=0) - 0.5 * g * p.dt[:, None]
    theta_var = 2 * math.pi * (k_mid @ t_m)
    amp = p.amplitude * np.exp(-1j * theta_var)
    return replace(
        p,
        amplitude=amp,
        phase_rad=p.phase_rad - theta_acc,
        key=p.key + (tuple(np.round(t_m * 1e9).astype(int).tolist()),),
    )


def correct_readout(ro: Readout, theta_acc: float, t_m: np.ndarray) -> Readout:
    """Receiver phase-tracked for a head translated by ``t_m``: the samples times e^{+i theta}
    (``theta_acc`` up to the readout, see :func:`correct_pulse`, plus 2 pi K.t within it)."""
    theta = -(theta_acc + 2 * math.pi * (ro.kmom.T @ t_m))
    pm = theta if ro.phase_modulation is None else ro.phase_modulation + theta
    return replace(ro, phase_modulation=pm)


def simulate(
    seq_or_path,
    phantom: Phantom,
    site: Site | str | Path,
    header=None,
    device: str | torch.device = "cpu",
    isochromats_per_voxel: int = 4,
    seed: int = 0,
    motion=None,
    spins_per_isochromat: int = 8,
    feedback: Callable[[], object] | None = None,
    realtime: bool = False,
    stats: dict | None = None,
) -> Iterator[ismrmrd.Acquisition]:
    """Run ``seq_or_path`` on ``phantom`` at ``site``; yield one ``ismrmrd.Acquisition`` per ADC.

    Args:
        seq_or_path: pypulseq Sequence, ``.seq`` path or BuiltSequence.
        phantom: the object (:class:`Phantom`).
        site: :class:`Site`, a shipped site name or a site TOML path.
        header: MRD header (decides the trajectory type and the trajectory normalisation);
            None = from the sequence definitions.
        device: auto, cpu, cuda or cuda:N.
        isochromats_per_voxel: isochromats (in-plane sub-positions x T2' frequencies) per voxel;
            the cost of every ADC sample scales with it.
        spins_per_isochromat: spins carrying each isochromat, stratified through the voxel along
            z (slice profile, spoiling); summed before the readout when it has no k_z.
        seed: seeds the isochromat T2' order and the thermal noise.
        motion: a :class:`simulator.motion.MotionTrajectory` (rigid head motion against time).
        feedback: callable returning the latest rigid transform (or None); applied prospectively
            to the following blocks (gradients rotated, RF/ADC frequency and phase adjusted).
        realtime: pace the yields at sequence time, as a real scanner streams.
        stats: if given, filled with wall time, spin-steps and the number of blocks at the end.
    Yields:
        ``ismrmrd.Acquisition`` with data (coils, samples) complex64.
    """
    from simulator.motion import ProspectiveCorrection

    t_wall = time.perf_counter()
    seq = load_sequence(seq_or_path)
    site = load_site(site) if not isinstance(site, Site) else site
    dev = resolve_device(device)
    if header is None:
        header = minimal_header(seq, site)
    else:
        header = with_site(header, site)
    traj_kind = trajectory_type(header)
    scale = traj_scale(header)
    plan = plan_adcs(seq, traj_kind)
    spins = build_spins(phantom, site, isochromats_per_voxel, seed, spins_per_isochromat)
    engine = BlochEngine(spin_fields(spins, site, None, dev))
    gen = torch.Generator().manual_seed(seed + 1)
    cov = site.noise_covariance()
    # sigma = 0 (a noiseless site) has a zero covariance, whose Cholesky factor is zero
    chol = torch.from_numpy(np.linalg.cholesky(cov) if site.noise_sigma > 0 else np.zeros_like(cov))
    rf_raster = float(seq.definitions.get("RadiofrequencyRasterTime", 1e-6))
    geom = _Geometry()
    correction = ProspectiveCorrection()
    state: dict[str, int] = {}
    t_seq = 0.0
    adc_i = 0
    n_blocks = 0
    current_pose = None
    sens_pos = sens = None
    grad_cache: dict = {}
    theta_acc = 0.0  # 2 pi ∫ G.t_correction dτ (rad): the phase of the prospectively corrected frame
    t_scan = time.perf_counter()  # the scan clock starts with the first block (realtime pacing)
    for i in seq.block_events:
        block = seq.get_block(i)
        apply_labels(block, int(i), state)
        if motion is not None:
            pose = motion.transform_at(t_seq)
            if current_pose is None or not pose.close_to(current_pose, MOTION_STEP_MM, MOTION_STEP_DEG):
                current_pose = pose
                gpos = pose.apply(spins.group_pos)
                # receive maps are smooth: re-evaluate them only after a move of > 1 mm
                if sens_pos is None or float((gpos - sens_pos).norm(dim=1).max()) > SENS_UPDATE_M:
                    sens_pos, sens = gpos, site.coil_sensitivities(gpos.to(torch.float32))
                engine.set_fields(spin_fields(spins, site, pose, dev, sens))
        if feedback is not None:
            fb = feedback()
            if fb is not None:
                correction.update(fb)
        # the correction changes only here, at a block's start: look it up once per block
        t_corr = correction.pose.t_m if correction.active else None
        rotation = correction.pose.matrix if t_corr is not None else None
        ids = seq.block_events[i]
        info = compile_block(
            block, int(i), state, rf_raster, site.gradient_delay_s, site.larmor_hz, rotation,
            grad_cache, (int(ids[2]), int(ids[3]), int(ids[4]), float(block.block_duration)),
        )  # fmt: skip
        t_block = t_seq
        for ev in info.events:
            if isinstance(ev, Free):
                engine.free(ev.duration, ev.moment)
                geom.free(ev.moment)
                if t_corr is not None:
                    theta_acc += 2 * math.pi * float(ev.moment @ t_corr)
            elif isinstance(ev, Pulse):
                if t_corr is not None:
                    ev = correct_pulse(ev, theta_acc, t_corr)
                engine.rf(ev)
                geom.pulse(ev)
                if t_corr is not None:
                    moment = (np.broadcast_to(ev.grad, (ev.dt.size, 3)) * ev.dt[:, None]).sum(axis=0)
                    theta_acc += 2 * math.pi * float(moment @ t_corr)
            elif isinstance(ev, Readout):
                if t_corr is not None:
                    ev = correct_readout(ev, theta_acc, t_corr)
                sig = engine.readout(ev)
                k = ev.tau.size
                white = torch.complex(
                    torch.randn(site.n_coils, k, generator=gen, dtype=torch.float64),
                    torch.randn(site.n_coils, k, generator=gen, dtype=torch.float64),
                ) * math.sqrt(0.5 * NOISE_REF_DWELL_S / ev.dwell)
                noise = (chol @ white) * site.receiver_gain
                data = sig.cpu().to(torch.complex128) + noise
                traj = None
                if traj_kind != "cartesian":
                    kk = (geom.k[:, None] + ev.kmom) * scale[:, None]
                    dims = 3 if header.encoding[0].encodedSpace.matrixSize.z > 1 else 2
                    traj = kk[:dims].T
                acq = make_acquisition(
                    data.numpy(),
                    ev,
                    plan.flags[adc_i] if adc_i < len(plan.flags) else [],
                    adc_i + 1,
                    t_block + ev.time_in_block,
                    geom.k.copy(),
                    geom.directions(ev),
                    geom.position_mm,
                    traj,
                )
                adc_i += 1
                if realtime:
                    lag = (t_block + ev.time_in_block + k * ev.dwell) - (time.perf_counter() - t_scan)
                    if lag > 0:
                        time.sleep(lag)
                yield acq
        t_seq += info.duration
        n_blocks += 1
    engine.flush()
    if stats is not None:
        stats.update(
            wall_s=time.perf_counter() - t_wall,
            spin_steps=engine.spin_steps,
            n_spins=engine.n,
            n_isochromats=spins.n_groups,
            n_blocks=n_blocks,
            n_acquisitions=adc_i,
            sequence_duration_s=t_seq,
            device=str(dev),
            threads=torch.get_num_threads(),
        )
